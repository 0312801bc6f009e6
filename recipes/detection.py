"""Object detection recipe: torchvision Faster R-CNN / RetinaNet / Mask R-CNN on an FPN over any timm backbone.

``TimmFPNBackbone`` takes the last four ``features_only`` maps of a timm model (strides 4/8/16/32 for
the zoo's families and for ResNets), runs torchvision's ``FeaturePyramidNetwork`` with a max-pool
extra level and returns ``OrderedDict('0', '1', '2', '3', 'pool')`` with ``out_channels`` channels
each -- the interface torchvision's detectors expect. Images are normalised, resized to
``min_size``/``max_size`` and padded to a multiple of 32 by the detectors' own transform.

Detectors: ``fasterrcnn`` / ``maskrcnn`` (two-stage; ``detector_kwargs`` sets the proposal counts and the RoI
sampling), ``retinanet`` (one-stage, 9 anchors per location), ``fcos`` (one-stage, anchor-free: one "anchor" per
location whose size only assigns objects to FPN levels).

``DetectionModule`` keeps the detector at ``self.model`` and ``task='detection'`` in its hparams;
it logs the losses, COCO mAP (torchmetrics ``MeanAveragePrecision``, pycocotools backend; bbox, and
segm for Mask R-CNN) and the per-reason skipped-annotation counts of a ``CocoDataModule``
(``data/skipped_<reason>``; the total is ``data/skipped`` from ``recipes.common``). At the end of every
validation it prints mAP, mAP@0.5 and mAR@100 on the console (per-class mAP@[.5:.95] too for up to
``PER_CLASS_MAX`` classes).

``backbone_checkpoint``: weights for the backbone, loaded when a fit starts (``recipes._dense.DenseRecipeModule``).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import zoo  # noqa: F401  (registers the zoo families in timm)
from recipes._dense import DenseRecipeModule, log_skipped_reasons, print_metrics_line

DETECTORS = ("fasterrcnn", "retinanet", "maskrcnn", "fcos")
PER_CLASS_MAX = 12


class TimmFPNBackbone(nn.Module):
    """timm ``features_only`` body + FPN. ``forward(x [B, 3, H, W]) -> OrderedDict('0'..'3', 'pool')``.

    ``out_channels``: FPN width. The body keeps the last four feature levels of ``model_name`` (or
    ``model_kwargs['out_indices']``, four of them); fewer than four levels raise ValueError.
    Channels-last (NHWC) feature outputs are permuted.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        out_channels: int = 256,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        out_indices = kwargs.pop("out_indices", None)
        if not timm.is_model(model_name):
            raise ValueError(f"unknown timm model {model_name!r} (zoo names need `import zoo`; see timm.list_models())")
        if out_indices is None:
            try:
                with torch.device("meta"):
                    probe = timm.create_model(model_name, features_only=True, **kwargs)
            except RuntimeError as err:
                raise ValueError(f"timm backbone {model_name!r} has no features_only mode: {err}") from err
            n = len(probe.feature_info)
            out_indices = tuple(range(max(n - 4, 0), n))
        if len(out_indices) != 4:
            raise ValueError(
                f"{model_name!r}: the FPN needs 4 feature levels (strides 4/8/16/32), got out_indices={out_indices}"
            )
        self.body = timm.create_model(
            model_name, pretrained=pretrained, features_only=True, out_indices=out_indices, **kwargs
        )
        self.reductions = list(self.body.feature_info.reduction())
        self.channels_last_out = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self.fpn = FeaturePyramidNetwork(
            list(self.body.feature_info.channels()), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        if self.channels_last_out:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return self.fpn(OrderedDict((str(i), f.contiguous()) for i, f in enumerate(feats)))


def build_detector(
    detector: str,
    model_name: str,
    num_classes: int,
    pretrained: bool = False,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    model_kwargs: dict[str, Any] | None = None,
    detector_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A torchvision detector over ``TimmFPNBackbone(model_name)``; ``num_classes`` excludes background."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (object classes, background excluded), got {num_classes}")
    if len(anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level ('0'..'3', 'pool'): 5 values, got {anchor_sizes}")
    backbone = TimmFPNBackbone(model_name, pretrained, fpn_channels, model_kwargs)
    common = dict(min_size=min_size, max_size=max_size, size_divisible=32, **(detector_kwargs or {}))
    ratios = ((0.5, 1.0, 2.0),) * 5
    if detector == "fcos":
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((1.0,),) * 5)
        return FCOS(backbone, num_classes + 1, anchor_generator=anchors, **common)
    if detector == "retinanet":
        sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes)
        return RetinaNet(backbone, num_classes + 1, anchor_generator=AnchorGenerator(sizes, ratios), **common)
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ratios)
    cls = FasterRCNN if detector == "fasterrcnn" else MaskRCNN
    return cls(backbone, num_classes + 1, rpn_anchor_generator=anchors, **common)


