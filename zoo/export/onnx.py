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
import json
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
from ._extras import require_extra
from .resources import embedded_data_hint

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
    rel_l2: float | None = None  # int8 checks: ||a - b|| / ||b|| over each output (worst), the pass criterion
    top1_agree: float | None = None  # int8 checks of [B, classes] outputs: share of rows with the same argmax

    def line(self) -> str:
        shp = "x".join(map(str, self.shape))
        if self.error:
            return f"  input {shp:<16} FAILED in onnxruntime: {self.error}"
        outs = ", ".join("x".join(map(str, s)) for s in self.output_shapes)
        extra = "" if self.rel_l2 is None else f"  rel L2 {self.rel_l2:.2e}"
        extra += "" if self.top1_agree is None else f"  top-1 agree {100 * self.top1_agree:.0f}%"
        return (f"  input {shp:<16} -> {outs:<24} max abs {self.max_abs:.2e}  max rel {self.max_rel:.2e}{extra}  "
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
    precision: str = "fp32"  # "fp32", "fp16", "int8-dynamic" or "int8-static"
    metadata: dict[str, Any] = field(default_factory=dict)  # what read_metadata(path) returns
    int8_tol: float | None = None  # int8: pass criterion rel L2 <= int8_tol (see export_onnx)
    fp32_file_size: int | None = None  # int8: size of the verified fp32 file it was quantized from
    fp32_checks: list[Check] = field(default_factory=list)  # int8: the fp32 file's checks before quantizing
    optimized_path: str | None = None  # onnxruntime's optimised graph, when asked for
    optimized_checks: list[Check] = field(default_factory=list)
    quantization: dict[str, Any] = field(default_factory=dict)  # int8: what quantize_int8 did

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks), default=float("nan"))

    @property
    def ok(self) -> bool:
        return (bool(self.checks) and all(c.ok for c in self.checks)
                and all(c.ok for c in self.fp32_checks + self.optimized_checks))

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
            f"dynamic {', '.join(dyn) or 'none'}, {self.precision}, zoo.ops path {self.backend}",
            f"  {size}, exported in {self.export_seconds:.1f} s",
        ]
        if self.fp32_file_size:
            lines[-1] += (f"; the fp32 file was {self.fp32_file_size / 2**20:.1f} MiB "
                          f"({self.file_size / self.fp32_file_size:.2f}x)")
        if self.replaced_pools:
            lines.append(f"  {self.replaced_pools} AdaptiveAvgPool2d(size > 1) exported as pooling-matrix products")
        for exporter, why in self.attempts:
            lines.append(f"  (rejected {exporter}: {why})")
        if self.fp32_checks:
            lines.append(f"  fp32 file before quantizing, onnxruntime vs PyTorch (pass: |a-b| <= {self.atol:g} + "
                         f"{self.rtol:g}·|b|):")
            lines += [c.line() for c in self.fp32_checks]
        if self.checks:
            crit = (f"rel L2 = ||a-b||/||b|| <= {self.int8_tol:g}" if self.int8_tol is not None
                    else f"|a-b| <= {self.atol:g} + {self.rtol:g}·|b|")
            lines.append(f"  {self.precision} file, onnxruntime vs PyTorch fp32 (pass: {crit}):")
            lines += [c.line() for c in self.checks]
        elif not self.verified:
            lines.append("  not verified (verify=False)")
        if self.optimized_path:
            lines.append(f"  onnxruntime's optimised graph -> {self.optimized_path} (runs in onnxruntime only):")
            lines += [c.line() for c in self.optimized_checks]
        if self.metadata:
            lines.append("  metadata (zoo.export.read_metadata):")
            lines += [f"    {k}: {_short(json.dumps(v) if not isinstance(v, str) else v, 200)}"
                      for k, v in self.metadata.items()]
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
    require_extra("export", "zoo.export.verify_onnx", ("onnx", "onnxruntime"))
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


