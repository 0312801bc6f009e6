"""Argument checks shared by the ops: one clear error per kind of bad input."""

from __future__ import annotations

import os

import torch

from .sizes import is_capturing, is_torchscript


def _checks_enabled(t: torch.Tensor) -> bool:
    if is_capturing():
        return False
    if os.environ.get("ZOO_CHECK_FINITE", "1") == "0":
        return False
    # A finiteness check syncs the device; on CUDA it is opt-in (ZOO_CHECK_FINITE=1 forces nothing extra).
    return t.device.type == "cpu" or os.environ.get("ZOO_CHECK_FINITE") == "1"


class NonFiniteError(ValueError):
    """NaN/Inf found by the finiteness screen of an op. ``op``: the op; ``input``: the input that held them.

    A model (:class:`zoo.models.Backbone`) catches it and raises it again naming the layer it came from and
    the likely causes (its input batch is checked at the stem, so it can tell the data from the weights)."""

    def __init__(self, message: str, op: str = "", input: str = ""):
        super().__init__(message)
        self.op = op
        self.input = input


def check_finite(op: str, **tensors: torch.Tensor | None) -> None:
    """Raise :class:`NonFiniteError` naming the first input that holds NaN or Inf (CPU; see ZOO_CHECK_FINITE)."""
    for name, t in tensors.items():
        if t is None or not t.is_floating_point() or not _checks_enabled(t):
            continue
        if not bool(torch.isfinite(t).all()):
            nan = int(torch.isnan(t).sum())
            raise NonFiniteError(
                f"{op}: input {name!r} {tuple(t.shape)} holds {nan} NaN and "
                f"{int((~torch.isfinite(t)).sum()) - nan} Inf values: the data, or the layer that computed "
                f"{name!r} (non-finite weights, or an overflow: float16 range, huge weights or inputs)",
                op=op, input=name,
            )


def checked_output(op: str, out: torch.Tensor, **inputs: torch.Tensor | None) -> torch.Tensor:
    """Return ``out``; if it holds NaN or Inf, raise naming the first non-finite input (CPU; see
    ZOO_CHECK_FINITE).

    Checking the (contiguous) output costs one pass over a tensor a third the size of q, k, v, which
    are often strided views; the inputs are only inspected when the output is not finite. Non-finite
    inputs reach the output (NaN propagates through the softmax and the products), so the error is the
    same one :func:`check_finite` on the inputs would raise. An output made non-finite by the op itself
    from finite inputs (e.g. a fully masked row) passes, as before.

    The screen is one reduction, ``out.sum()``: it is NaN/Inf whenever an element is (a finite sum that
    overflows only costs the input check, which then finds nothing); ``isfinite().all()`` takes 4-5 passes.
    """
    if out.is_floating_point() and _checks_enabled(out):
        total = out.sum(dtype=torch.float32) if out.element_size() < 4 else out.sum()  # fp16 overflows early
        if not bool(torch.isfinite(total)):
            check_finite(op, **inputs)
    return out


def empty_batch_output(shape: tuple[int, ...], *inputs: torch.Tensor | None) -> torch.Tensor | None:
    """For an op whose inputs hold no elements (an empty batch, ``B = 0``): its output, an empty tensor of
    ``shape``, without running a backend; else None (run the op).

    One guard at each op's entry instead of one per backend: the kernels reshape with inferred sizes (a
    ``-1`` is ambiguous next to a 0), and the Triton/NATTEN launches on CUDA take no empty grids. The output
    stays in the autograd graph of the inputs (``+ 0·Σinput``, a sum over nothing), so a training step on an
    empty batch gives zero gradients, not missing ones (DDP needs every parameter to receive one).
    """
    first = inputs[0]
    if first is None or first.numel() != 0 or is_torchscript():
        return None
    out = first.new_zeros(shape)
    for t in inputs:
        if t is not None and t.is_floating_point() and t.requires_grad:
            out = out + t.sum().to(out.dtype) * 0
    return out


def check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int, layout: str) -> None:
    """Check rank, matching batch/head dims and head dims of q, k, v (layout names the dims)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != ndim:
            raise ValueError(f"{op}: {name} must be {layout}, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{op}: q and k need the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"{op}: q, k, v need one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
