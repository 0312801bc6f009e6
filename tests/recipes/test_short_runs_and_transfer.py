"""Detection / segmentation: a run cut by max_steps mid-epoch still validates (console line) and keeps a best
checkpoint; ``backbone_checkpoint`` initialises the backbone from a classification recipe checkpoint or a
timm state dict file, and refuses a file of another model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

import zoo  # noqa: F401  (registers the zoo models in timm)
from recipes.classification import ClassificationModule
from recipes.common import AtomicCheckpointIO, default_callbacks, default_loggers
from recipes.data.coco import CocoDataModule
from recipes.data.masks import MaskFolderDataModule
from recipes.detection import DetectionModule
from recipes.segmentation import SegmentationModule

FAST = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=20, rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=20, box_batch_size_per_image=16, box_detections_per_img=10)


@pytest.fixture(scope="module")
def scenes(make_scenes) -> Path:
    return make_scenes(8, 2)


def _trainer(root: Path, max_steps: int, monitor: str) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu", devices=1,
        default_root_dir=str(root), logger=default_loggers(root), plugins=[AtomicCheckpointIO()],
        callbacks=default_callbacks(root, every_n_train_steps=0, monitor=monitor, mode="max", progress_bar=False),
        enable_model_summary=False, log_every_n_steps=1,
    )


def _coco(scenes: Path) -> CocoDataModule:
    return CocoDataModule(str(scenes / "instances_training.json"), str(scenes / "images" / "training"),
                          str(scenes / "instances_validation.json"), str(scenes / "images" / "validation"),
                          batch_size=2)


def test_detection_max_steps_mid_epoch_validates_prints_and_keeps_best(scenes, tmp_path, capsys):
    torch.manual_seed(0)
    module = DetectionModule("nat_nano", "fasterrcnn", num_classes=10, fpn_channels=16, min_size=64, max_size=64,
                             anchor_sizes=(8, 16, 32, 64, 128), detector_kwargs=FAST)
    trainer = _trainer(tmp_path, 2, "val/map")  # 8 scenes / batch 2 = 4 steps per epoch: stops mid-epoch
    trainer.fit(module, datamodule=_coco(scenes))
    assert trainer.global_step == 2
    best = trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file() and "step000002" in best
    out = capsys.readouterr().out
    assert "[detection val] epoch 0 step 2: mAP " in out and "mAP@0.5 " in out and "mAR@100 " in out
    assert "per class: " in out  # 10 classes: short enough for the per-class line
    assert module.hparams.class_names[0] == "t-shirt/top"  # taken from the data, saved in the checkpoint


def test_segmentation_max_steps_mid_epoch_validates(scenes, tmp_path, capsys):
    torch.manual_seed(0)
    module = SegmentationModule("nat_nano", "upernet", num_classes=11, head_kwargs={"decoder_channels": 16})
    dm = MaskFolderDataModule(str(scenes), crop_size=(64, 64), batch_size=2)
    trainer = _trainer(tmp_path, 1, "val/miou")
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1 and Path(trainer.checkpoint_callback.best_model_path).is_file()
    out = capsys.readouterr().out
    assert "[segmentation val] epoch 0 step 1: mIoU " in out and "background " in out


def _cls_checkpoint(tmp_path: Path, name: str = "nat_nano") -> tuple[Path, ClassificationModule]:
    torch.manual_seed(1)
    cls = ClassificationModule(name, num_classes=10, img_size=32)
    path = tmp_path / f"{name}-cls.ckpt"
    torch.save({"hyper_parameters": dict(cls.hparams), "state_dict": cls.state_dict()}, path)
    return path, cls


def test_backbone_checkpoint_from_classification_run(scenes, tmp_path, capsys):
    ckpt, cls = _cls_checkpoint(tmp_path)
    ref = cls.model.state_dict()
    det = DetectionModule("nat_nano", num_classes=10, fpn_channels=16, min_size=64, max_size=64,
                          anchor_sizes=(8, 16, 32, 64, 128), detector_kwargs=FAST, backbone_checkpoint=str(ckpt))
    det.setup("validate")  # only a fit loads it
    body = det.model.backbone.body.model.state_dict()
    assert not all(torch.equal(v, ref[k]) for k, v in body.items())
    det.setup("fit")
    body = det.model.backbone.body.model.state_dict()
    assert body and all(torch.equal(v, ref[k]) for k, v in body.items())
    assert "tensors from" in capsys.readouterr().out

    # a timm state dict file works too (the segmentation encoder here)
    from safetensors.torch import save_file
    st = tmp_path / "nat_nano.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(st))
    seg = SegmentationModule("nat_nano", num_classes=11, head_kwargs={"decoder_channels": 16},
                             backbone_checkpoint=str(st))
    seg.setup("fit")
    enc = seg.model.encoder.model.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in enc.items())


def test_backbone_checkpoint_of_another_model_is_refused(tmp_path):
    ckpt, _ = _cls_checkpoint(tmp_path, "dinat_nano")
    det = DetectionModule("nat_nano", num_classes=10, fpn_channels=16, min_size=64, max_size=64,
                          backbone_checkpoint=str(ckpt))
    with pytest.raises(ValueError, match="is a dinat_nano .*the backbone is nat_nano"):
        det.setup("fit")
    det.hparams.backbone_checkpoint = str(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        det.setup("fit")
