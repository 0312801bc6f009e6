"""Export a model (a zoo/timm name or any ``nn.Module``) to ONNX and verify the file in onnxruntime.

>>> from zoo.export import export_onnx
>>> report = export_onnx("nat_mini", "nat_mini.onnx", dynamic_size=True)
>>> print(report.summary())

What :func:`export_onnx` does:

1. builds the model (``timm.create_model``; an unknown name lists the close ones), loads an optional zoo
   checkpoint strictly (``.pth``/``.pt``/``.bin``/``.safetensors`` state dict in zoo layout, optionally wrapped
   in ``{"state_dict": ...}``), and picks the head: ``"logits"``, ``"pre_logits"`` (pooled features before
   the classifier) or ``"features"`` (the stage maps of ``features_only``, NCHW, strides 4/8/16/32);
2. exports with the reference/SDPA paths of :mod:`zoo.ops` (the dispatcher allows nothing else while
   exporting: no custom ops in the graph). While tracing, the mixers take their padded path at every size
   (:func:`zoo.ops.is_tracing`), so one graph serves every input size of the same regime (see below);
3. with ``exporter="auto"`` tries the TorchScript exporter first (fast, keeps the traced shape arithmetic)
   and falls back to the dynamo exporter (``torch.export``) when the first fails to export *or to verify*;
4. writes one self-contained ``.onnx`` file while the weights fit the 2 GB protobuf limit, else the graph
   plus one ``<name>.onnx.data`` file next to it (the dynamo exporter's default of a separate data file is
   overridden);
5. runs ``onnx.checker`` and then onnxruntime (CPU) on random inputs: two batch sizes when the batch is
   dynamic, and when H/W are dynamic sizes far from the export size (about 0.5x and 2x, and an odd,
   non-square size: :func:`default_check_sizes`); compares with PyTorch (fp32) and fails with
   :class:`ExportError` beyond ``atol + rtol·|ref|``.

Regimes: a few blocks choose their structure from the map size the way the official code does (CrossFormer
and Agent-Swin windows shrink to the whole map when the map is not larger than the group/window, and
Swin drops its shift there; NAT/DiNAT pad maps smaller than ``kernel·dilation``). While tracing, these
choices are written as arithmetic on the traced size (:mod:`zoo.ops.sizes`, :func:`zoo.ops.roll_map`), not
as Python branches, so one graph makes the right choice at every input size; padding, masks and crops are
in the graph at every size. The verification at far sizes is what shows it (and catches any graph that
silently isn't right, e.g. the dynamo exporter's trap with ``adaptive_avg_pool2d`` to a fixed size; the zoo
pools agents with matrices instead).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import ops

HEADS = ("logits", "pre_logits", "features")
EXPORTERS = ("auto", "torchscript", "dynamo")
_PROTOBUF_LIMIT = 2**31 - 2**26  # stay ~64 MiB under the 2 GiB protobuf limit (graph + metadata)


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not match PyTorch."""


@dataclass
class Check:
    """One onnxruntime-vs-PyTorch comparison: input shape, worst errors over all outputs."""

    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    error: str = ""  # onnxruntime failure (e.g. a reshape baked to the export size)

    def line(self) -> str:
        shp = "x".join(map(str, self.shape))
        if self.error:
            return f"  input {shp:<16} FAILED in onnxruntime: {self.error}"
        outs = ", ".join("x".join(map(str, s)) for s in self.output_shapes)
        return (f"  input {shp:<16} -> {outs:<24} max abs {self.max_abs:.2e}  max rel {self.max_rel:.2e}  "
                f"{'ok' if self.ok else 'MISMATCH'}")