class DetectionModule(DenseRecipeModule):
    """Train / evaluate a torchvision detector over a timm backbone (see module docstring).

    Batches are ``(images: list[[3, H, W] float 0..1], targets: list[dict])`` as made by
    ``recipes.data.coco.collate_detection``; target labels are ``1..num_classes`` (0 is background).
    Optimizer: ``recipes.common`` AdamW + cosine (``lr``, ``weight_decay``, ``warmup``, ``min_lr_ratio``).
    Best checkpoint by ``val/map`` (COCO mAP@[.5:.95]; the bbox one for Mask R-CNN).
    """

    task = "detection"
    classes_what = "object categories"
    monitor = "val/map"
    monitor_mode = "max"

    def __init__(
        self,
        model_name: str = "resnet18",
        detector: str = "fasterrcnn",
        num_classes: int = 1,
        pretrained: bool = False,
        fpn_channels: int = 256,
        min_size: int = 800,
        max_size: int = 1333,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        model_kwargs: dict[str, Any] | None = None,
        detector_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
        class_names: list[str] | None = None,
        backbone_checkpoint: str | None = None,
        task: str = "detection",
    ) -> None:
        super().__init__()
        if task != "detection":
            raise ValueError(f"DetectionModule is the 'detection' task, got task={task!r}")
        self.save_hyperparameters()
        self.model = build_detector(
            detector, model_name, num_classes, pretrained, fpn_channels, min_size, max_size,
            tuple(anchor_sizes), model_kwargs, detector_kwargs,
        )
        self.val_map = self._make_metric()
        self.test_map = self._make_metric()

    def _make_metric(self) -> nn.Module:
        from torchmetrics.detection import MeanAveragePrecision

        iou = ("bbox", "segm") if self.hparams.detector == "maskrcnn" else "bbox"
        return MeanAveragePrecision(iou_type=iou, backend="pycocotools",
                                    class_metrics=self.hparams.num_classes <= PER_CLASS_MAX)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> Any:
        return self.model(images, targets)

    def backbone_body(self) -> nn.Module:
        return self.model.backbone.body

    def check_data(self, dm: object | None) -> None:
        if self.hparams.detector == "maskrcnn" and dm is not None and not getattr(dm.hparams, "with_masks", True):
            raise ValueError("Mask R-CNN needs instance masks: set data with_masks=true")

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor | None:
        images, targets = batch
        if not images:
            return None
        losses = self.model(images, targets)
        loss = sum(losses.values())
        bs = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=bs)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        return loss

    def _eval_step(self, batch: tuple, metric: nn.Module) -> None:
        images, targets = batch
        if not images:
            return
        preds = self.model(images)
        p_out, t_out = [], []
        for p, t in zip(preds, targets):
            p_item = {"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"]}
            t_item = {"boxes": t["boxes"], "labels": t["labels"]}
            if "masks" in p:
                p_item["masks"] = p["masks"][:, 0] > 0.5
                t_item["masks"] = t["masks"].bool()
            p_out.append(p_item)
            t_out.append(t_item)
        metric.update(p_out, t_out)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, self.val_map)

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        self._eval_step(batch, self.test_map)

    def _log_map(self, metric: nn.Module, prefix: str) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = metric.compute()
        metric.reset()
        out = {}
        for key, value in result.items():
            # per-class entries are -1 placeholders unless class_metrics=True; 'classes' lists the labels seen
            if isinstance(value, torch.Tensor) and value.numel() == 1 and not key.endswith(("per_class", "classes")):
                out[f"{prefix}/{key}"] = float(value)
        if f"{prefix}/map" not in out and f"{prefix}/bbox_map" in out:
            out[f"{prefix}/map"] = out[f"{prefix}/bbox_map"]
        self.log_dict(out)
        per_class = {}
        pc_key = "bbox_map_per_class" if "bbox_map_per_class" in result else "map_per_class"
        pcs, classes = result.get(pc_key), result.get("classes")
        if isinstance(pcs, torch.Tensor) and isinstance(classes, torch.Tensor) and pcs.numel() == classes.numel():
            names = self.hparams.class_names
            for c, v in zip(classes.flatten().tolist(), pcs.flatten().tolist()):
                name = names[c - 1] if names and 0 < c <= len(names) else str(c)
                per_class[name] = v
                out[f"{prefix}/map_class/{name}"] = v
        self._last_per_class = per_class
        return out

    def on_validation_epoch_end(self) -> None:
        out = self._log_map(self.val_map, "val")
        keys = {"mAP": "val/map", "mAP@0.5": "val/map_50", "mAR@100": "val/mar_100"}
        print_metrics_line(self, "detection val", {k: out[v] for k, v in keys.items() if v in out},
                           self._last_per_class)
        log_skipped_reasons(self)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")
        log_skipped_reasons(self)

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Detections per image (``boxes`` xyxy, ``scores``, ``labels`` 1..K, ``masks`` for Mask R-CNN)."""
        images = batch[0] if isinstance(batch, (tuple, list)) and isinstance(batch[0], list) else batch
        return self.model(images)
