"""Detection recipe (recipes/detection.py): torchvision detectors over timm/zoo backbones, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

import zoo  # noqa: F401  (registers the zoo models in timm)
from recipes.checkpoint import load_model
from recipes.common import AtomicCheckpointIO, default_callbacks, default_loggers
from recipes.data.coco import CocoDataModule
from recipes.data.composite import SceneConfig, load_fashion_mnist, write_scenes
from recipes.detection import DetectionModule, TimmFPNBackbone, build_detector

ROOT = Path(__file__).resolve().parents[2]
DEEPFOREST = ROOT / "data" / "deepforest"
# small and fast: few proposals, few sampled RoIs
FAST = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=200,
            rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, box_detections_per_img=20)


def _trainer(root: Path, max_steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu", devices=1,
        default_root_dir=str(root), logger=default_loggers(root), plugins=[AtomicCheckpointIO()],
        callbacks=default_callbacks(root, every_n_train_steps=1, monitor="val/map", mode="max", progress_bar=False),
        enable_model_summary=False, log_every_n_steps=1,
    )


def _deepforest(**kw) -> CocoDataModule:
    return CocoDataModule(str(DEEPFOREST / "train.json"), str(DEEPFOREST / "images"), str(DEEPFOREST / "val.json"),
                          str(DEEPFOREST / "images"), batch_size=2, max_train_images=4, max_val_images=2, **kw)


@pytest.mark.parametrize("detector", ["fasterrcnn", "retinanet", "maskrcnn"])
@pytest.mark.parametrize("name", ["nat_nano", "resnet18"])
def test_detectors_over_backbones(detector: str, name: str) -> None:
    torch.manual_seed(0)
    kw = FAST if detector != "retinanet" else dict(detections_per_img=20, topk_candidates=100)
    model = build_detector(detector, name, 2, fpn_channels=32, min_size=64, max_size=64,
                           anchor_sizes=(8, 16, 32, 64, 128), detector_kwargs=kw)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 60)]
    targets = [{"boxes": torch.tensor([[4.0, 4, 30, 40]]), "labels": torch.tensor([1]),
                "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)},
               {"boxes": torch.tensor([[10.0, 5, 20, 25]]), "labels": torch.tensor([2]),
                "masks": torch.ones(1, 48, 60, dtype=torch.uint8)}]
    model.train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.feature_info.reduction()[-1] == 32
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[1]["boxes"].shape[1] == 4
    assert (out[1]["boxes"][:, 2] <= 60).all() and (out[1]["boxes"][:, 3] <= 48).all()  # original image frame
    if detector == "maskrcnn":
        assert out[0]["masks"].shape[1:] == (1, 64, 64)


def test_backbone_wrapper() -> None:
    bb = TimmFPNBackbone("crossformer_nano", out_channels=16)
    feats = bb(torch.rand(1, 3, 64, 96))
    assert list(feats) == ["0", "1", "2", "3", "pool"] and bb.out_channels == 16
    assert [tuple(f.shape[1:]) for f in feats.values()] == [(16, 16, 24), (16, 8, 12), (16, 4, 6), (16, 2, 3),
                                                          (16, 1, 2)]
    with pytest.raises(ValueError, match="needs 4"):
        TimmFPNBackbone("resnet18", model_kwargs={"out_indices": (0, 1)})
    with pytest.raises(ValueError, match="detector must be one of"):
        build_detector("yolo", "resnet18", 1)


def test_fit_resume_test_deepforest_zoo_backbone(tmp_path: Path) -> None:
    """Faster R-CNN + nat_nano on the DeepForest tiles: 2 steps, resume to 3, test, reload."""
    torch.manual_seed(0)
    kw = dict(model_name="nat_nano", detector="fasterrcnn", num_classes=1, fpn_channels=32, min_size=128,
              max_size=128, anchor_sizes=(8, 16, 32, 64, 128), detector_kwargs=FAST, lr=1e-3)
    module = DetectionModule(**kw)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, datamodule=_deepforest())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert trainer.global_step == 2 and last.is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["task"] == "detection" and 0.0 <= metrics["final"]["val/map"] <= 1.0
    assert metrics["final"]["data/skipped"] == 0 and "train/loss_objectness" in metrics["final"]
    assert (tmp_path / "curves.png").is_file()

    resumed = DetectionModule(**kw)
    trainer = _trainer(tmp_path, 3)
    trainer.fit(resumed, datamodule=_deepforest(), ckpt_path=str(last))
    assert trainer.global_step == 3
    (result,) = trainer.test(resumed, datamodule=_deepforest(), verbose=False)
    assert 0.0 <= result["test/map"] <= 1.0 and 0.0 <= result["test/map_50"] <= 1.0

    model, info = load_model(last)
    assert info["task"] == "detection" and info["model_name"] == "nat_nano"
    torch.testing.assert_close(model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                               resumed.model.state_dict()["roi_heads.box_predictor.cls_score.weight"])
    with torch.no_grad():
        assert model([torch.rand(3, 100, 100)])[0]["boxes"].shape[1] == 4


def test_mid_epoch_resume_is_exact(killed_and_resumed) -> None:
    """Faster R-CNN on the DeepForest tiles with flips, killed after step 3 of 2-batch epochs and resumed from its
    last.ckpt: the weights equal the uninterrupted run's (the loader resumes its seeded order and per-sample
    augmentation; the RPN/RoI sampling draws are seeded per step)."""
    kw = dict(model_name="resnet18", detector="fasterrcnn", num_classes=1, fpn_channels=32, min_size=96,
              max_size=96, anchor_sizes=(8, 16, 32, 64, 128), detector_kwargs=FAST, lr=1e-3)
    whole, resumed = killed_and_resumed(lambda: DetectionModule(**kw), _trainer, lambda: _deepforest(hflip=0.5),
                                        steps=5, kill_at=3)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_fit_maskrcnn_composited_scenes_timm_backbone(tmp_path: Path) -> None:
    """Mask R-CNN + timm resnet18 on scenes composited from real objects: 2 steps, bbox + segm mAP."""
    fmnist = load_fashion_mnist()  # the subset the repository carries: a checkout without it fails, not skips
    data = tmp_path / "scenes"
    write_scenes(data, 4, 2, seed=0, cfg=SceneConfig(size=64, max_items=3, max_scale=1.5), fashion_mnist=fmnist)
    dm = CocoDataModule(str(data / "instances_training.json"), str(data / "images" / "training"),
                        str(data / "instances_validation.json"), str(data / "images" / "validation"),
                        batch_size=2, with_masks=True)
    module = DetectionModule("resnet18", "maskrcnn", num_classes=10, fpn_channels=32, min_size=64, max_size=64,
                             anchor_sizes=(8, 16, 32, 64, 128), detector_kwargs=FAST, lr=1e-3)
    trainer = _trainer(tmp_path / "run", 2)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    m = trainer.callback_metrics
    assert 0.0 <= float(m["val/segm_map"]) <= 1.0 and float(m["val/map"]) == float(m["val/bbox_map"])
    assert torch.isfinite(m["train/loss_mask"])


def test_errors_before_training(tmp_path: Path) -> None:
    module = DetectionModule("resnet18", num_classes=3, fpn_channels=16, min_size=64, max_size=64)
    trainer = _trainer(tmp_path, 1)
    with pytest.raises(ValueError, match="class count mismatch: the data has 1"):
        trainer.fit(module, datamodule=_deepforest())
    assert trainer.global_step == 0
    module = DetectionModule("resnet18", "maskrcnn", num_classes=1, fpn_channels=16, min_size=64, max_size=64)
    with pytest.raises(ValueError, match="with_masks"):
        _trainer(tmp_path, 1).fit(module, datamodule=_deepforest())
    with pytest.raises(ValueError, match="'detection' task"):
        DetectionModule("resnet18", task="segmentation")
