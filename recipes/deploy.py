"""A trained recipe network as an ONNX file that serves raw images, and its score in onnxruntime.

The wrappers put the recipe's pre- and postprocessing into the exported graph (:func:`detector_for_onnx`,
:func:`segmenter_for_onnx`); :func:`onnx_accuracy` and :func:`onnx_val_score` score an exported file on a data
module's split in onnxruntime, the numbers a user of the file gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def detector_for_onnx(detector: nn.Module) -> nn.Module:
    """The exported detector: ``[1, 3, H, W]`` RGB 0..1 -> ``(boxes [N, 4] xyxy, labels [N] 1..K, scores [N])``;
    torchvision's transform (normalise, resize, pad) and postprocessing are in the graph."""

    class DetectorForOnnx(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, x):  # noqa: ANN001, ANN202
            out = self.detector(list(x))[0]
            return out["boxes"], out["labels"], out["scores"]

    return DetectorForOnnx().eval()


def segmenter_for_onnx(model: nn.Module, mean: Any, std: Any) -> nn.Module:
    """The exported segmenter: ``[B, 3, H, W]`` RGB 0..1 (H, W multiples of 32) -> logits; normalisation in the
    graph."""

    class SegmenterForOnnx(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.model((x - self.mean) / self.std)

    return SegmenterForOnnx().eval()


def onnx_accuracy(onnx_path: str | Path, loader: Any) -> tuple[float, int]:
    """Top-1 of a classifier file over ``loader`` (batches ``(x, y)``; None batches skipped) in onnxruntime
    through ``zoo.export.OnnxRunner``: an input outside the size range in the file's metadata (e.g. below its
    minimum size) is a ValueError, not a silent answer. Returns (accuracy, images)."""
    import numpy as np

    from zoo.export import OnnxRunner

    run = OnnxRunner(onnx_path)
    correct = total = 0
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        logits = run(x)[0]
        correct += int((np.argmax(logits, 1) == y.numpy()).sum())
        total += len(y)
    return correct / max(total, 1), total


def onnx_val_score(onnx_path: str | Path, dm: Any, task: str, num_classes: int) -> dict:
    """Score a detection (:func:`detector_for_onnx`) or segmentation (:func:`segmenter_for_onnx`) file on the data
    module's validation split in onnxruntime: ``val_map`` / ``val_map_50`` or ``val_miou``, and ``images``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ds = dm.val_dataloader().dataset
    items = (ds[i] for i in range(len(ds)))
    if task == "det":
        return _detection_score(sess, (item for item in items if item is not None))
    return _segmentation_score(sess, (item for item in items if item is not None), num_classes)


def _detection_score(sess: Any, items: Any) -> dict:
    from torchmetrics.detection import MeanAveragePrecision

    name = sess.get_inputs()[0].name
    metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    n = 0
    for image, target in items:
        boxes, labels, scores = sess.run(None, {name: image[None].numpy()})
        metric.update([{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "scores": torch.from_numpy(scores)}],
                      [{"boxes": target["boxes"], "labels": target["labels"]}])
        n += 1
    r = metric.compute()
    return {"val_map": float(r["map"]), "val_map_50": float(r["map_50"]), "images": n}


def _segmentation_score(sess: Any, items: Any, num_classes: int) -> dict:
    import numpy as np
    from torchmetrics.classification import MulticlassJaccardIndex

    name = sess.get_inputs()[0].name
    metric = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=255)
    n = 0
    for item in items:
        image, mask = item["image"], item["mask"]
        h, w = image.shape[-2:]
        x = torch.nn.functional.pad(image[None], (0, (-w) % 32, 0, (-h) % 32))
        logits = sess.run(None, {name: x.numpy().astype(np.float32)})[0][..., :h, :w]
        metric.update(torch.from_numpy(logits).argmax(1), mask[None])
        n += 1
    return {"val_miou": float(metric.compute()), "images": n}
