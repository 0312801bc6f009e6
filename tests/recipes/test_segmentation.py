"""Segmentation recipe (recipes/segmentation.py) and ADE20K-layout mask folders (recipes/data/masks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import zoo  # noqa: F401  (registers the zoo models in timm)
from recipes.checkpoint import load_model
from recipes.common import AtomicCheckpointIO, default_callbacks, default_loggers
from recipes.data.masks import MaskFolder, MaskFolderDataModule, collate_masks
from recipes.segmentation import SegmentationModule, build_segmenter


@pytest.fixture(scope="module")
def scenes(make_scenes) -> Path:
    return make_scenes(6, 2)


SMALL = {"upernet": {"decoder_channels": 32},
         "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}}


def _trainer(root: Path, max_steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, limit_val_batches=2, num_sanity_val_steps=0, accelerator="cpu", devices=1,
        default_root_dir=str(root), logger=default_loggers(root), plugins=[AtomicCheckpointIO()],
        callbacks=default_callbacks(root, every_n_train_steps=1, monitor="val/miou", mode="max", progress_bar=False),
        enable_model_summary=False, log_every_n_steps=1,
    )


def _dm(root: Path, **kw) -> MaskFolderDataModule:
    return MaskFolderDataModule(str(root), crop_size=(48, 48), batch_size=2, max_train_images=4, **kw)


@pytest.mark.parametrize("head", ["upernet", "fpn"])
@pytest.mark.parametrize("name", ["dinat_nano", "resnet18"])
def test_heads_over_backbones_any_size(head: str, name: str) -> None:
    module = SegmentationModule(name, head, num_classes=5, head_kwargs=SMALL[head])
    x = torch.rand(2, 3, 50, 70)  # not a multiple of 32: padded inside, cropped back
    logits = module(x)
    assert logits.shape == (2, 5, 50, 70)
    # the padding is the mean colour at the bottom/right: the same as feeding an image of the next multiple of
    # 32 filled with it there, whose logits are cropped to the input
    canvas = module.mean.expand(2, 3, 64, 96).clone()
    canvas[..., :50, :70] = x
    with torch.no_grad():
        module.eval()
        torch.testing.assert_close(module(x), module(canvas)[..., :50, :70], rtol=1e-5, atol=1e-5)
        module.train()
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 50, 70))).backward()
    assert module.model.encoder.model.feature_info.reduction()[-1] == 32


def test_slide_inference() -> None:
    module = SegmentationModule("resnet18", "fpn", num_classes=3, inference="slide", slide_crop=(64, 64),
                                slide_stride=(32, 32), head_kwargs=SMALL["fpn"]).eval()
    small = torch.rand(1, 3, 40, 56)  # one window covers it: slide == whole
    big = torch.rand(1, 3, 100, 130)
    with torch.no_grad():
        torch.testing.assert_close(module.slide_logits(small), module(small))
        out = module.predict_logits(big, (50, 65))
        # mmseg's slide by hand: 64 px windows every 32 px, the last one moved back inside the image
        # (rows at 0, 32, 36 of 100; columns at 0, 32, 64, 66 of 130), logits summed and divided by the number
        # of windows covering each pixel, then resized bilinearly to the output size
        total, count = torch.zeros(1, 3, 100, 130), torch.zeros(1, 1, 100, 130)
        for y0 in (0, 32, 36):
            for x0 in (0, 32, 64, 66):
                total[..., y0:y0 + 64, x0:x0 + 64] += module(big[..., y0:y0 + 64, x0:x0 + 64])
                count[..., y0:y0 + 64, x0:x0 + 64] += 1
    assert count[0, 0, 0, 0] == 1 and count[0, 0, 50, 70] == 9 and count[0, 0, 99, 127] == 2
    expect = torch.nn.functional.interpolate(total / count, size=(50, 65), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expect)
    with pytest.raises(ValueError, match="inference"):
        SegmentationModule("resnet18", inference="tiles")


def test_miou_is_dataset_level_macro_with_ignore() -> None:
    module = SegmentationModule("resnet18", "fpn", num_classes=4, head_kwargs=SMALL["fpn"])
    target = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 3, 2]])
    module.val_miou.update(pred, target)
    module.val_miou.update(torch.tensor([[2, 2]]), torch.tensor([[2, 0]]))
    # over both: class 0: tp 1, fp 0, fn 2 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 2, fp 1 -> 2/3;
    # class 3 never in target and its only prediction sits on an ignored pixel -> not counted
    torch.testing.assert_close(module.val_miou.compute(), torch.tensor((1 / 3 + 2 / 3 + 2 / 3) / 3))


def test_fit_resume_test_zoo_backbone_upernet(tmp_path: Path, scenes: Path, load_tool) -> None:
    """UPerNet + dinat_nano on scenes composited from real objects: 2 steps, resume to 3, sliding-window test."""
    torch.manual_seed(0)
    kw = dict(model_name="dinat_nano", head="upernet", num_classes=11, lr=1e-3, inference="slide",
              slide_crop=(48, 48), slide_stride=(32, 32), head_kwargs=SMALL["upernet"])
    trainer = _trainer(tmp_path, 2)
    trainer.fit(SegmentationModule(**kw), datamodule=_dm(scenes))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert trainer.global_step == 2 and last.is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "segmentation" and 0.0 <= metrics["final"]["val/miou"] <= 1.0
    assert "train/loss" in metrics["final"] and metrics["final"]["data/skipped_missing_mask"] == 0

    resumed = SegmentationModule(**kw)
    trainer = _trainer(tmp_path, 3)
    trainer.fit(resumed, datamodule=_dm(scenes), ckpt_path=str(last))
    assert trainer.global_step == 3
    (result,) = trainer.test(resumed, datamodule=_dm(scenes), verbose=False)
    assert 0.0 <= result["test/miou"] <= result["test/pixel_acc"] + 1.0

    model, info = load_model(last)
    assert info["task"] == "segmentation" and info["num_classes"] == 11
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 11, 64, 64)

    # the trained checkpoint exports through the CLI and matches in onnxruntime (UPerNet's PSP pools replaced)
    cli = load_tool("export")
    out = tmp_path / "seg.onnx"
    assert cli.main([str(last), "-o", str(out), "--img-size", "64", "--json", str(tmp_path / "seg.json")]) == 0
    rec = json.loads((tmp_path / "seg.json").read_text())
    assert rec["ok"] and rec["max_abs"] <= 1e-4 and out.is_file()


def test_mid_epoch_resume_is_exact(scenes: Path, killed_and_resumed) -> None:
    """A run killed mid-epoch (after step 3 of 2-batch epochs, random crops, scales and flips) and resumed from
    its last.ckpt ends with the weights of the uninterrupted run: the training loader
    (recipes.data.loader.split_loader, shared with detection) resumes the epoch's seeded order and per-sample
    augmentation, and Lightning does not warn that it cannot."""
    kw = dict(model_name="resnet18", head="fpn", num_classes=11, lr=1e-3, head_kwargs=SMALL["fpn"])
    whole, resumed = killed_and_resumed(lambda: SegmentationModule(**kw), _trainer,
                                        lambda: _dm(scenes, hflip=0.5, scale_range=(0.5, 2.0)), steps=5, kill_at=3)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_fit_timm_backbone_fpn(tmp_path: Path, scenes: Path) -> None:
    """FPN + timm resnet18, whole-image eval at the masks' original size."""
    torch.manual_seed(0)
    module = SegmentationModule("resnet18", "fpn", num_classes=11, lr=1e-3, head_kwargs=SMALL["fpn"])
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, datamodule=_dm(scenes, eval_short_side=48))
    assert trainer.global_step == 2 and 0.0 <= float(trainer.callback_metrics["val/miou"]) <= 1.0


