"""Bits shared by the detection and segmentation recipes (private)."""

from __future__ import annotations

import lightning as L

from recipes.checkpoint import backbone_state_dict, load_backbone  # noqa: F401 - the recipes import them from here


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
