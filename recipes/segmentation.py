"""Semantic segmentation recipe: segmentation-models-pytorch UPerNet / FPN over any timm backbone.

The network is ``smp.UPerNet`` (the head the BiFormer / CrossFormer / NAT papers use on ADE20K) or
``smp.FPN`` (semantic FPN) with ``encoder_name="tu-<timm name>"``: smp's timm-universal encoder takes
any ``features_only`` timm model whose feature strides are 4/8/16/32 (zoo families, Swin-like) or
2/4/8/16/32 (ResNet-like), zoo models included, so no adapter is needed.

``SegmentationModule`` keeps the smp model at ``self.model`` and ``task='segmentation'`` in hparams.
Inputs are float 0..1 images, normalised here (ImageNet mean/std) and padded to a multiple of 32
(smp requires it; logits are cropped back). Loss: cross-entropy with ``ignore_index`` 255. Metric:
dataset-level mIoU, torchmetrics ``MulticlassJaccardIndex(average='macro', ignore_index=255)`` --
classes absent from both prediction and ground truth do not count -- plus pixel accuracy. Evaluation
is whole-image (``inference='whole'``) or sliding-window (``inference='slide'``, ``slide_crop`` windows
every ``slide_stride`` px, logits averaged where windows overlap); logits are resized to the mask's original
size before the argmax. At the end of every validation the mIoU and pixel accuracy are printed on the console
(with the per-class IoU for up to ``PER_CLASS_MAX`` classes).

``backbone_checkpoint``: weights for the encoder, loaded when a fit starts (``recipes._dense.DenseRecipeModule``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

import zoo  # noqa: F401  (registers the zoo families in timm)
from recipes._dense import DenseRecipeModule, log_skipped_reasons, print_metrics_line

HEADS = ("upernet", "fpn")
IGNORE_INDEX = 255
PER_CLASS_MAX = 12
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_segmenter(head: str, model_name: str, num_classes: int, pretrained: bool = False,
                    head_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """``smp.UPerNet`` / ``smp.FPN`` with the timm backbone ``model_name`` as ``tu-<model_name>`` encoder."""
    import segmentation_models_pytorch as smp

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (include the background class), got {num_classes}")
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r} (see timm.list_models())")
    cls = smp.UPerNet if head == "upernet" else smp.FPN
    try:
        return cls(encoder_name=f"tu-{model_name}", encoder_weights="imagenet" if pretrained else None,
                   classes=num_classes, **(head_kwargs or {}))
    except ValueError as err:
        if "downsampling pattern" in str(err):
            raise ValueError(f"{model_name!r}: smp needs feature strides 4/8/16/32 or 2/4/8/16/32 ({err})") from err
        raise


def pad_to_multiple(x: torch.Tensor, multiple: int = 32, value: float = 0.0) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), value=value) if ph or pw else x


class SegmentationModule(DenseRecipeModule):
    """Train / evaluate UPerNet or FPN over a timm backbone (see module docstring).

    Batches are dicts from ``recipes.data.masks.collate_masks``: ``image`` [B, 3, H, W] 0..1, ``mask``
    [B, H', W'] int64 (255 ignored), ``image_sizes`` / ``mask_sizes`` (true sizes before padding).
    Optimizer: ``recipes.common`` AdamW + cosine (``lr``, ``weight_decay``, ``warmup``, ``min_lr_ratio``).
    Best checkpoint by ``val/miou``.
    """

    task = "segmentation"
    classes_what = "segmentation classes"
    body_what = "encoder"
    monitor = "val/miou"
    monitor_mode = "max"

    def __init__(
        self,
        model_name: str = "resnet18",
        head: str = "upernet",
        num_classes: int = 150,
        pretrained: bool = False,
        head_kwargs: dict[str, Any] | None = None,
        inference: str = "whole",
        slide_crop: Sequence[int] = (512, 512),
        slide_stride: Sequence[int] = (341, 341),
        lr: float = 6e-5,
        weight_decay: float = 0.01,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        class_names: list[str] | None = None,
        backbone_checkpoint: str | None = None,
        task: str = "segmentation",
    ) -> None:
        super().__init__()
        if task != "segmentation":
            raise ValueError(f"SegmentationModule is the 'segmentation' task, got task={task!r}")
        if inference not in ("whole", "slide"):
            raise ValueError(f"inference must be 'whole' or 'slide', got {inference!r}")
        self.save_hyperparameters()
        self.model = build_segmenter(head, model_name, num_classes, pretrained, head_kwargs)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.val_miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX)
        self.test_miou = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.val_iou_per_class = (MulticlassJaccardIndex(num_classes, average="none", ignore_index=IGNORE_INDEX)
                                  if num_classes <= PER_CLASS_MAX else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [B, 3, H, W] float 0..1 -> logits [B, num_classes, H, W] (any H, W)."""
        h, w = images.shape[-2:]
        x = pad_to_multiple((images - self.mean) / self.std, 32)
        return self.model(x)[..., :h, :w]

    @torch.no_grad()
    def slide_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits for one image ``[1, 3, H, W]``: windows ``slide_crop`` every ``slide_stride``."""
        ch, cw = self.hparams.slide_crop
        sh, sw = self.hparams.slide_stride
        _, _, h, w = image.shape
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        logits = image.new_zeros((1, self.hparams.num_classes, h, w))
        count = image.new_zeros((1, 1, h, w))
        for r in range(rows):
            for c in range(cols):
                y0 = max(min(r * sh, h - ch), 0)
                x0 = max(min(c * sw, w - cw), 0)
                y1, x1 = min(y0 + ch, h), min(x0 + cw, w)
                logits[:, :, y0:y1, x0:x1] += self(image[:, :, y0:y1, x0:x1])
                count[:, :, y0:y1, x0:x1] += 1
        return logits / count

    def predict_logits(self, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits of one image ``[1, 3, h, w]`` by the configured inference, resized to ``out_size``."""
        logits = self.slide_logits(image) if self.hparams.inference == "slide" else self(image)
        if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits

    def backbone_body(self) -> nn.Module:
        return self.model.encoder.model

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        images, masks = batch["image"], batch["mask"]
        if images.shape[0] == 0:
            return None
        valid = masks[masks != IGNORE_INDEX]
        if valid.numel() and int(valid.max()) >= self.hparams.num_classes:
            raise ValueError(f"mask label {int(valid.max())} >= num_classes={self.hparams.num_classes}")
        logits = self(images)
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], miou: nn.Module, acc: nn.Module,
                   per_class: nn.Module | None = None) -> None:
        for i, ((ih, iw), (mh, mw)) in enumerate(zip(batch["image_sizes"], batch["mask_sizes"])):
            logits = self.predict_logits(batch["image"][i:i + 1, :, :ih, :iw], (mh, mw))
            pred = logits.argmax(1)
            target = batch["mask"][i:i + 1, :mh, :mw]
            miou.update(pred, target)
            acc.update(pred, target)
            if per_class is not None:
                per_class.update(pred, target)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_miou, self.val_acc, self.val_iou_per_class)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_miou, self.test_acc)

    def on_validation_epoch_end(self) -> None:
        values = {"val/miou": self.val_miou.compute(), "val/pixel_acc": self.val_acc.compute()}
        self.log_dict(values, prog_bar=True)
        per_class = None
        if self.val_iou_per_class is not None:
            ious = self.val_iou_per_class.compute().tolist()
            names = self.hparams.class_names
            per_class = {(names[i] if names and i < len(names) else str(i)): v for i, v in enumerate(ious)}
            self.val_iou_per_class.reset()
        print_metrics_line(self, "segmentation val", {"mIoU": float(values["val/miou"]),
                                                      "pixel acc": float(values["val/pixel_acc"])}, per_class)
        self.val_miou.reset()
        self.val_acc.reset()
        log_skipped_reasons(self)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/miou": self.test_miou.compute(), "test/pixel_acc": self.test_acc.compute()})
        self.test_miou.reset()
        self.test_acc.reset()
        log_skipped_reasons(self)

    def predict_step(self, batch: Any, batch_idx: int) -> list[torch.Tensor]:
        """Label maps ``[h, w]`` int64 per image of the batch."""
        if isinstance(batch, dict):
            sizes = batch["image_sizes"]
            images = batch["image"]
        else:
            images = batch
            sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return [self.predict_logits(images[i:i + 1, :, :h, :w]).argmax(1)[0] for i, (h, w) in enumerate(sizes)]
