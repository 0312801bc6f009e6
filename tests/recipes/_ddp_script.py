"""Run by test_ddp.py: 2-process DDP (gloo, CPU) training on webdataset shards; each rank records the samples
it trained on (constant images: the pixel value identifies the sample) for both shard modes."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from recipes.classification import ClassificationModule
from recipes.data import ShardData


class Record(pl.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        vals = batch[0][:, 0].mean(dim=(1, 2)).mul(0.5).add(0.5).mul(255.0).round().int().tolist()
        with open(self.path.with_name(f"{self.path.name}.rank{trainer.global_rank}"), "a") as f:
            f.write(" ".join(map(str, vals)) + "\n")


def main(out: str, shards: str) -> None:
    torch.set_num_threads(1)
    for mode in ("split", "resampled"):
        pl.seed_everything(0)
        dm = ShardData(train_shards=shards, num_classes=2, img_size=32, batch_size=4, num_workers=0,
                       resampled=mode == "resampled", mean=(0.5,) * 3, std=(0.5,) * 3, scale=(1.0, 1.0),
                       hflip=0.0, interpolation="bilinear", shuffle_buffer=0)
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_val_batches=0,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, use_distributed_sampler=False,
                             callbacks=[Record(Path(out) / mode)])
        trainer.fit(ClassificationModule("test_resnet", num_classes=2, img_size=32), dm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
