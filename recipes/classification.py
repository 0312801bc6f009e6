"""Image classification over any timm model name (zoo or not): ``ClassificationModule``.

Loss: cross-entropy with label smoothing, or soft-target cross-entropy under mixup/cutmix (timm ``Mixup``).
Metrics: top-1 / top-5 accuracy (torchmetrics), logged as ``{train,val,test}/acc1``, ``/acc5``, ``/loss``.
EMA (``ema_decay`` > 0): timm ``ModelEmaV3`` kept at ``self.model_ema`` (its weights are in the checkpoint
state_dict, so resume restores them); validation/test then use the EMA weights (``eval_ema``).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from recipes.common import RecipeModule

__all__ = ["ClassificationModule"]


class ClassificationModule(RecipeModule):
    """LightningModule: ``timm.create_model(model_name, num_classes=..., **model_kwargs)`` at ``self.model``.

    Args:
        model_name: any ``timm.list_models()`` name (the zoo registers its models on import).
        num_classes: classifier outputs; must match the data (checked in ``setup``).
        img_size: training input size (recorded for export; the data module does the resizing).
        pretrained: load timm pretrained weights (needs them locally or a network).
        drop_path_rate: stochastic depth (passed when > 0).
        lr, weight_decay, warmup, min_lr_ratio, layer_decay: AdamW + cosine (``recipes.common.adamw_cosine``).
        label_smoothing: for the hard-label loss and for mixup targets.
        mixup, cutmix: Beta alphas (0 disables); ``mixup_prob``, ``mixup_switch_prob`` as in timm.
        ema_decay: 0 disables EMA; e.g. 0.999. ``ema_warmup``: timm's decay warmup.
        eval_ema: validate/test with the EMA weights when EMA is on.
        model_kwargs: extra kwargs for ``timm.create_model``.
        class_names: the name of each class (recorded for export and prediction: saved in the checkpoint,
            written into ONNX metadata); taken from the data module's ``classes`` in ``setup`` when not given.
    """

    task = "classification"
    monitor = "val/acc1"
    monitor_mode = "max"

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 10,
        img_size: int = 32,
        pretrained: bool = False,
        drop_path_rate: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
        layer_decay: float | None = None,
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        ema_decay: float = 0.0,
        ema_warmup: bool = True,
        eval_ema: bool = True,
        model_kwargs: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hparams["task"] = self.task
        import zoo  # noqa: F401 - registers the zoo's models with timm

        if model_name not in timm.list_models() and model_name.split(".")[0] not in timm.list_models():
            close = timm.list_models(f"*{model_name.split('_')[0]}*")[:8]
            raise ValueError(f"unknown timm model {model_name!r}; close names: {close}")
        kw = dict(model_kwargs or {})
        if drop_path_rate > 0:
            kw["drop_path_rate"] = drop_path_rate
        self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kw)
        self.model_ema = None
        if ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.model_ema = ModelEmaV3(self.model, decay=ema_decay, use_warmup=ema_warmup)
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob,
                                  switch_prob=mixup_switch_prob, label_smoothing=label_smoothing,
                                  num_classes=num_classes)
        k5 = min(5, num_classes)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc1", MulticlassAccuracy(num_classes, top_k=1, average="micro"))
            setattr(self, f"{stage}_acc5", MulticlassAccuracy(num_classes, top_k=k5, average="micro"))

    # ----------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self._trainer.datamodule if self._trainer is not None else None
        n = getattr(dm, "num_classes", None)
        if n is not None and int(n) != self.hparams.num_classes:
            raise ValueError(
                f"class count mismatch: the data has {n} classes but the model was built with "
                f"num_classes={self.hparams.num_classes}; set --model.num_classes={n}"
            )
        classes = getattr(dm, "classes", None)
        if self.hparams.get("class_names") is None and classes and len(classes) == self.hparams.num_classes:
            self.hparams.class_names = [str(c) for c in classes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _eval_net(self) -> torch.nn.Module:
        if self.model_ema is not None and self.hparams.eval_ema:
            return self.model_ema.module
        return self.model

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every sample of this batch was unreadable (counted by the data module)
            return None
        x, y = batch
        if self.mixup_fn is not None and len(x) % 2 == 0:
            xm, ysoft = self.mixup_fn(x, y)
            logits = self.model(xm)
            loss = torch.sum(-ysoft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc1(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.global_step)

    def _eval_step(self, batch: Any, stage: str) -> None:
        if batch is None:
            return
        x, y = batch
        logits = self._eval_net()(x)
        loss = F.cross_entropy(logits, y)
        acc1, acc5 = getattr(self, f"{stage}_acc1"), getattr(self, f"{stage}_acc5")
        acc1(logits, y)
        acc5(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log(f"{stage}/acc1", acc1, prog_bar=True, on_epoch=True, batch_size=len(y))
        self.log(f"{stage}/acc5", acc5, on_epoch=True, batch_size=len(y))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self._eval_net()(x).softmax(-1)