# ------------------------------------------------------------------------------ metadata and runners
METADATA_PREFIX = "zoo."
# values stored as plain strings; every other zoo.* value is JSON
_STRING_KEYS = {"model", "task", "head", "exporter", "precision", "version", "torch_version", "onnxruntime_version",
                "interpolation", "crop_mode", "input", "size_note", "tolerance", "ort_optimization"}
FASHION_MNIST_NPZ = Path(__file__).resolve().parents[1] / "data" / "fashion_mnist" / "fashion_mnist_subset.npz"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
INT8_MODES = ("dynamic", "static")
OPTIMIZATION_LEVELS = ("basic", "extended", "all")


def write_metadata(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Record ``meta`` in the file's ``metadata_props`` as ``zoo.<key>``: strings as they are, anything else as
    JSON (the convention of ``recipes.predictions.write_onnx_metadata``, which tools/predict.py reads). Keys
    already there are replaced, other entries kept; the graph and the weights are not touched."""
    require_extra("export", "zoo.export.write_metadata", ("onnx", "onnxruntime"))
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    props = {METADATA_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in [*kept, *props.items()]:
        model.metadata_props.add(key=k, value=v)
    tmp = path.with_name(f".{path.name}.meta-tmp")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``zoo.*`` metadata of an exported file as a dict (prefix dropped, JSON values decoded): ``model``,
    ``input_size`` [C, H, W], ``img_size``, ``dynamic_batch``, ``dynamic_hw``, ``min_size`` [H, W],
    ``verified_sizes`` [[H, W], ...], ``size_note``, ``mean``, ``std``, ``interpolation``, ``crop_pct``,
    ``crop_mode``, ``class_names`` / ``num_classes`` where known, ``precision``, ``exporter``, ``opset``, ``version``
    (zoo), ``torch_version``, ``onnxruntime_version``, ``tolerance`` and, for int8 files, ``quantization``.
    Entries other tools wrote without the prefix are returned under their full key, as strings."""
    require_extra("export", "zoo.export.read_metadata", ("onnx", "onnxruntime"))
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no ONNX file at {str(path)!r}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"cannot read {str(path)!r} as an ONNX file: {_short(e)}") from e
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if not p.key.startswith(METADATA_PREFIX):
            out[p.key] = p.value
            continue
        key = p.key[len(METADATA_PREFIX):]
        if key in _STRING_KEYS:
            out[key] = p.value
            continue
        try:
            out[key] = json.loads(p.value)
        except ValueError:
            out[key] = p.value
    return out


def check_input_size(meta: dict[str, Any], shape: Sequence[int]) -> None:
    """Raise ValueError when an input of ``shape`` ``[B, C, H, W]`` is outside what the file (its metadata,
    :func:`read_metadata`) accepts: another channel count, a size below ``min_size``, another size than a
    static export's, or a size that is not a multiple of ``size_multiple``. The graph itself would run at a
    size below the minimum and answer something; this is the guard that says no."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 4:
        raise ValueError(f"the model takes images as [batch, channels, height, width]; got an input of shape {shape}")
    _, c, h, w = shape
    c0, h0, w0 = (meta.get("input_size") or (None, None, None))[-3:]
    if c0 is not None and c != c0:
        raise ValueError(f"input {'x'.join(map(str, shape))} has {c} channels; the model takes {c0}")
    if meta.get("dynamic_hw") is False and h0 is not None and (h, w) != (h0, w0):
        raise ValueError(f"input {h}x{w}: this file was exported with a static size {h0}x{w0} and takes only that; "
                         f"resize the images to {h0}x{w0}, or export with dynamic H/W (tools/export.py without "
                         "--static-size)")
    mh, mw = (meta.get("min_size") or (0, 0))[-2:]
    if h < mh or w < mw:
        raise ValueError(f"input {h}x{w} is smaller than the model's minimum size {mh}x{mw} (zoo.min_size in the "
                         f"file's metadata); resize or pad the images to at least {mh}x{mw}")
    m = int(meta.get("size_multiple") or 1)
    if m > 1 and (h % m or w % m):
        raise ValueError(f"input {h}x{w}: this model takes sizes that are multiples of {m} (zoo.size_multiple); "
                         f"pad the images to {-(-h // m) * m}x{-(-w // m) * m}")


class OnnxRunner:
    """An exported file in onnxruntime that checks every input against the file's metadata first
    (:func:`check_input_size`: a clear ValueError instead of an answer outside the valid size range) and feeds
    it in the file's input type (float16 files take float32 arrays too).

    >>> run = OnnxRunner("m.onnx")
    >>> logits = run(x)[0]          # x: [B, C, H, W] numpy array or torch tensor
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        require_extra("export", "zoo.export.OnnxRunner", ("onnx", "onnxruntime"))
        import numpy as np
        import onnxruntime as ort

        self.path = str(path)
        self.meta = read_metadata(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or max(1, torch.get_num_threads())
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(self.path, opts, providers=list(providers))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def __call__(self, x: Any) -> list:
        import numpy as np

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        check_input_size(self.meta, x.shape)
        return self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})