def test_errors_before_training(tmp_path: Path, scenes: Path) -> None:
    trainer = _trainer(tmp_path, 1)
    with pytest.raises(ValueError, match="class count mismatch: the data has 11"):
        trainer.fit(SegmentationModule("resnet18", "fpn", num_classes=5), datamodule=_dm(scenes))
    assert trainer.global_step == 0
    with pytest.raises(ValueError, match="class count mismatch: mask"):
        _dm(scenes, num_classes=3).setup("fit")
    with pytest.raises(FileNotFoundError, match="data root not found"):
        MaskFolderDataModule(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="missing folder"):
        MaskFolderDataModule(str(scenes), train_split="train")
    with pytest.raises(ValueError, match="head must be one of"):
        build_segmenter("deeplab", "resnet18", 3)


def _pairs(root: Path, n: int, values: list[int], extra_image: bool = False) -> None:
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i in range(n):
        Image.fromarray(np.full((20, 30, 3), 10 * i, dtype=np.uint8)).save(root / "img" / f"a{i}.jpg")
        mask = np.array(values * (600 // len(values)), dtype=np.uint8).reshape(20, 30)
        Image.fromarray(mask).save(root / "ann" / f"a{i}.png")
    if extra_image:
        Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(root / "img" / "orphan.jpg")


def test_mask_folder(tmp_path: Path) -> None:
    _pairs(tmp_path, 3, [0, 1, 2, 150, 255], extra_image=True)
    ds = MaskFolder(tmp_path / "img", tmp_path / "ann", reduce_zero_label=True)
    assert len(ds) == 3 and ds.missing_masks == 1 and ds.skip_counter.value == 1
    item = ds[0]
    assert item["image"].shape == (3, 20, 30) and item["mask"].shape == (20, 30)
    assert sorted(item["mask"].unique().tolist()) == [0, 1, 149, 255]  # ADE20K: 0 -> 255, others - 1
    train = MaskFolder(tmp_path / "img", tmp_path / "ann", train=True, crop_size=(32, 40))
    batch = collate_masks([train[0], None, train[1]])
    assert batch["image"].shape == (2, 3, 32, 40) and batch["mask"].shape == (2, 32, 40)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 150, 255}
    evals = collate_masks([MaskFolder(tmp_path / "img", tmp_path / "ann", eval_short_side=10)[0]])
    assert evals["image_sizes"] == [(10, 15)] and evals["mask_sizes"] == [(20, 30)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        MaskFolder(empty, tmp_path / "ann")
