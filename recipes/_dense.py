"""Bits shared by the detection and segmentation recipes (private)."""

from __future__ import annotations

import lightning as L
from torch import nn


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


def backbone_state_dict(path: str, model_name: str) -> dict:
    """The backbone weights in ``path`` for ``model_name``, as a state dict in timm's layout (classifier head
    included when the file has one): a recipe checkpoint (``.ckpt`` from tools/train.py or tools/demo.py, e.g. the
    classification main job's best; read with ``weights_only=True``; its EMA weights when it kept them) or any
    state dict file timm loads (``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin``, zoo layout, optionally under
    ``state_dict`` / ``model``). A file of another model is refused."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path!r} does not exist")
    if p.suffix == ".ckpt":
        from recipes.checkpoint import read_recipe_checkpoint

        ckpt = read_recipe_checkpoint(p)
        hp = ckpt.get("hyper_parameters") or {}
        name = hp.get("model_name")
        if name is not None and name.split(".")[0] != model_name.split(".")[0]:
            raise ValueError(f"backbone checkpoint {path!r} is a {name} ({hp.get('task')} recipe), the backbone is "
                             f"{model_name}: give a checkpoint of {model_name} or set model_name={name}")
        if hp.get("task") not in (None, "classification"):
            raise ValueError(f"backbone checkpoint {path!r} is a {hp.get('task')} recipe checkpoint; give a "
                             "classification checkpoint or a timm state dict file")
        state = ckpt.get("state_dict") or {}
        prefix = "model_ema.module." if hp.get("eval_ema", True) and any(
            k.startswith("model_ema.module.") for k in state) else "model."
        sd = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sd:
            raise ValueError(f"{path!r} holds no network weights under 'state_dict' ('{prefix}*')")
        return sd
    from zoo.export import load_state_dict_file

    return load_state_dict_file(p, model=model_name)


def load_backbone(body: nn.Module, path: str, model_name: str) -> dict[str, int]:
    """Load :func:`backbone_state_dict` into a timm ``features_only`` model ``body`` (the FPN body of the detection
    recipe, smp's ``encoder.model``). Every backbone weight must come from the file (a missing or mis-shaped one
    raises ValueError naming them); weights the features model does not have (the classifier, the final norm)
    are left out. Returns ``{"loaded": n, "left_out": m}``."""
    sd = backbone_state_dict(path, model_name)
    target = body.model if hasattr(body, "model") and isinstance(body.model, nn.Module) else body
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs backbone {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or shapes:
        raise ValueError(
            f"backbone checkpoint {path!r} does not fit {model_name}'s features: "
            + (f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''} " if missing else "")
            + (f"shape mismatches {shapes[:4]}" if shapes else "")
            + " (a checkpoint of another model or of other settings?)")
    target.load_state_dict({k: sd[k] for k in own}, strict=True)
    return {"loaded": len(own), "left_out": len([k for k in sd if k not in own])}


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
