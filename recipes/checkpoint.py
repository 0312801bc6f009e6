"""Load the network out of a recipe checkpoint (any task) without the trainer.

Every recipe LightningModule saves ``task`` among its hyper-parameters and keeps its network at
``self.model``; ``load_model`` picks the module class by ``task``, rebuilds it from the saved hparams
and returns the network in eval mode.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

import torch
from torch import nn

__all__ = ["TASK_MODULES", "load_model", "module_class"]

# task -> "module:Class" (imported lazily: detection/segmentation pull in torchvision/smp)
TASK_MODULES: dict[str, str] = {
    "classification": "recipes.classification:ClassificationModule",
    "detection": "recipes.detection:DetectionModule",
    "segmentation": "recipes.segmentation:SegmentationModule",
}


def module_class(task: str) -> type:
    """The LightningModule class for ``task`` ('classification', 'detection', 'segmentation')."""
    if task not in TASK_MODULES:
        raise ValueError(f"unknown recipe task {task!r}; expected one of {sorted(TASK_MODULES)}")
    mod, cls = TASK_MODULES[task].split(":")
    return getattr(importlib.import_module(mod), cls)


def _img_size(hp: dict[str, Any], model: nn.Module) -> Any:
    for k in ("img_size", "image_size", "input_size", "crop_size"):
        if hp.get(k) is not None:
            return hp[k]
    cfg = getattr(model, "pretrained_cfg", None) or getattr(getattr(model, "encoder", None), "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return cfg["input_size"][-1]
    return None


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a recipe checkpoint.

    Returns ``(model.eval(), info)`` with info ``{task, model_name, num_classes, img_size, hparams}``.
    Raises FileNotFoundError / ValueError with what was wrong (missing file, not a recipe checkpoint,
    unknown task)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    # Lightning checkpoints hold plain containers + tensors (hparams may hold simple objects): trusted file.
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    hp = dict(ckpt.get("hyper_parameters") or {})
    task = hp.get("task")
    if task is None:
        raise ValueError(
            f"{path!r} has no 'task' in its hyper_parameters: not a recipe checkpoint (keys: {sorted(ckpt)[:8]})"
        )
    cls = module_class(task)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    init_hp = {k: v for k, v in hp.items() if (takes_any or k in params) and not k.startswith("_")}
    # never fetch pretrained weights when rebuilding: the checkpoint holds them
    for k in ("pretrained", "backbone_pretrained"):
        if k in init_hp:
            init_hp[k] = False
    module = cls(**init_hp)
    state = ckpt["state_dict"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    # EMA copies and metric states are allowed extras; the network itself must load fully
    missing = [k for k in missing if k.startswith("model.")]
    if missing:
        raise ValueError(f"checkpoint {path!r} does not fill the network: missing {missing[:8]}")
    model = module.model
    ema_state = {k[len("model_ema.module."):]: v for k, v in state.items() if k.startswith("model_ema.module.")}
    if ema_state and hp.get("eval_ema", True):
        model.load_state_dict(ema_state)
    info = {
        "task": task,
        "model_name": hp.get("model_name") or hp.get("backbone"),
        "num_classes": hp.get("num_classes"),
        "img_size": _img_size(hp, model),
        "hparams": hp,
    }
    return model.eval(), info
