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
"""

from __future__ import annotations

from typing import Any

import torch

Size = Any  # int | torch.SymInt | 0-d torch.Tensor


def pair(x: Size | tuple[Size, Size] | list[Size]) -> tuple[Size, Size]:
    """``x`` as ``(h, w)``: an int/traced size is repeated, a pair is returned as a tuple (never ``int()``-ed)."""
    return (x[0], x[1]) if isinstance(x, (tuple, list)) else (x, x)


def is_traced(*xs: Size) -> bool:
    """True if any of ``xs`` is a traced size (a SymInt or a tensor), not a plain Python int."""
    return any(isinstance(x, (torch.Tensor, torch.SymInt)) for x in xs)


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


__all__ = ["DynamicSizeExportError", "greater", "is_traced", "pair", "refuse_symbolic_sizes", "size_max", "size_min"]