@dataclass
class ExportReport:
    """What :func:`export_onnx` produced and how it was checked."""

    path: str
    model: str
    exporter: str  # "torchscript" or "dynamo": the exporter that produced the file
    opset: int
    head: str
    input_size: tuple[int, int, int]  # (C, H, W) of the export example
    dynamic_batch: bool
    dynamic_size: bool
    fp16: bool
    backend: str  # zoo.ops path forced while exporting ("sdpa" or "reference")
    input_names: list[str]
    output_names: list[str]
    file_size: int  # bytes, .onnx plus external data
    external_data: str | None  # name of the .onnx.data file, or None when self-contained
    export_seconds: float
    checks: list[Check] = field(default_factory=list)
    atol: float = 1e-4
    rtol: float = 1e-4
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (exporter, why it was rejected)
    verified: bool = False
    replaced_pools: int = 0  # nn.AdaptiveAvgPool2d(size > 1) exported as pooling-matrix products (dynamic H/W)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks), default=float("nan"))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_abs"], d["max_rel"], d["ok"] = self.max_abs, self.max_rel, self.ok
        return d

    def summary(self) -> str:
        dyn = [n for n, on in (("batch", self.dynamic_batch), ("H/W", self.dynamic_size)) if on]
        size = f"{self.file_size / 2**20:.1f} MiB" + (f" (+ {self.external_data})" if self.external_data else "")
        lines = [
            f"{self.model} -> {self.path}",
            f"  exporter {self.exporter}, opset {self.opset}, head {self.head}, input {self.input_size}, "
            f"dynamic {', '.join(dyn) or 'none'}, {'fp16' if self.fp16 else 'fp32'}, zoo.ops path {self.backend}",
            f"  {size}, exported in {self.export_seconds:.1f} s",
        ]
        if self.replaced_pools:
            lines.append(f"  {self.replaced_pools} AdaptiveAvgPool2d(size > 1) exported as pooling-matrix products")
        for exporter, why in self.attempts:
            lines.append(f"  (rejected {exporter}: {why})")
        if self.checks:
            lines.append(f"  onnxruntime vs PyTorch (pass: |a-b| <= {self.atol:g} + {self.rtol:g}·|b|):")
            lines += [c.line() for c in self.checks]
        elif not self.verified:
            lines.append("  not verified (verify=False)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- model
def resolve_model_name(name: str) -> str:
    """``name`` if timm knows it (after ``import zoo``), else a ValueError listing close names."""
    import timm
    from timm.models import is_model

    base = name.split(".", 1)[0]
    if is_model(base):
        return name
    from . import list_models

    zoo_names = list_models()
    close = difflib.get_close_matches(base, zoo_names, n=5, cutoff=0.5)
    close += [n for n in difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.75) if n not in close]
    hint = f"; did you mean {', '.join(close[:5])}?" if close else ""
    raise ValueError(f"unknown model {name!r}{hint} (zoo models: zoo.list_models(); any timm name works too)")


def load_state_dict_file(path: str | os.PathLike, model: str | None = None) -> dict[str, torch.Tensor]:
    """A zoo checkpoint as a state dict: ``.safetensors``, or ``torch.load(weights_only=True)`` of
    ``.pth/.pt/.bin``, unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}``. With ``model`` (a model
    name), a file whose zoo metadata names another model, or an official release file of another model, is
    refused (:func:`zoo.models._pretrained.check_weights_metadata`)."""
    from .models._pretrained import check_official_file_name, check_weights_metadata, file_metadata

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".ckpt":
        raise ValueError(
            f"{path.name} looks like a Lightning checkpoint: load it with recipes.checkpoint.load_model "
            f"(tools/export.py does this) and pass the model to export_onnx"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
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


def load_checkpoint_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with an error that names the mismatching keys and shapes."""
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
            f"the checkpoint does not fit {what} (a checkpoint of another architecture? an official file "
            f"that needs the family's converter, e.g. timm.create_model(name, pretrained=True)?); "
            + "; ".join(parts)
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


# -------------------------------------------------------------------------------------------- export
def _check_writable(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory; give a file name such as model.onnx")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as e:
        raise ValueError(f"cannot write the output path {str(path)!r}: {e.strerror or e}") from e


def _opset_hint(msg: str, opset: int) -> str | None:
    """A clear message when an exporter failed because the opset is too old for an op."""
    m = re.search(r"[Ss]upport for this operator was added in version (\d+)|try opset version (\d+)", msg)
    if m:
        need = int(m.group(1) or m.group(2))
        op = re.search(r"operator '([^']+)'|export of (\w+) in opset", msg)
        what = f"operator {op.group(1) or op.group(2)}" if op else "an operator of this model"
        return f"opset {opset} is too old: {what} needs opset >= {need}; export with opset >= {need} (default 18)"
    if re.search(r"opset.{0,40}(not supported|unsupported)|(not supported|unsupported).{0,60}opset", msg, re.I):
        return f"opset {opset} is too old for an operator of this model ({_short(msg)}); use the default 18"
    return None


def _short(msg: str, n: int = 300) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def _export_torchscript(mod, x, path, opset, names_in, names_out, dyn_axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape branches are expected; verification decides
        torch.onnx.export(
            mod, (x,), str(path), dynamo=False, opset_version=opset, input_names=names_in,
            output_names=names_out, dynamic_axes=dyn_axes or None, do_constant_folding=True,
        )


def _export_dynamo(mod, x, path, opset, names_in, names_out, dynamic_batch, dynamic_size, big):
    D = torch.export.Dim.DYNAMIC
    axes = {}
    if dynamic_batch:
        axes[0] = D
    if dynamic_size:
        axes[2], axes[3] = D, D
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            mod, (x,), None, dynamo=True, opset_version=opset, input_names=names_in, output_names=names_out,
            dynamic_shapes={"x": axes} if axes else None, verbose=False, optimize=True,
        )
    prog.save(str(path), external_data=big)
    _name_input_dims(path, {0: "batch", 2: "height", 3: "width"})


def _name_input_dims(path, labels: dict[int, str]) -> None:
    """Rename the dynamo exporter's symbolic input dims (``s0``, ``s1``...) to the names the TorchScript
    path writes (``batch``, ``height``, ``width``), everywhere the same symbol appears in the graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    mapping = {dims[i].dim_param: name for i, name in labels.items() if i < len(dims) and dims[i].dim_param}
    if not mapping:
        return
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]
    onnx.save_model(model, str(path))


