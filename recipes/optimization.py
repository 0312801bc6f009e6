"""Optimizer and learning-rate schedule of the recipes: AdamW over timm's parameter groups (no weight decay on
norms, biases and the names ``no_weight_decay()`` lists, optional layer-wise LR decay), a per-step warmup + cosine
schedule from torch's schedulers, and :class:`RecipeModule`, the task modules' base that wires them into
``configure_optimizers``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, SequentialLR


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that every module's ``no_weight_decay()`` lists, prefixed with the module's path:
    a backbone nested in a detection or segmentation model (``backbone.body.…``, ``encoder.model.…``)
    keeps its exclusions, not only the top-level model's."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names.update(f"{prefix}.{n}" if prefix else n for n in fn())
    return names


def build_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Parameter groups as timm makes them: no weight decay for 1-D params (norms, biases) and for the names
    that ``no_weight_decay()`` of the model or of any submodule lists (:func:`no_weight_decay_names`);
    optional layer-wise LR decay (needs ``model.group_matcher``)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    no_wd = no_weight_decay_names(model)
    if layer_decay is not None and hasattr(model, "group_matcher"):
        return param_groups_layer_decay(
            model, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=no_wd
        )
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_wd)


def build_optimizer(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layer_decay: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``build_param_groups(model, ...)`` (a group's ``lr_scale`` multiplies ``lr``)."""
    groups = build_param_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def cosine_warmup_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.01
) -> LRScheduler:
    """Per-step learning rate of each group's ``lr``: linear warmup over ``warmup_steps`` (step ``k`` runs at
    ``lr·(k+1)/(W+1)``), then cosine from ``lr`` down to ``min_lr_ratio·lr`` at ``total_steps``, held there
    afterwards.

    Built from torch's schedulers: ``SequentialLR`` of ``LinearLR`` (the warmup), ``CosineAnnealingLR`` (the
    decay, ``eta_min = min_lr_ratio·lr``) and ``ConstantLR`` (the hold), so a resumed run restores their state
    from the checkpoint like any torch scheduler. ``CosineAnnealingLR`` has one absolute floor for all groups:
    when the groups start at different rates (layer-wise LR decay), each group's floor must be ``min_lr_ratio``
    of its own rate, which no torch scheduler offers, so those optimizers get the same factors through
    ``LambdaLR`` instead."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    lrs = {g["lr"] for g in optimizer.param_groups}
    if len(lrs) > 1:
        return LambdaLR(optimizer, lambda step: _warmup_cosine_factor(step, total_steps, warmup_steps, min_lr_ratio))
    schedulers: list[LRScheduler] = []
    if warmup_steps:
        w = warmup_steps
        schedulers.append(LinearLR(optimizer, start_factor=1 / (w + 1), end_factor=w / (w + 1), total_iters=w - 1))
    schedulers.append(CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr_ratio * lrs.pop()))
    schedulers.append(ConstantLR(optimizer, factor=min_lr_ratio, total_iters=2**62))
    milestones = ([warmup_steps] if warmup_steps else []) + [total_steps]
    sched = CosineWarmupLR(optimizer, schedulers, milestones)
    sched.settings = (total_steps, warmup_steps, min_lr_ratio)
    return sched


class CosineWarmupLR(SequentialLR):
    """The ``SequentialLR`` of :func:`cosine_warmup_scheduler`. It also resumes checkpoints written while the
    schedule was a ``LambdaLR`` of the same factors (recipes before the move to torch's schedulers): their state
    only counts steps, so loading one replays that many steps from the start."""

    settings: tuple[int, int, float] = (1, 0, 0.01)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "_schedulers" in state_dict or "lr_lambdas" not in state_dict:
            return super().load_state_dict(state_dict)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        fresh = cosine_warmup_scheduler(self.optimizer, *self.settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": a replay, on purpose
            for _ in range(int(state_dict["last_epoch"])):
                fresh.step()
        self.__dict__.update(fresh.__dict__)
        return None


def _warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The factor :func:`cosine_warmup_scheduler` applies at ``step`` (for groups at different rates)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def total_training_steps(trainer: pl.Trainer) -> float:
    """Optimizer steps the fit will take, like ``trainer.estimated_stepping_batches`` but computed from a fresh
    ``datamodule.train_dataloader()``'s length: Lightning's property builds (and starts iterating) the fit
    loop's loader before a checkpoint's loader state is restored, which would break a mid-epoch resume."""
    dm = trainer.datamodule
    n = None
    if dm is not None:
        try:
            n = len(dm.train_dataloader())
        except TypeError:  # no __len__
            n = None
    if n is None:
        return trainer.estimated_stepping_batches
    lim = trainer.limit_train_batches
    n = int(n * lim) if isinstance(lim, float) else min(n, int(lim))
    per_epoch = math.ceil(n / max(1, trainer.accumulate_grad_batches))
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
    total = per_epoch * epochs if epochs is not None else math.inf
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        total = min(total, trainer.max_steps)
    return total


def adamw_cosine(
    module: pl.LightningModule,
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
    min_lr_ratio: float = 0.01,
    layer_decay: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
) -> dict[str, Any]:
    """``configure_optimizers`` result: AdamW + per-step cosine schedule over ``trainer.estimated_stepping_batches``.
    ``warmup`` < 1 is a fraction of the total steps, >= 1 a number of steps."""
    opt = build_optimizer(model, lr=lr, weight_decay=weight_decay, betas=betas, layer_decay=layer_decay)
    total = total_training_steps(module.trainer) if module._trainer is not None else 1000
    if not math.isfinite(total):
        raise ValueError(
            "the cosine schedule needs a finite number of steps: set trainer.max_steps or give the train data a length"
        )
    warm = int(warmup * total) if warmup < 1 else int(warmup)
    sched = cosine_warmup_scheduler(opt, int(total), warm, min_lr_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


class RecipeModule(pl.LightningModule):
    """Base of the task modules. Subclasses: set ``self.model`` (the network), call ``save_hyperparameters``
    with ``task`` among the hparams, and set ``monitor``/``monitor_mode``. Optimizer hparams read here (all
    optional): ``lr``, ``weight_decay``, ``warmup``, ``min_lr_ratio``, ``layer_decay``."""

    task: str = ""
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_cosine(
            self,
            self.model,
            lr=hp.get("lr", 1e-3),
            weight_decay=hp.get("weight_decay", 0.05),
            warmup=hp.get("warmup", 0.05),
            min_lr_ratio=hp.get("min_lr_ratio", 0.01),
            layer_decay=hp.get("layer_decay", None),
        )
