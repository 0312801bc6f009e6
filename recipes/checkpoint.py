"""Load the network out of a recipe checkpoint (any task) without the trainer.

Every recipe LightningModule saves ``task`` among its hyper-parameters and keeps its network at
``self.model``; ``load_model`` picks the module class by ``task``, rebuilds it from the saved hparams
and returns the network in eval mode.

Checkpoints are read with ``torch.load(weights_only=True)`` (``read_recipe_checkpoint``): a recipe checkpoint
holds only containers, numbers, strings and tensors, so a file that needs other pickled objects is refused
(unpickling can run code) unless the caller opts in with ``ZOO_ALLOW_PICKLE=1`` or
``with zoo.models.allow_pickle():``. ``resume_checkpoint`` picks what a resume loads: ``last.ckpt``, or the
newest intact checkpoint when it is corrupt, or an error when there is nothing to resume.
``backbone_state_dict`` / ``load_backbone`` take a backbone's weights out of a recipe checkpoint or a state dict
file (the ``backbone_checkpoint`` of the detection and segmentation recipes). Every file is read by the zoo's one
reader (``zoo.models.read_checkpoint``) and every network loaded by its one strict loader
(``zoo.export.load_checkpoint_strict``: a missing, unexpected or mis-shaped weight is an error naming them).
``recipe_preprocessing`` tells what the run's data did to an image (mean/std, interpolation, crop, class names);
``save_timm_folder`` writes the trained network in timm's ``save_for_hf`` layout with that preprocessing, so
``timm.create_model("local-dir:<folder>", pretrained=True)`` and timm's scripts use it without extra flags.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from zoo.export import load_checkpoint_strict, load_state_dict_file

__all__ = [
    "TASK_MODULES",
    "NothingToResumeError",
    "backbone_state_dict",
    "load_backbone",
    "load_model",
    "module_class",
    "read_recipe_checkpoint",
    "recipe_preprocessing",
    "resume_checkpoint",
    "save_timm_folder",
]

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


class NothingToResumeError(FileNotFoundError):
    """A resume was asked for, but the run folder holds no intact checkpoint."""


def read_recipe_checkpoint(path: str | os.PathLike, allow_pickle: bool | None = None) -> dict[str, Any]:
    """The checkpoint dict, read on the CPU with ``weights_only=True`` through ``zoo.models.read_checkpoint``.

    Raises FileNotFoundError (no file) or ValueError: the file is unreadable (not a checkpoint, truncated,
    corrupt), or it holds pickled Python objects and pickle was not opted in (``allow_pickle``, default
    ``ZOO_ALLOW_PICKLE`` / ``zoo.models.allow_pickle()``)."""
    from zoo.models import read_checkpoint

    try:
        ckpt = read_checkpoint(path, allow_pickle=allow_pickle)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err.__cause__ or err))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(
            f"refused to load {os.fspath(path)!r}: it holds pickled Python objects{what}, and unpickling them can "
            "run code. Recipe checkpoints written by tools/train.py or tools/demo.py hold none, so this file was "
            "written by other code or modified. Only if you trust it: ZOO_ALLOW_PICKLE=1 or "
            "`with zoo.models.allow_pickle():`."
        ) from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def resume_checkpoint(ckpt_dir: str | os.PathLike) -> Path:
    """The checkpoint a resume of the run whose checkpoints are in ``ckpt_dir`` loads: ``last.ckpt`` when it
    reads back; otherwise (corrupt or refused) the newest other ``*.ckpt`` that does, with a warning naming
    what was skipped. Raises NothingToResumeError when no checkpoint reads back (e.g. the run was killed
    during its first checkpoint write), instead of letting the trainer start over."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / "last.ckpt"
    others = sorted((p for p in ckpt_dir.glob("*.ckpt") if p.name != last.name and p.is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True) if ckpt_dir.is_dir() else []
    candidates = ([last] if last.is_file() else []) + others
    skipped: list[str] = []
    for path in candidates:
        try:
            ckpt = read_recipe_checkpoint(path)
        except (ValueError, OSError) as err:
            skipped.append(f"{path.name}: {err}")
            continue
        if "loops" not in ckpt or "state_dict" not in ckpt:
            skipped.append(f"{path.name}: holds no trainer state (weights only), cannot resume from it")
            continue
        if skipped:
            warnings.warn(f"resuming from {path} (global step {ckpt.get('global_step')}) instead of a newer file "
                          "that could not be used: " + " | ".join(skipped), stacklevel=2)
        return path
    why = ("; skipped: " + " | ".join(skipped)) if skipped else (
        " (a run stopped before or during its first checkpoint write leaves none)")
    raise NothingToResumeError(
        f"nothing to resume: no intact checkpoint in {ckpt_dir}{why}. Start a new run instead (without "
        "--resume / --ckpt_path last)."
    )


def _under(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a recipe checkpoint (read with ``weights_only=True``, see module docstring).

    Returns ``(model.eval(), info)`` with info ``{task, model_name, num_classes, img_size, hparams}``; the model
    is moved to ``map_location`` (a device or device string). Raises FileNotFoundError / ValueError with what
    was wrong (missing file, unreadable file, pickled objects without opt-in, not a recipe checkpoint, unknown
    task)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    ckpt = read_recipe_checkpoint(path)
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
    # the network loads strictly from its own keys; EMA copies and metric states are other keys of the module
    model = module.model
    for prefix in ("model.", "model_ema.module."):
        weights = _under(ckpt["state_dict"], prefix)
        if prefix == "model." or (weights and hp.get("eval_ema", True)):
            load_checkpoint_strict(model, weights, what=f"the {task} network", source=f"checkpoint {path!r}",
                                   hint=f"its '{prefix}*' weights: written by other code or modified?")
    info = {
        "task": task,
        "model_name": hp.get("model_name") or hp.get("backbone"),
        "num_classes": hp.get("num_classes"),
        "img_size": _img_size(hp, model),
        "hparams": hp,
    }
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model = model.to(map_location)
    return model.eval(), info


def recipe_preprocessing(path: str | os.PathLike, info: dict[str, Any]) -> dict[str, Any]:
    """What a recipe checkpoint knows beyond the network: the task, the class names (the module's ``class_names``
    hparam, else the ``classes`` of the datamodule's .npz) and the preprocessing of its data (the datamodule's
    mean/std/interpolation; the recipes' eval transform resizes the whole image: crop_pct 1.0). ``info`` is the
    second value :func:`load_model` returns."""
    import numpy as np

    hp = info.get("hparams") or {}
    dm_hp = read_recipe_checkpoint(path).get("datamodule_hyper_parameters") or {}
    meta: dict[str, Any] = {"task": info.get("task")}
    names = hp.get("class_names")
    npz = dm_hp.get("path")
    if not names and isinstance(npz, str) and npz.endswith(".npz") and Path(npz).is_file():
        with np.load(npz) as z:
            names = [str(c) for c in z["classes"]] if "classes" in z.files else None
    if names:
        meta["class_names"] = list(names)
    defaults: dict[str, Any] = {}
    if info.get("task") in ("classification", None) and dm_hp:
        # a datamodule saves only the arguments it was given: what it left out, it ran with its defaults (the
        # eval transform resizes with "bilinear" unless told otherwise, whatever the model's own cfg says)
        from recipes.data.classification import ClassificationData

        params = inspect.signature(ClassificationData.__init__).parameters
        defaults = {k: params[k].default for k in ("mean", "std", "interpolation") if k in params}
    for key in ("mean", "std", "interpolation"):
        value = dm_hp.get(key, defaults.get(key))
        if value is not None:
            meta[key] = list(value) if isinstance(value, (tuple, list)) else value
    if info.get("task") in ("classification", None) and "mean" in meta:
        meta.update(crop_pct=1.0, crop_mode="center")
    return {k: v for k, v in meta.items() if v is not None}


def save_timm_folder(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write the network of a classification recipe checkpoint as a timm model folder (timm's ``save_for_hf``
    layout: ``model.safetensors`` + ``config.json``) whose ``pretrained_cfg`` holds the trained input size,
    mean/std, interpolation, crop (crop_pct 1.0, as the recipe evaluates), ``num_classes`` and ``label_names``.

    Then ``timm.create_model("local-dir:<folder>", pretrained=True)`` rebuilds it with those weights, and
    ``timm.data.resolve_model_data_config`` + ``create_transform`` (what timm's ``validate.py`` does) give the
    recipe's eval transform with no hand-typed ``--img-size/--mean/--std``. The same folder uploaded to the
    Hugging Face hub loads as ``hf-hub:<user>/<repo>``. Returns the folder.

    Detection and segmentation checkpoints are refused (their networks are torchvision/smp models, not timm
    models): export them with ``tools/export.py`` or take their backbone with the recipe's ``model.backbone``.
    """
    from timm.models import save_for_hf

    task = (read_recipe_checkpoint(path).get("hyper_parameters") or {}).get("task")
    if task != "classification":
        raise ValueError(
            f"{os.fspath(path)!r} is a {task} checkpoint; a timm model folder holds a timm classifier: "
            f"export the whole network with `python tools/export.py {os.fspath(path)} -o model.onnx`"
        )
    model, info = load_model(path)
    prep = recipe_preprocessing(path, info)
    size = info.get("img_size")
    size = (size, size) if isinstance(size, int) else tuple(size or model.pretrained_cfg["input_size"][-2:])
    data_config = {"input_size": (model.pretrained_cfg["input_size"][0], *size), "crop_pct": 1.0,
                   "crop_mode": "center"}
    for key in ("mean", "std", "interpolation"):
        if key in prep:
            data_config[key] = tuple(prep[key]) if isinstance(prep[key], list) else prep[key]
    model_config: dict[str, Any] = {}
    if prep.get("class_names"):
        model_config["label_names"] = list(prep["class_names"])
    # The size the network was built for (MaxViT's window and grid, Agent-* position and agent biases, DiNAT's
    # dilations follow it) is not the size it was trained at when the recipe built it at its default and fed it
    # other sizes: `model_args` makes timm rebuild the same network, while the data config above keeps the
    # trained size for the eval transform. Without it the folder would build another network (DiNAT: silently
    # other outputs; MaxViT/Agent-*: mis-shaped weights).
    built = getattr(model, "img_size", None)
    model_args = {"img_size": [int(s) for s in built]} if isinstance(built, (tuple, list)) and len(built) == 2 else None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: a file is in the way; give a folder name")
    save_for_hf(model, str(folder), model_config=model_config, model_args=model_args, data_config=data_config,
                safe_serialization=True)
    return folder


def backbone_state_dict(path: str, model_name: str) -> dict:
    """The backbone weights in ``path`` for ``model_name``, as a state dict in timm's layout (classifier head
    included when the file has one): a recipe checkpoint (``.ckpt`` from tools/train.py or tools/demo.py, e.g. the
    classification main job's best; read with ``weights_only=True``; its EMA weights when it kept them) or any
    state dict file timm loads (``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin``, zoo layout, optionally under
    ``state_dict`` / ``model``; :func:`zoo.export.load_state_dict_file`). A file of another model is refused."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path!r} does not exist")
    if p.suffix != ".ckpt":
        return load_state_dict_file(p, model=model_name)
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
    ema = hp.get("eval_ema", True) and any(k.startswith("model_ema.module.") for k in state)
    prefix = "model_ema.module." if ema else "model."
    sd = _under(state, prefix)
    if not sd:
        raise ValueError(f"{path!r} holds no network weights under 'state_dict' ('{prefix}*')")
    return sd


def load_backbone(body: nn.Module, path: str, model_name: str) -> dict[str, int]:
    """Load :func:`backbone_state_dict` into a timm ``features_only`` model ``body`` (the FPN body of the detection
    recipe, smp's ``encoder.model``). Every backbone weight must come from the file (a missing or mis-shaped one
    raises ValueError naming them); weights the features model does not have (the classifier, the final norm)
    are left out. Returns ``{"loaded": n, "left_out": m}``."""
    sd = backbone_state_dict(path, model_name)
    target = body.model if hasattr(body, "model") and isinstance(body.model, nn.Module) else body
    own = target.state_dict()
    load_checkpoint_strict(target, {k: v for k, v in sd.items() if k in own}, what=f"{model_name}'s features",
                           source=f"backbone checkpoint {path!r}",
                           hint="a checkpoint of another model or of other settings?")
    return {"loaded": len(own), "left_out": len([k for k in sd if k not in own])}