def _write_final(tmp: Path, path: Path) -> str | None:
    """Move the exported file to ``path``: self-contained if it fits, else with one ``<name>.data`` file."""
    import onnx

    extra = [p for p in tmp.parent.iterdir() if p != tmp]
    for stale in (path, path.with_name(path.name + ".data")):
        if stale.exists():
            stale.unlink()
    if not extra:
        shutil.move(str(tmp), str(path))
        return None
    model = onnx.load(str(tmp), load_external_data=True)
    if model.ByteSize() < _PROTOBUF_LIMIT:
        onnx.save_model(model, str(path))
        return None
    data = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return data


def default_check_sizes(h: int, w: int, min_size: int = 32, multiple: int = 1) -> list[tuple[int, int]]:
    """The sizes an export with dynamic H/W is verified at: the export size, about half of it, twice it and an
    odd, non-square size in between (about ``0.75·h × 1.25·w``, both odd).

    A block that picks its structure from the map size (windows that shrink to small maps, groups that
    change) makes a different choice far from the export size, so the checks must reach there: sizes near
    the export size alone cannot see a graph that baked the example's choice. Sizes stay >= ``min_size``.
    ``multiple > 1``: the model only takes sizes divisible by it (e.g. smp segmentation models, whose input
    must be a multiple of the encoder's output stride): every size is rounded to a multiple instead (the
    odd one becomes ``(h + m, w + 2m)``)."""
    lo = max(min_size, 1)
    if multiple > 1:
        def mult(v: int) -> int:
            return max(multiple, -(-max(v, lo) // multiple) * multiple)

        sizes = [(h, w), (mult(h // 2), mult(w // 2)), (2 * h, 2 * w), (h + multiple, w + 2 * multiple)]
    else:
        def odd(v: int) -> int:
            v = max(v, lo)
            return v if v % 2 else v + 1

        half = (max(h // 2, lo), max(w // 2, lo))
        sizes = [(h, w), half, (2 * h, 2 * w), (odd(round(0.75 * h)), odd(round(1.25 * w)))]
    return list(dict.fromkeys(sizes))  # unique, in order


def required_input_multiple(module: nn.Module) -> int:
    """The size multiple a model insists on (1 when any size goes): smp models that check the input against
    ``encoder.output_stride`` (``requires_divisible_input_shape``)."""
    for m in module.modules():
        if getattr(m, "requires_divisible_input_shape", False):
            stride = getattr(getattr(m, "encoder", None), "output_stride", None)
            if stride:
                return int(stride)
    return 1


def verify_onnx(
    path: str | os.PathLike,
    module: nn.Module,
    shapes: Sequence[tuple[int, ...]],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    fp16: bool = False,
    seed: int = 0,
) -> list[Check]:
    """Run ``path`` in onnxruntime (CPU) on random inputs of each shape and compare with ``module`` (fp32).

    Pass criterion per element: ``|a - b| <= atol + rtol·|b|`` (as ``torch.allclose``). ``max_rel`` is
    ``max |a - b| / (|b| + atol)``. onnxruntime failures are recorded in :attr:`Check.error`.
    """
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 4  # failures are caught and reported per check
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            refs = [r.float().numpy() for r in _flatten(module(x))]
        try:
            outs = sess.run(None, {in_name: x.numpy().astype(np.float16 if fp16 else np.float32)})
        except Exception as e:  # a graph baked to the export size fails here (reshape/broadcast)
            checks.append(Check(tuple(shape), float("inf"), float("inf"), False, [], _short(e, 240)))
            continue
        if len(outs) != len(refs):
            checks.append(Check(tuple(shape), float("inf"), float("inf"), False, [],
                                f"{len(outs)} outputs, PyTorch gives {len(refs)}"))
            continue
        max_abs = max_rel = 0.0
        ok, err = True, ""
        for o, r in zip(outs, refs):
            o = o.astype(np.float32)
            if o.shape != r.shape:
                ok, err = False, f"output shape {o.shape} != PyTorch {r.shape}"
                max_abs = max_rel = float("inf")
                break
            d = np.abs(o - r)
            max_abs = max(max_abs, float(d.max(initial=0.0)))
            max_rel = max(max_rel, float((d / (np.abs(r) + atol)).max(initial=0.0)))
            ok = ok and bool(np.all(d <= atol + rtol * np.abs(r)))
        checks.append(Check(tuple(shape), max_abs, max_rel, ok, [tuple(o.shape) for o in outs], err))
    return checks


def export_onnx(
    model_or_name: str | nn.Module,
    path: str | os.PathLike,
    *,
    img_size: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    in_chans: int | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
    dynamic_size: bool = True,
    fp16: bool = False,
    head: str = "logits",
    exporter: str = "auto",
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    backend: str | None = None,
    verify: bool = True,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    verbose: bool = False,
) -> ExportReport:
    """Export a model to ONNX and verify it in onnxruntime; returns an :class:`ExportReport`.

    Args:
        model_or_name: a timm/zoo model name (``"nat_mini"``, ``"maxvit_tiny.official_in1k"``) or an
            ``nn.Module`` taking ``[B, C, H, W]`` (a classifier, an smp segmentation model, ...).
        path: the ``.onnx`` file to write (parent folders are created).
        img_size: export size (int or (H, W)); default the model's ``pretrained_cfg["input_size"]`` or 224.
        batch_size: batch of the export example (at least 2 when the batch is dynamic).
        in_chans: input channels; default from the model's cfg, else 3.
        opset: ONNX opset (default 18; the dynamo exporter needs >= 18).
        dynamic_batch, dynamic_size: make batch / H and W dynamic axes; both are verified at two values.
        fp16: export in float16 (model and input); checked against the fp32 PyTorch model (default
            tolerance 5e-2 instead of 1e-4).
        head: ``"logits"``, ``"pre_logits"`` or ``"features"`` (stage maps of ``features_only``, NCHW).
            For a module that is not a timm-style backbone only ``"logits"`` (its ``forward``) applies.
        exporter: ``"auto"`` (TorchScript, then dynamo if that fails to export or to verify),
            ``"torchscript"`` or ``"dynamo"``.
        checkpoint: a zoo state dict file loaded strictly (only with a model name).
        num_classes, pretrained, model_kwargs: passed to ``timm.create_model``.
        backend: zoo.ops path while exporting: ``"sdpa"`` or ``"reference"``; default ``"sdpa"`` for the
            TorchScript exporter and ``"reference"`` for dynamo (torch.export mis-tracks the strides of SDPA
            outputs with learnable biases).
        verify: run onnx.checker and onnxruntime (strongly recommended; the only guard against graphs that
            are silently wrong at other sizes).
        check_sizes: (H, W) sizes to verify when ``dynamic_size``; default the export size and a size that is
            not a multiple of 32 (:func:`default_check_sizes`), or another multiple of the stride for models
            that refuse other sizes (smp segmentation models, :func:`required_input_multiple`).
        atol, rtol: tolerance of the comparison (default 1e-4, fp16 5e-2).
        verbose: print the summary.
    Raises:
        ValueError: bad arguments (unknown model, checkpoint of another architecture, unwritable path, ...).
        ExportError: no exporter produced a file that matches PyTorch (the message lists each attempt).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if backend not in (None, "sdpa", "reference"):
        raise ValueError(f"backend must be 'sdpa' or 'reference' for export (portable paths), got {backend!r}")
    if not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset must be an int >= 7 (onnxruntime's oldest), got {opset!r}; default 18")
    if exporter == "dynamo" and opset < 18:
        raise ValueError(f"the dynamo exporter writes opset >= 18, got opset={opset}; use exporter='torchscript'")
    path = Path(path)
    _check_writable(path)

    if isinstance(model_or_name, str):
        model_name = model_or_name
        model = build_model(model_or_name, checkpoint=checkpoint, num_classes=num_classes, pretrained=pretrained,
                            model_kwargs=model_kwargs)
    elif isinstance(model_or_name, nn.Module):
        if checkpoint is not None:
            sd = load_state_dict_file(checkpoint)
            load_checkpoint_strict(model_or_name, sd, what=type(model_or_name).__name__)
        model = model_or_name
        model_name = getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    else:
        raise ValueError(f"model_or_name must be a model name or an nn.Module, got {type(model_or_name).__name__}")
    if head != "logits":
        need = "forward_head/forward_features" if head == "pre_logits" else "forward_intermediates"
        if not all(hasattr(model, a) for a in need.split("/")):
            raise ValueError(f"head={head!r} needs a timm-style backbone with {need}; {model_name} has none")

    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    c0, h0, w0 = cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        h0, w0 = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    c0 = in_chans or c0
    min_size = (cfg.get("min_input_size") or (3, 32, 32))[-1]

    was_training = model.training
    model.eval()
    ref = _Flat(HeadWrapper(model, head)).eval()
    mod, n_pools = replace_adaptive_pools(ref) if dynamic_size else (ref, 0)
    mod = copy.deepcopy(mod).half() if fp16 else mod
    dtype = torch.float16 if fp16 else torch.float32
    atol = atol if atol is not None else (5e-2 if fp16 else 1e-4)
    rtol = rtol if rtol is not None else (5e-2 if fp16 else 1e-4)

    with torch.no_grad():
        n_out = len(_flatten(ref(torch.zeros(batch_size, c0, h0, w0))))
    if head == "features":
        out_names = [f"features.{i}" for i in range(n_out)]
    else:
        out_names = ["output"] if n_out == 1 else [f"output.{i}" for i in range(n_out)]
    in_names = ["input"]
    dyn_axes: dict[str, dict[int, str]] = {}
    if dynamic_batch or dynamic_size:
        ax_in = {0: "batch"} if dynamic_batch else {}
        if dynamic_size:
            ax_in.update({2: "height", 3: "width"})
        dyn_axes["input"] = ax_in
        for n in out_names:  # output axes: batch, and any spatial dims when H/W are dynamic
            dyn_axes[n] = {0: "batch"} if dynamic_batch else {}
    if dynamic_size:
        with torch.no_grad():
            outs = _flatten(ref(torch.zeros(batch_size, c0, h0, w0)))
        for n, o in zip(out_names, outs):
            if o.dim() == 4:
                dyn_axes[n].update({2: f"{n}_height", 3: f"{n}_width"})

    if check_sizes:
        sizes = list(check_sizes)
    elif dynamic_size:
        sizes = default_check_sizes(h0, w0, min_size, multiple=required_input_multiple(ref))
    else:
        sizes = [(h0, w0)]
    batches = [1, 2] if dynamic_batch else [batch_size]
    shapes = [(batches[0], c0) + tuple(sizes[0])]
    shapes += [(b, c0) + tuple(sizes[0]) for b in batches[1:]]
    shapes += [(batches[-1], c0) + tuple(s) for s in sizes[1:]]

    n_bytes = sum(p.numel() * (2 if fp16 else p.element_size()) for p in model.parameters())
    big = n_bytes >= _PROTOBUF_LIMIT
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if exporter == "auto" and opset < 18:
        order = ["torchscript"]
    attempts: list[tuple[str, str]] = []
    # a batch of 1 in the example would be specialised by torch.export (0/1 specialisation): trace with >= 2
    example_batch = max(batch_size, 2) if dynamic_batch else batch_size
    x = torch.randn(example_batch, c0, h0, w0, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    x = x.to(dtype)
    try:
        for name in order:
            path_backend = backend or ("sdpa" if name == "torchscript" else "reference")
            tmpdir = Path(tempfile.mkdtemp(prefix=".zoo-export-", dir=path.parent))
            tmp = tmpdir / path.name
            try:
                t0 = time.perf_counter()
                try:
                    with torch.no_grad(), ops.use_backend(path_backend):
                        if name == "torchscript":
                            _export_torchscript(mod, x, tmp, opset, in_names, out_names, dyn_axes)
                        else:
                            _export_dynamo(mod, x, tmp, opset, in_names, out_names, dynamic_batch,
                                           dynamic_size, big)
                except Exception as e:
                    msg = str(e)
                    attempts.append((name, _opset_hint(msg, opset) or f"export failed: {type(e).__name__}: "
                                     f"{_short(msg)}"))
                    continue
                seconds = time.perf_counter() - t0
                external = _write_final(tmp, path)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            files = [path] + ([path.with_name(external)] if external else [])
            report = ExportReport(
                path=str(path), model=model_name, exporter=name, opset=opset, head=head,
                input_size=(c0, h0, w0), dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, fp16=fp16,
                backend=path_backend, input_names=in_names, output_names=out_names,
                file_size=sum(f.stat().st_size for f in files), external_data=external,
                export_seconds=seconds, atol=atol, rtol=rtol, attempts=list(attempts),
                replaced_pools=n_pools,
            )
            if not verify:
                return _done(report, verbose)
            import onnx

            try:
                onnx.checker.check_model(str(path), full_check=True)
            except Exception as e:
                attempts.append((name, f"onnx.checker failed: {_short(e)}"))
                continue
            report.checks = verify_onnx(path, ref, shapes, atol=atol, rtol=rtol, fp16=fp16, seed=seed + 1)
            report.verified = True
            if report.ok:
                return _done(report, verbose)
            bad = [c for c in report.checks if not c.ok]
            why = "; ".join(
                f"input {'x'.join(map(str, c.shape))}: " + (c.error or f"max abs {c.max_abs:.2e}, rel {c.max_rel:.2e}")
                for c in bad
            )
            attempts.append((name, f"onnxruntime does not match PyTorch: {why}"))
            if verbose:
                print(report.summary())
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".data").unlink(missing_ok=True)
        lines = "\n".join(f"  {n}: {why}" for n, why in attempts)
        raise ExportError(f"could not export {model_name} to a verified ONNX file (opset {opset}, "
                          f"dynamic batch={dynamic_batch}, H/W={dynamic_size}, head={head}):\n{lines}")
    finally:
        model.train(was_training)


def _done(report: ExportReport, verbose: bool) -> ExportReport:
    if verbose:
        print(report.summary())
    return report


def measure_latency(
    path: str | os.PathLike, module: nn.Module, shape: tuple[int, ...], *, runs: int = 10, warmup: int = 2,
    threads: int | None = None,
) -> tuple[float, float]:
    """Median CPU latency in ms of onnxruntime (``path``) and of PyTorch eager (``module``) on ``shape``."""
    import numpy as np
    import onnxruntime as ort

    threads = threads or torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(*shape)
    feed = {sess.get_inputs()[0].name: x.numpy().astype(np.float32)}

    def median_ms(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    ort_ms = median_ms(lambda: sess.run(None, feed))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            pt_ms = median_ms(lambda: module(x))
    finally:
        torch.set_num_threads(prev)
    return ort_ms, pt_ms


__all__ = [
    "EXPORTERS",
    "HEADS",
    "Check",
    "ExportError",
    "ExportReport",
    "HeadWrapper",
    "build_model",
    "default_check_sizes",
    "required_input_multiple",
    "export_onnx",
    "MatmulAdaptiveAvgPool2d",
    "load_checkpoint_strict",
    "load_state_dict_file",
    "measure_latency",
    "replace_adaptive_pools",
    "resolve_model_name",
    "verify_onnx",
]
