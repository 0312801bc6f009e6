"""The model side of an export: build a zoo/timm model by name, load a zoo checkpoint strictly, pick the head
(:class:`HeadWrapper`) and make ``nn.AdaptiveAvgPool2d`` export with dynamic H/W."""

from __future__ import annotations

import copy
import difflib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import ops
from .report import ExportError


def resolve_model_name(name: str) -> str:
    """``name`` if timm knows it (after ``import zoo``), else a ValueError listing close names."""
    import timm
    from timm.models import is_model

    base = name.split(".", 1)[0]
    if is_model(base):
        return name
    from .. import list_models

    zoo_names = list_models()
    close = difflib.get_close_matches(base, zoo_names, n=5, cutoff=0.5)
    close += [n for n in difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.75) if n not in close]
    hint = f"; did you mean {', '.join(close[:5])}?" if close else ""
    raise ValueError(f"unknown model {name!r}{hint} (zoo models: zoo.list_models(); any timm name works too)")


def load_state_dict_file(path: str | os.PathLike, model: str | None = None) -> dict[str, torch.Tensor]:
    """A zoo checkpoint as a state dict: ``.safetensors`` or ``.pth/.pt/.bin`` read by the zoo's one checkpoint
    reader (:func:`zoo.models.read_checkpoint`: ``weights_only=True``, pickled objects only with the explicit
    opt-in), unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}``. With ``model`` (a model name), a file
    whose zoo metadata names another model, or an official release file of another model, is refused
    (:func:`zoo.models._pretrained.check_weights_metadata`)."""
    from ..models import read_checkpoint
    from ..models._pretrained import check_official_file_name, check_weights_metadata, file_metadata

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".ckpt":
        raise ValueError(
            f"{path.name} looks like a Lightning checkpoint: load it with recipes.checkpoint.load_model "
            f"(tools/export.py does this) and pass the model to export_onnx"
        )
    try:
        sd: Any = read_checkpoint(path)
    except (ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f"cannot read checkpoint {str(path)!r} as a state dict: {e}") from e
    if model is not None:
        check_official_file_name(path, model)
        check_weights_metadata(file_metadata(path, sd), model, source=str(path))
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"checkpoint {str(path)!r} is not a state dict (name -> tensor)")
    return sd


_HINT = ("a checkpoint of another architecture? an official file that needs the family's converter, e.g. "
         "timm.create_model(name, pretrained=True)?")


def load_checkpoint_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str = "model",
                           source: str = "the checkpoint", hint: str = _HINT) -> None:
    """``load_state_dict(strict=True)`` with a ValueError that names the missing, unexpected and mis-shaped keys
    (``"<source> does not fit <what> (<hint>); missing keys: ..."``): the zoo's one strict loader (export,
    recipe checkpoints, backbone transfer)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {few(shapes)}")
        raise ValueError(
            f"{source} does not fit {what} ({hint}); " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)


def _classes_in(state_dict: dict[str, torch.Tensor], model: nn.Module) -> int | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier")
    w = state_dict.get(f"{clf}.weight") if isinstance(clf, str) else None
    return int(w.shape[0]) if w is not None and w.dim() >= 1 else None


def build_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """``timm.create_model(name)`` in eval mode, optionally with a zoo checkpoint loaded strictly (the number of
    classes is taken from the checkpoint's classifier unless ``num_classes`` is given)."""
    import timm

    name = resolve_model_name(name)
    kw = dict(model_kwargs or {})
    if num_classes is not None:
        kw["num_classes"] = num_classes
    sd = load_state_dict_file(checkpoint, model=name) if checkpoint is not None else None
    model = timm.create_model(name, pretrained=pretrained, **kw)
    if sd is not None:
        n = _classes_in(sd, model)
        if num_classes is None and n is not None and n != model.num_classes:
            model = timm.create_model(name, pretrained=False, **{**kw, "num_classes": n})
        load_checkpoint_strict(model, sd, what=f"{name}")
    return model.eval()


class HeadWrapper(nn.Module):
    """``forward(x)`` of the chosen head: logits, pre-logits features, or the stage maps (NCHW)."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor):
        if self.head == "pre_logits":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        if self.head == "features":
            return tuple(self.model.forward_intermediates(x, intermediates_only=True))
        return self.model(x)


class MatmulAdaptiveAvgPool2d(nn.Module):
    """Drop-in for ``nn.AdaptiveAvgPool2d(output_size)`` on ``[B, C, H, W]`` that exports with dynamic H/W: the
    pooling is two products with matrices built from the shape (:func:`zoo.ops.adaptive_avg_pool2d_matmul`).
    ``F.adaptive_avg_pool2d`` to a fixed size > 1 is refused by the TorchScript exporter and silently baked to
    the export size by the dynamo exporter (e.g. the PSP pooling of smp's UPerNet)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oh, ow = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        oh, ow = oh or x.shape[-2], ow or x.shape[-1]
        return ops.adaptive_avg_pool2d_matmul(x.permute(0, 2, 3, 1), (oh, ow)).permute(0, 3, 1, 2)


def replace_adaptive_pools(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ``nn.AdaptiveAvgPool2d`` to a size other than 1 replaced by
    :class:`MatmulAdaptiveAvgPool2d` (the model itself if it has none); returns (model, how many)."""
    def needs(m: nn.Module) -> bool:
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1))

    if not any(needs(m) for m in model.modules()):
        return model, 0
    model = copy.deepcopy(model)
    n = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if needs(child):
                setattr(parent, child_name, MatmulAdaptiveAvgPool2d(child.output_size))
                n += 1
    return model, n


def required_input_multiple(module: nn.Module) -> int:
    """The size multiple a model insists on (1 when any size goes): smp models that check the input against
    ``encoder.output_stride`` (``requires_divisible_input_shape``)."""
    for m in module.modules():
        if getattr(m, "requires_divisible_input_shape", False):
            stride = getattr(getattr(m, "encoder", None), "output_stride", None)
            if stride:
                return int(stride)
    return 1


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    raise ExportError(f"the model returns a {type(out).__name__}; ONNX outputs must be tensors (or lists of them)")


class _Flat(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        out = _flatten(self.inner(x))
        return out[0] if len(out) == 1 else tuple(out)
