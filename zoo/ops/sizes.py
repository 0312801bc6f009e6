"""Trace-safe arithmetic on sizes, for blocks whose structure depends on the map size.

A size read from ``x.shape`` is a Python ``int`` in eager mode, a ``SymInt`` under ``torch.export`` /
``torch.compile`` with dynamic shapes, and a 0-d int64 tensor under the TorchScript ONNX exporter. A Python
branch on such a size (``if min(H, W) <= window: ...``) is decided once, at the example input, and baked
into an exported graph; the same choice written as arithmetic on sizes stays a function of the input.
These helpers do that arithmetic for all three kinds without ever converting a traced size to an ``int``
(which would bake it too). In eager mode they return plain ints, so the eager path costs nothing.

Example (CrossFormer's small-map fallback, :class:`zoo.models.crossformer.CrossFormerAttention`)::

    g = size_min(size_min(H, W), group)           # group size: the whole map when it is smaller
    i = 1 + (interval - 1) * greater(size_min(H, W), group)   # interval 1 (plain windows) on small maps

The module is also the one place that answers "is a graph being captured, and by what?":

- :func:`is_torchscript`: TorchScript tracing/scripting, or the TorchScript ONNX exporter
  (``torch.onnx.export(dynamo=False)``): sizes read from tensors may be traced, calls are recorded.
- :func:`is_tracing`: a graph is traced for EXPORT (the above, or ``torch.export`` and the dynamo ONNX
  exporter). Size-dependent Python branches must take their general path.
- :func:`is_capturing`: any graph capture (the above, or ``torch.compile``). Python-side caches, data-dependent
  checks (NaN screens) and opaque kernels (oneDNN primitives) stay out of the graph.

And :func:`pair` is the one ``(h, w)`` helper: plain numbers become ``int``, traced sizes are kept as they are.
"""

from __future__ import annotations

from typing import Any

import torch

Size = Any  # int | torch.SymInt | 0-d torch.Tensor


def pair(x: Size | tuple[Size, Size] | list[Size], name: str | None = None) -> tuple[Size, Size]:
    """``x`` as ``(h, w)``: a single size is repeated, a 2-sequence becomes a tuple.

    Plain numbers (ints, numpy ints, bools) are normalised with ``int()``; traced sizes (SymInts, tensors) are
    kept as they are, never ``int()``-ed (that would bake the example size into an exported graph). With
    ``name`` (how the caller's error calls the argument, e.g. ``"AgentAttention: train_size"``) both values must
    be positive: checked for plain ints only, a traced size cannot be checked without baking it.
    A sequence of another length raises ``ValueError``.
    """
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"{name or 'size'} must be {'a positive' if name else 'an'} int or (h, w) pair, got {x!r}")
        h, w = x
    else:
        h = w = x
    h = h if isinstance(h, (torch.Tensor, torch.SymInt)) else int(h)
    w = w if isinstance(w, (torch.Tensor, torch.SymInt)) else int(w)
    if name is not None and any(isinstance(v, int) and v < 1 for v in (h, w)):
        raise ValueError(f"{name} must be a positive int or (h, w) pair, got {x!r}")
    return h, w


def is_traced(*xs: Size) -> bool:
    """True if any of ``xs`` is a traced size (a SymInt or a tensor), not a plain Python int."""
    return any(isinstance(x, (torch.Tensor, torch.SymInt)) for x in xs)


_onnx_flags: tuple | None = None  # the two objects torch.onnx.is_in_onnx_export() reads, once found


def _in_onnx_export() -> bool:
    """``torch.onnx.is_in_onnx_export()`` without the two imports it runs on every call (the ops ask on every
    call; docs/bench_ops.md#capture-checks). Falls back to it where torch keeps its flags elsewhere."""
    global _onnx_flags
    if _onnx_flags is None:
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

            _onnx_flags = (GLOBALS, _flags) if hasattr(GLOBALS, "in_onnx_export") and hasattr(
                _flags, "_is_onnx_exporting") else ()
        except ImportError:
            _onnx_flags = ()
    if _onnx_flags:
        return _onnx_flags[0].in_onnx_export or _onnx_flags[1]._is_onnx_exporting
    return torch.onnx.is_in_onnx_export()


def is_torchscript() -> bool:
    """True while TorchScript traces or scripts (``torch.jit.trace``/``script``), the TorchScript ONNX exporter
    included (``torch.onnx.export(dynamo=False)``)."""
    if torch.compiler.is_compiling():  # dynamo (torch.compile, torch.export) is not TorchScript, and must not
        return False  # trace _in_onnx_export's import of torch internals
    return torch.jit.is_tracing() or _in_onnx_export() or torch.jit.is_scripting()


