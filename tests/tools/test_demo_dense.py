"""tools/demo.py --task det / seg: tiny runs on generated scenes print the metric per epoch, keep the best
checkpoint, draw predictions next to the ground truth, resume with the run's settings; the heavy one exports to
ONNX, scores the file in onnxruntime and hands it to tools/predict.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = ["--model", "crossformer_nano", "--epochs", "1", "--scenes-train", "8", "--scenes-val", "4",
        "--batch-size", "4", "--workers", "0", "--threads", "1"]


@pytest.fixture
def demo(load_tool):
    return load_tool("demo")


def _check_run(out: Path, printed: str, task: str) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())["demo"]
    assert metrics["task"] == task and metrics["train_images"] == 8 and metrics["val_images"] == 4
    assert Path(metrics["best_checkpoint"]).is_file() and "best-epoch000" in metrics["best_checkpoint"]
    assert len(metrics["val_curve"]) == 1
    png = np.asarray(Image.open(out / "predictions.png"))
    assert png.shape[0] > 128 and png.shape[1] > 4 * 128  # 4 ground truth | prediction pairs per row
    assert (out / "scenes" / "meta.json").is_file()
    return metrics


def test_detection_demo_prints_map_per_epoch_keeps_best_and_resumes(tmp_path, demo, capsys):
    out = tmp_path / "det"
    demo.main(["--task", "det", *TINY, "--no-export", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "zoo demo (detection): fasterrcnn + FPN (64 ch) over crossformer_nano" in printed
    assert "[detection val] epoch 0 step 2: mAP " in printed and "per class:" in printed
    assert "best validation mAP: " in printed and "from scratch" in printed
    metrics = _check_run(out, printed, "det")
    assert 0.0 <= metrics["best_map"] <= 1.0 and metrics["onnx"] == {}
    # --resume takes task and settings from the checkpoint; the finished run just reports again
    demo.main(["--resume", "--no-export", "--workers", "0", "--threads", "1", "--out", str(out)])
    assert "zoo demo (detection)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--task 'seg' \(the run has 'det'\)"):
        demo.main(["--resume", "--task", "seg", "--out", str(out)])


def test_segmentation_demo_with_backbone_checkpoint(tmp_path, demo, capsys):
    import torch

    from recipes.classification import ClassificationModule

    cls = ClassificationModule("crossformer_nano", num_classes=10, img_size=32)
    ckpt = tmp_path / "cls.ckpt"
    torch.save({"hyper_parameters": dict(cls.hparams), "state_dict": cls.state_dict()}, ckpt)
    out = tmp_path / "seg"
    demo.main(["--task", "seg", *TINY, "--no-export", "--out", str(out), "--backbone-checkpoint", str(ckpt)])
    printed = capsys.readouterr().out
    assert "UPerNet (64 ch) over crossformer_nano" in printed and f"backbone {ckpt}" in printed
    assert "[segmentation val] epoch 0 step 2: mIoU " in printed and "tensors from" in printed
    metrics = _check_run(out, printed, "seg")
    assert 0.0 <= metrics["best_miou"] <= 1.0


def test_dense_demo_errors(tmp_path, demo):
    with pytest.raises(SystemExit, match="are for --task det / seg"):
        demo.main(["--backbone-checkpoint", "x.ckpt", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="no such file"):
        demo.main(["--task", "det", "--backbone-checkpoint", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="has boxes only"):
        demo.main(["--task", "seg", "--data", "deepforest", "--out", str(tmp_path / "c")])


@pytest.mark.heavy
@pytest.mark.parametrize("task", ["det", "seg"])
def test_dense_demo_exports_onnx_scored_and_predictable(task, tmp_path, demo, load_tool, capsys):
    out = tmp_path / task
    demo.main(["--task", task, *TINY, "--out", str(out)])
    printed = capsys.readouterr().out
    onnx_info = json.loads((out / "metrics.json").read_text())["demo"]["onnx"]
    assert onnx_info["verified"] and onnx_info["images"] == 4 and "ONNX (onnxruntime) validation" in printed
    preds = tmp_path / "preds"
    assert load_tool("predict").main([onnx_info["path"], str(out / "scenes" / "images" / "validation"),
                                      "--out", str(preds)]) == 0
    doc = json.loads((preds / "predictions.json").read_text())
    assert doc["task"] == {"det": "detection", "seg": "segmentation"}[task] and len(doc["predictions"]) == 4
    assert doc["class_names"][0] == ("t-shirt/top" if task == "det" else "background")
