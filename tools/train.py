"""Train / validate / test a recipe with LightningCLI.

    python tools/train.py fit --config recipes/configs/cls_fashion_mnist.yaml --model.model_name=nat_nano
    python tools/train.py fit --config recipes/configs/cls_fashion_mnist.yaml --ckpt_path last   # resume
    python tools/train.py test --config recipes/configs/cls_fashion_mnist.yaml --ckpt_path best

The config picks the LightningModule (``model.class_path``: recipes.classification.ClassificationModule,
recipes.detection.DetectionModule, recipes.segmentation.SegmentationModule) and the data module. Defaults added
by ``recipes.common.RecipeCLI``: checkpoints (best + last at epoch end, last every ``--ckpt_every_n_steps``),
CSV + TensorBoard logs, metrics.json + curves.png, atomic checkpoint writes; all under
``trainer.default_root_dir``. ``fit`` saves its resolved config as ``logs/config.yaml``; test/validate/predict save
theirs as ``logs/config-<subcommand>.yaml``. A full disk while writing a checkpoint, or ``--ckpt_path last``
with no intact checkpoint, ends with one line saying so (exit status 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.common import RecipeCLI  # noqa: E402


def main(args: list[str] | None = None) -> RecipeCLI:
    import lightning.pytorch as pl

    return RecipeCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        seed_everything_default=0,
    )


if __name__ == "__main__":
    from recipes.checkpoint import NothingToResumeError
    from recipes.common import CheckpointWriteError, DataSkipError

    try:
        main()
    except (CheckpointWriteError, DataSkipError, NothingToResumeError) as err:  # say what and what to do, not 40 frames
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