def _preprocessing(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """mean, std, interpolation, crop_pct, crop_mode: ``overrides`` (e.g. a recipe's data settings) first,
    else the model's pretrained_cfg; only what is known."""
    out = {}
    for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
        v = overrides.get(k, cfg.get(k))
        if v is not None:
            out[k] = list(v) if isinstance(v, (tuple, list)) else v
    return out


def load_images(
    source: str | os.PathLike,
    count: int,
    input_size: Sequence[int],
    *,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    crop_mode: str = "center",
    offset: int = 0,
    seed: int = 0,
) -> Any:
    """``count`` images of ``source`` preprocessed the way the model expects (timm's eval transform: resize,
    crop, normalise) → float32 ``[count, C, H, W]``.

    ``source``: ``"fashion_mnist"`` (the embedded subset, data/fashion_mnist), an ``.npz`` (array ``x_train``,
    else ``x_test`` / ``x``: uint8 ``[N, H, W]`` or ``[N, H, W, C]``) or a folder searched recursively for image
    files. The images are a seeded random choice; ``offset`` skips the first ``offset`` of that order (the
    verification images after the calibration images are then different images)."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform

    c, h, w = (tuple(input_size) if len(input_size) == 3 else (3, *input_size))
    src = FASHION_MNIST_NPZ if str(source) == "fashion_mnist" else Path(source)
    need = offset + count
    if src.suffix == ".npz":
        if not src.is_file():
            raise ValueError(f"calibration data {str(src)!r} does not exist"
                             + (f" ({embedded_data_hint(src)})" if src == FASHION_MNIST_NPZ else ""))
        with np.load(src) as z:
            key = next((k for k in ("x_train", "x_test", "x") if k in z.files), None)
            if key is None:
                raise ValueError(f"{src.name} has no image array x_train / x_test / x (arrays: {z.files})")
            arr = z[key]
        order = np.random.default_rng(seed).permutation(len(arr))
        items: list[Any] = [arr[i] for i in order[offset:need]]
        n_found = len(arr)
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        order = np.random.default_rng(seed).permutation(len(files))
        items = [files[i] for i in order[offset:need]]
        n_found = len(files)
    else:
        raise ValueError(f"calibration data {str(source)!r}: expected 'fashion_mnist', an .npz file or a folder of "
                         f"images ({', '.join(_IMAGE_SUFFIXES)})")
    if n_found < need:
        raise ValueError(f"{str(source)!r} holds {n_found} images; {need} are needed ({offset} + {count}); give more "
                         "images or a smaller calibration count")
    tf = create_transform(input_size=(c, h, w), is_training=False, interpolation=interpolation, mean=tuple(mean),
                          std=tuple(std), crop_pct=crop_pct, crop_mode=crop_mode)
    out = []
    for item in items:
        try:
            img = Image.fromarray(item) if isinstance(item, np.ndarray) else Image.open(item)
            img = img.convert("RGB" if c == 3 else "L")
        except Exception as e:
            raise ValueError(f"cannot read image {item if isinstance(item, Path) else 'in ' + str(src)}: "
                             f"{_short(e)}") from e
        out.append(tf(img).numpy())
    return np.stack(out).astype(np.float32)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, mode: str, calibration: Any = None,
                  batch: int = 8) -> dict[str, Any]:
    """Quantize the fp32 file ``src`` to int8 at ``dst`` with onnxruntime's tools; returns what was done.

    Both modes first run ``quant_pre_process`` (ONNX shape inference and onnxruntime's graph optimisation; its
    symbolic shape inference is skipped: it does not complete on graphs with dynamic H/W).

    - ``"dynamic"``: ``quantize_dynamic``: the weights of MatMul/Gemm (the attention and MLP projections, most of
      the parameters) become int8; activations are quantized at run time from their observed range (uint8).
      Convolutions stay fp32. No calibration data needed.
    - ``"static"``: ``quantize_static`` in QDQ format: Conv, MatMul (with a constant weight only:
      ``MatMulConstBOnly``, so the attention products q·kᵀ and p·v stay float) and Gemm; weights int8 per
      channel, activations uint8 with ranges from MinMax calibration over ``calibration`` (float32
      ``[N, C, H, W]``, preprocessed as the model expects, e.g. :func:`load_images`, or a list of such arrays
      of different sizes), in batches of ``batch``.
    """
    require_extra("export", "zoo.export.quantize_int8", ("onnx", "onnxruntime"))
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {INT8_MODES}, got {mode!r}")
    if isinstance(calibration, (list, tuple)):
        calibration = [a for a in calibration if len(a)]
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise ValueError("static int8 needs calibration images: an image folder, an .npz or 'fashion_mnist' "
                         "(tools/export.py --calibration); or use --int8 dynamic, which needs none")
    info: dict[str, Any] = {"mode": mode, "tool": f"onnxruntime.quantization {ort.__version__}"}
    src, dst = Path(src), Path(dst)
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs every node it skips at WARNING
    try:
        with tempfile.TemporaryDirectory(prefix=".zoo-int8-", dir=dst.parent) as tmp:
            pre = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                info["pre_process"] = "quant_pre_process (ONNX shape inference + onnxruntime optimisation)"
            except Exception as e:  # quantize the exported graph as it is
                pre = src
                info["pre_process"] = f"skipped (quant_pre_process failed: {_short(e, 200)})"
            if mode == "dynamic":
                quantize_dynamic(str(pre), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=False,
                                 weight_type=QuantType.QInt8)
                info.update(op_types=["MatMul", "Gemm"], weights="int8 per tensor",
                            activations="uint8, range measured at run time")
            else:
                import onnx

                in_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

                arrays = calibration if isinstance(calibration, (list, tuple)) else [calibration]
                batches = [a[i:i + batch] for a in arrays for i in range(0, len(a), batch)]

                class _Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self._it = iter(batches)

                    def get_next(self) -> dict | None:
                        b = next(self._it, None)
                        return None if b is None else {in_name: b}

                quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
                info.update(op_types=["Conv", "MatMul (constant weight)", "Gemm"], format="QDQ",
                            weights="int8 per channel", activations="uint8, MinMax calibration",
                            calibration_images=int(sum(len(a) for a in arrays)),
                            calibration_sizes=[list(a.shape[-2:]) for a in arrays])
    finally:
        logging.disable(prev)
    return info


def verify_int8(
    path: str | os.PathLike,
    module: nn.Module,
    sizes: Sequence[tuple[int, int]],
    in_chans: int,
    *,
    images: Any = None,
    batch: int = 8,
    tol: float = 0.1,
    seed: int = 0,
) -> list[Check]:
    """Run an int8 file in onnxruntime next to ``module`` (fp32 PyTorch) at each (H, W) of ``sizes``.

    Inputs: ``images`` (float32 ``[N, C, H, W]``, preprocessed, resized bilinearly to each size) or, without
    them, ``batch`` random normal images. Pass criterion per check: the relative L2 error
    ``||a - b|| / ||b||`` of every output is at most ``tol`` (int8 rounding is spread over all values, so an
    elementwise tolerance would have to be loose everywhere); for ``[B, classes]`` outputs the share of rows
    whose top-1 class agrees is reported too."""
    import numpy as np

    run = OnnxRunner(path)
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for h, w in sizes:
        if images is not None:
            x = torch.from_numpy(_resize(images[:batch], (h, w)))
        else:
            x = torch.randn(batch, in_chans, h, w, generator=gen)
        with torch.no_grad():
            refs = [r.float().numpy() for r in _flatten(module(x))]
        try:
            outs = run.session.run(None, {run.input_name: x.numpy()})
        except Exception as e:
            checks.append(Check(tuple(x.shape), float("inf"), float("inf"), False, [], _short(e, 240)))
            continue
        rel = max_abs = max_rel = 0.0
        agree = None
        for o, r in zip(outs, refs):
            o = o.astype(np.float32)
            if o.shape != r.shape:
                checks.append(Check(tuple(x.shape), float("inf"), float("inf"), False, [],
                                    f"output shape {o.shape} != PyTorch {r.shape}"))
                break
            d = np.abs(o - r)
            max_abs = max(max_abs, float(d.max(initial=0.0)))
            max_rel = max(max_rel, float((d / (np.abs(r) + 1e-4)).max(initial=0.0)))
            rel = max(rel, float(np.linalg.norm(o - r) / max(float(np.linalg.norm(r)), 1e-12)))
            if r.ndim == 2 and r.shape[1] > 1 and agree is None:
                agree = float((o.argmax(1) == r.argmax(1)).mean())
        else:
            checks.append(Check(tuple(x.shape), max_abs, max_rel, rel <= tol, [tuple(o.shape) for o in outs], "",
                                rel_l2=rel, top1_agree=agree))
    return checks


def save_optimized(src: str | os.PathLike, dst: str | os.PathLike, level: str = "extended") -> None:
    """Write onnxruntime's optimised graph of ``src`` to ``dst`` (``SessionOptions.optimized_model_filepath``):
    constant folding and node fusions done once instead of at every session start. ``"basic"`` keeps standard
    ONNX ops; ``"extended"`` (default) adds onnxruntime's fused contrib ops, so the file runs in onnxruntime only;
    ``"all"`` also adds layout changes specific to the CPU it was made on. Load it with the same onnxruntime
    version on the same kind of machine."""
    require_extra("export", "zoo.export.save_optimized", ("onnx", "onnxruntime"))
    import onnxruntime as ort

    if level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization level must be one of {OPTIMIZATION_LEVELS}, got {level!r}")
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _to_fp16(path: Path) -> None:
    """Convert the fp32 file at ``path`` (and any external data next to it) to float16 in place with
    onnxruntime's converter (inputs and outputs float16 too). Converting the verified fp32 graph instead of
    tracing a ``.half()`` model: the TorchScript exporter writes SDPA with a bool mask (BiFormer's small-region
    routed attention) with float32 constants, which turns part of a half graph float32 and makes it invalid."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(path), load_external_data=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values beyond the float16 range are clamped (the check decides)
        model = convert_float_to_float16(model, keep_io_types=False)
    om = OnnxModel(model)
    om.topological_sort()  # the converter appends its Cast nodes out of order
    for extra in path.parent.iterdir():
        if extra != path:
            extra.unlink()
    if om.model.ByteSize() < _PROTOBUF_LIMIT:
        onnx.save_model(om.model, str(path))
    else:
        onnx.save_model(om.model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")


def _resize(images: Any, hw: tuple[int, int]) -> Any:
    """float32 ``[N, C, H, W]`` resized bilinearly to ``hw`` (as the int8 checks feed other sizes)."""
    import numpy as np
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if len(x) and tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)
    return x.numpy()


def _file_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


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
    int8: str | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_count: int = 64,
    int8_tol: float = 0.1,
    metadata: dict[str, Any] | None = None,
    optimized_path: str | os.PathLike | None = None,
    optimization_level: str = "extended",
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
        fp16: a float16 file (weights, input and output): the fp32 graph converted by onnxruntime's float16
            converter (valid wherever the fp32 graph is), checked against the fp32 PyTorch model at the same sizes
            (default tolerance 5e-2 instead of 1e-4).
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
        int8: ``"dynamic"`` or ``"static"``: the fp32 file is exported and verified as usual, then quantized with
            onnxruntime's tools (:func:`quantize_int8`) and verified again (:func:`verify_int8`: relative L2 error
            of the outputs at most ``int8_tol``, at the same sizes, on real images when ``calibration`` is given,
            else on random ones); ``path`` is then the int8 file.
        calibration: images for static int8 (and real verification images for either mode): ``"fashion_mnist"``,
            an ``.npz`` or an image folder (:func:`load_images`), preprocessed with the model's mean/std/crop.
            ``calibration_count`` images calibrate; the next 8 of the seeded order verify.
        metadata: entries that extend or override the file's ``zoo.*`` metadata (e.g. a recipe's
            ``class_names``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``task``); the preprocessing ones
            are also used for the calibration images.
        optimized_path: also write onnxruntime's optimised graph there (:func:`save_optimized` at
            ``optimization_level``), verified like the file itself.
        verbose: print the summary.

    The file carries ``zoo.*`` metadata (:func:`read_metadata`): model, export size, valid sizes (``min_size``
    from the model's ``pretrained_cfg["min_input_size"]``, else 32; ``verified_sizes``, the sizes checked against
    PyTorch; ``dynamic_hw``; no upper bound is claimed), preprocessing (mean, std, interpolation, crop), class
    names where known, precision, exporter, opset and the zoo/torch/onnxruntime versions. :class:`OnnxRunner`
    enforces the size range.
    Raises:
        ValueError: bad arguments (unknown model, checkpoint of another architecture, unwritable path, ...).
        ExportError: no exporter produced a file that matches PyTorch (the message lists each attempt).
    """
    require_extra("export", "zoo.export.export_onnx", ("onnx", "onnxruntime"))
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
    if int8 is not None and int8 not in INT8_MODES:
        raise ValueError(f"int8 must be one of {INT8_MODES} (or None), got {int8!r}")
    if int8 and fp16:
        raise ValueError("give fp16 or int8, not both")
    if int8 == "static" and calibration is None:
        raise ValueError("int8='static' needs calibration images: calibration='fashion_mnist', an .npz or an image "
                         "folder; int8='dynamic' needs none")
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization_level must be one of {OPTIMIZATION_LEVELS}, got {optimization_level!r}")
    path = Path(path)
    _check_writable(path)
    if optimized_path is not None:
        optimized_path = Path(optimized_path)
        if optimized_path.resolve() == path.resolve():
            raise ValueError("optimized_path must differ from path (the portable file is kept as well)")
        _check_writable(optimized_path)

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

    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    big = n_bytes >= _PROTOBUF_LIMIT
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if exporter == "auto" and opset < 18:
        order = ["torchscript"]
    attempts: list[tuple[str, str]] = []
    # a batch of 1 in the example would be specialised by torch.export (0/1 specialisation): trace with >= 2
    example_batch = max(batch_size, 2) if dynamic_batch else batch_size
    x = torch.randn(example_batch, c0, h0, w0, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    overrides = dict(metadata or {})
    prep = _preprocessing(cfg, overrides)
    images = None
    if int8 and calibration is not None:
        images = load_images(calibration, calibration_count + 8, (c0, h0, w0), **{
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
            "crop_pct": 1.0, "crop_mode": "center", **prep}, seed=seed)
    precision = f"int8-{int8}" if int8 else ("fp16" if fp16 else "fp32")
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
                    if fp16:
                        _to_fp16(tmp)
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
                replaced_pools=n_pools, precision=precision,
            )

            def finish(report: ExportReport) -> ExportReport:
                if int8:
                    _quantize_in_place(report, ref, sizes, c0, int8, images, calibration_count, int8_tol, seed)
                meta = _file_metadata(report, model, cfg, prep, overrides, min_size, sizes if verify else [],
                                      required_input_multiple(ref), calibration, head)
                write_metadata(path, meta)
                report.metadata = read_metadata(path)
                report.file_size = _file_size(path)
                if optimized_path is not None:
                    _optimize(report, optimized_path, optimization_level, ref, shapes, sizes, c0, images,
                              int8_tol, meta, verify, seed)
                return _done(report, verbose)

            if not verify:
                return finish(report)
            import onnx

            try:
                onnx.checker.check_model(str(path), full_check=True)
            except Exception as e:
                attempts.append((name, f"onnx.checker failed: {_short(e)}"))
                continue
            report.checks = verify_onnx(path, ref, shapes, atol=atol, rtol=rtol, fp16=fp16, seed=seed + 1)
            report.verified = True
            if report.ok:
                return finish(report)
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


def _quantize_in_place(report: ExportReport, ref: nn.Module, sizes: list[tuple[int, int]], c0: int, mode: str,
                       images: Any, calibration_count: int, tol: float, seed: int) -> None:
    """The verified fp32 file at ``report.path`` becomes the int8 file (:func:`quantize_int8`), verified with
    :func:`verify_int8`; ExportError (and no file) when it differs from PyTorch beyond ``tol``."""
    path = Path(report.path)
    if report.external_data:
        raise ExportError(f"{report.model}: int8 quantization of a file with external data (weights over 2 GB) is "
                          "not supported here; quantize it with onnxruntime.quantization directly")
    tmp = path.with_name(f".{path.stem}.int8-tmp.onnx")
    calib = None
    if images is not None:  # spread over the sizes the file claims: activation ranges differ with the size
        calib = [_resize(images[:calibration_count][k::len(sizes)], hw) for k, hw in enumerate(sizes)]
    try:
        info = quantize_int8(path, tmp, mode, calibration=calib)
        report.fp32_checks, report.fp32_file_size = report.checks, report.file_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    report.file_size = _file_size(path)
    report.int8_tol = tol
    report.quantization = info
    if not report.verified:
        return
    verify_images = images[calibration_count:] if images is not None else None
    report.checks = verify_int8(path, ref, sizes, c0, images=verify_images, tol=tol, seed=seed + 2)
    info["verified_on"] = "images after the calibration ones" if verify_images is not None else "random images"
    if not all(c.ok for c in report.checks):
        bad = "; ".join(f"input {'x'.join(map(str, c.shape))}: " + (c.error or f"rel L2 {c.rel_l2:.3f}")
                        for c in report.checks if not c.ok)
        path.unlink(missing_ok=True)
        raise ExportError(f"the {mode} int8 file of {report.model} differs from PyTorch beyond rel L2 {tol:g}: {bad}. "
                          "Try the other int8 mode, more or more typical calibration images, or fp16")


def _file_metadata(report: ExportReport, model: nn.Module, cfg: dict[str, Any], prep: dict[str, Any],
                   overrides: dict[str, Any], min_size: int, sizes: list[tuple[int, int]], multiple: int,
                   calibration: Any, head: str) -> dict[str, Any]:
    """The ``zoo.*`` entries of an exported file (see :func:`read_metadata`)."""
    import onnxruntime as ort

    from . import __version__

    c0, h0, w0 = report.input_size
    min_hw = list((cfg.get("min_input_size") or (c0, min_size, min_size))[-2:])
    if not report.dynamic_size:
        min_hw = [h0, w0]
    verified = [list(s) for s in sizes] if report.verified else []
    if not report.dynamic_size:
        note = f"static H/W: takes {h0}x{w0} only"
    elif verified:
        note = (f"dynamic H/W: the graph takes any size >= {min_hw[0]}x{min_hw[1]}; checked against PyTorch at "
                f"{', '.join(f'{h}x{w}' for h, w in verified)}; no upper bound was checked")
    else:
        note = f"dynamic H/W, not verified: sizes >= {min_hw[0]}x{min_hw[1]} are accepted"
    meta: dict[str, Any] = {"model": report.model, "head": head}
    if head == "logits" and getattr(model, "num_classes", 0) and hasattr(model, "pretrained_cfg"):
        meta["task"] = "classification"
        meta["num_classes"] = int(model.num_classes)
    meta.update({
        "input_size": [c0, h0, w0], "img_size": h0 if h0 == w0 else [h0, w0],
        "dynamic_batch": report.dynamic_batch, "dynamic_hw": report.dynamic_size,
        "min_size": min_hw, "verified_sizes": verified, "size_note": note,
    })
    if multiple > 1:
        meta["size_multiple"] = multiple
    meta.update(prep)
    if prep.get("mean") is not None:
        meta["input"] = "normalized"
    meta.update({
        "precision": report.precision, "exporter": report.exporter, "opset": report.opset, "version": __version__,
        "torch_version": torch.__version__, "onnxruntime_version": ort.__version__,
    })
    if report.verified:
        meta["tolerance"] = (f"rel L2 <= {report.int8_tol:g} (int8)" if report.int8_tol is not None
                             else f"|a-b| <= {report.atol:g} + {report.rtol:g}*|b|")
    info = report.quantization
    if info:
        meta["quantization"] = {**info, **({"calibration": str(calibration)} if calibration is not None else {})}
    meta.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items() if v is not None})
    if isinstance(meta.get("class_names"), list):
        meta.setdefault("num_classes", len(meta["class_names"]))
    return meta


def _optimize(report: ExportReport, dst: Path, level: str, ref: nn.Module, shapes: list, sizes: list, c0: int,
              images: Any, tol: float, meta: dict[str, Any], verify: bool, seed: int) -> None:
    """onnxruntime's optimised graph of the final file at ``dst``, verified like the file, with its metadata."""
    dst.unlink(missing_ok=True)
    save_optimized(report.path, dst, level)
    report.optimized_path = str(dst)
    if verify:
        if report.int8_tol is not None:
            vimgs = images[-8:] if images is not None else None
            report.optimized_checks = verify_int8(dst, ref, sizes, c0, images=vimgs, tol=tol, seed=seed + 2)
        else:
            report.optimized_checks = verify_onnx(dst, ref, shapes, atol=report.atol, rtol=report.rtol,
                                                  fp16=report.fp16, seed=seed + 1)
        if not all(c.ok for c in report.optimized_checks):
            bad = "; ".join(f"input {'x'.join(map(str, c.shape))}: "
                            + (c.error or f"max abs {c.max_abs:.2e}") for c in report.optimized_checks if not c.ok)
            dst.unlink(missing_ok=True)
            raise ExportError(f"onnxruntime's optimised graph ({level}) of {report.model} differs from PyTorch: {bad}; "
                              "the unoptimised file is fine: use it, or a lower optimization level")
    write_metadata(dst, {**meta, "ort_optimization": level})


def _done(report: ExportReport, verbose: bool) -> ExportReport:
    if verbose:
        print(report.summary())
    return report


def measure_latency(
    path: str | os.PathLike, module: nn.Module, shape: tuple[int, ...], *, runs: int = 10, warmup: int = 2,
    threads: int | None = None,
) -> tuple[float, float]:
    """Median CPU latency in ms of onnxruntime (``path``) and of PyTorch eager (``module``) on ``shape``."""
    require_extra("export", "zoo.export.measure_latency", ("onnx", "onnxruntime"))
    import numpy as np
    import onnxruntime as ort

    threads = threads or torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(*shape)
    inp = sess.get_inputs()[0]
    feed = {inp.name: x.numpy().astype(np.float16 if inp.type == "tensor(float16)" else np.float32)}

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
