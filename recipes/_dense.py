"""Bits shared by the detection and segmentation recipes (private)."""

from __future__ import annotations

import lightning as L
from torch import nn

from recipes.checkpoint import backbone_state_dict, load_backbone  # noqa: F401 - the recipes import them from here
from recipes.common import RecipeModule


def attached_datamodule(module: L.LightningModule) -> object | None:
    trainer = module._trainer
    return getattr(trainer, "datamodule", None) if trainer is not None else None


def check_num_classes(module: L.LightningModule, expected: int, what: str) -> None:
    """Raise before training when the attached datamodule's class count differs from the model's."""
    dm = attached_datamodule(module)
    n = getattr(dm, "num_classes", None) if dm is not None else None
    if n is not None and int(n) != int(expected):
        raise ValueError(
            f"class count mismatch: the data has {n} {what} but the model was built for {expected}; "
            f"set model num_classes={n} (or link it from the datamodule)"
        )


def log_skipped_reasons(module: L.LightningModule) -> None:
    """Log ``data/skipped_<reason>`` from the datamodule's ``skipped_counts()`` (exact per-reason counts of
    annotations/pairs dropped while indexing; the total of skipped samples is ``data/skipped``, logged by
    ``recipes.common.SkippedSamplesLogger``)."""
    dm = attached_datamodule(module)
    if dm is None or not hasattr(dm, "skipped_counts"):
        return
    for reason, count in dm.skipped_counts().items():
        module.log(f"data/skipped_{reason}", float(count), on_step=False, on_epoch=True, reduce_fx="max")


def print_metrics_line(module: L.LightningModule, what: str, values: dict[str, float],
                       per_class: dict[str, float] | None = None) -> None:
    """One console line per validation (rank 0, not during the sanity check): epoch, step and ``values``, then
    the per-class values on a second line when given."""
    trainer = module._trainer
    if trainer is None or trainer.sanity_checking or trainer.global_rank != 0:
        return
    head = f"[{what}] epoch {trainer.current_epoch} step {trainer.global_step}: "
    print(head + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    if per_class:
        print("    per class: " + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items()), flush=True)


class DenseRecipeModule(RecipeModule):
    """What the detection and segmentation modules share. ``setup`` checks the attached datamodule's class
    count (:func:`check_num_classes`, naming them ``classes_what``) and the task's own needs (:meth:`check_data`),
    takes the datamodule's class names when none were given, and when a fit starts loads ``backbone_checkpoint``
    into :meth:`backbone_body`: a classification recipe ``.ckpt`` of the same timm model (e.g. ``tools/demo.py``'s
    best) or any timm state dict file, once (``setup('fit')``: a resumed run's checkpoint still wins, and
    rebuilding from a checkpoint never needs the file). The skipped-annotation counts are logged at the end of
    every training epoch (:func:`log_skipped_reasons`)."""

    classes_what = "classes"
    body_what = "backbone"

    def backbone_body(self) -> nn.Module:
        """The timm model inside the task's network (what ``backbone_checkpoint`` is loaded into)."""
        raise NotImplementedError

    def check_data(self, dm: object | None) -> None:
        """Raise when the attached datamodule ``dm`` cannot serve the task (after the class count check)."""

    def setup(self, stage: str) -> None:
        hp = self.hparams
        check_num_classes(self, hp.num_classes, self.classes_what)
        dm = attached_datamodule(self)
        self.check_data(dm)
        if hp.class_names is None and getattr(dm, "class_names", None):
            hp.class_names = list(dm.class_names)
        if stage == "fit" and hp.backbone_checkpoint and not getattr(self, "_backbone_loaded", False):
            rep = load_backbone(self.backbone_body(), hp.backbone_checkpoint, hp.model_name)
            self._backbone_loaded = True
            print(f"{self.body_what} {hp.model_name}: {rep['loaded']} tensors from {hp.backbone_checkpoint} "
                  f"({rep['left_out']} of the file left out: head/final norm)")

    def on_train_epoch_end(self) -> None:
        log_skipped_reasons(self)