def is_tracing() -> bool:
    """True while a graph is traced for export: TorchScript (:func:`is_torchscript`) or ``torch.export`` (the
    dynamo ONNX exporter included).

    Size-dependent Python branches (pad or not, mask or not) must then take the general path: a branch taken
    on the example input's size is baked into the graph and gives wrong results at other sizes.
    """
    return is_torchscript() or torch.compiler.is_exporting()


def is_capturing() -> bool:
    """True during any graph capture: export (:func:`is_tracing`) or ``torch.compile``. Python-side caches,
    data-dependent checks and opaque kernels (oneDNN primitives) must then stay out of the graph."""
    # is_compiling first: true under torch.export too, so dynamo never traces the checks behind it. Written out
    # (not is_tracing()) because the ops ask on every call: each Python frame saved is a visible part of a tiny
    # op's cost (docs/bench_ops.md#capture-checks).
    # No torch.jit.is_scripting(): it is True only inside TorchScript-compiled code, never in this Python function.
    # torch._C._is_tracing is what torch.jit.is_tracing() returns outside TorchScript code, without its frame;
    # the ONNX flags are read here once found (_in_onnx_export finds them).
    if torch.compiler.is_compiling() or torch._C._is_tracing() or torch.compiler.is_exporting():
        return True
    flags = _onnx_flags
    return flags[0].in_onnx_export or flags[1]._is_onnx_exporting if flags else _in_onnx_export()


class DynamicSizeExportError(NotImplementedError):
    """``torch.export`` was asked for dynamic H/W on a block whose graph would silently specialise them."""


def refuse_symbolic_sizes(what: str, *sizes: Size) -> None:
    """Raise :class:`DynamicSizeExportError` if ``torch.export`` traces ``sizes`` symbolically (dynamic H/W).

    For blocks whose padding/partition shapes ``torch.export`` cannot keep symbolic: it would specialise
    them to the example size (``Dim.AUTO``/``Dim.DYNAMIC``: a graph that is silently wrong or refuses other
    sizes at run time) or fail with a constraint violation that does not say what to do. The TorchScript
    ONNX exporter keeps them dynamic, and ``tools/export.py`` verifies the file far from the export size.
    Static shapes (no dynamic H/W) are not affected: the sizes are then plain ints. Strict ``torch.export``
    (``strict=True``; also the dynamo ONNX exporter's second attempt) traces with dynamo, which shows a
    dynamic size as a plain int, so there every export through such a block is refused.
    """
    if not torch.compiler.is_exporting():
        return
    if torch.compiler.is_dynamo_compiling() or any(isinstance(s, torch.SymInt) for s in sizes):
        raise DynamicSizeExportError(
            f"{what}: torch.export cannot keep H/W dynamic through this block (its window padding and "
            f"partition reshapes would be specialised to the example size, giving a graph that is wrong or "
            f"refused at other sizes). For an ONNX file with dynamic H/W use `python tools/export.py <model> "
            f"-o model.onnx` (zoo.export.export_onnx: TorchScript exporter, checked in onnxruntime far from "
            f"the export size); for torch.export, pass static H/W (dynamic_shapes with the batch axis only)."
        )


def _traced_tensor(*xs: Size) -> bool:
    return any(isinstance(x, torch.Tensor) for x in xs)


def size_min(a: Size, b: Size) -> Size:
    """``min(a, b)`` for ints, SymInts (``torch.sym_min``) and 0-d tensors (``torch.minimum``)."""
    if _traced_tensor(a, b):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return torch.sym_min(a, b)


def size_max(a: Size, b: Size) -> Size:
    """``max(a, b)`` for ints, SymInts (``torch.sym_max``) and 0-d tensors (``torch.maximum``)."""
    if _traced_tensor(a, b):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return torch.sym_max(a, b)


def greater(a: Size, b: Size) -> Size:
    """``1 if a > b else 0`` for integer sizes, as arithmetic (``clamp(a - b, 0, 1)``): no branch, no guard."""
    return size_min(size_max(a - b, 0), 1)


__all__ = [
    "DynamicSizeExportError", "greater", "is_capturing", "is_torchscript", "is_traced", "is_tracing", "pair",
    "refuse_symbolic_sizes", "size_max", "size_min",
]
