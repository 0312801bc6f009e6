"""Dense layers with a fused activation (and, for convolutions, an eval-mode BatchNorm folded in).

``linear(x, weight, bias, act)`` is ``act(x @ weightᵀ + bias)`` on the last dim of ``x [..., C_in]``;
``conv2d(x, weight, bias, stride, padding, dilation, groups, act, bn)`` is ``act(bn(conv2d(x)))`` on
``x [B, C_in, H, W]`` (NCHW or channels-last; the output keeps the input's memory format), where ``bn`` is
an inference-mode BatchNorm given by its statistics (:class:`BatchNormStats`). ``act`` is one of
:data:`ACTIVATIONS`.

Paths:
- ``reference``: ``F.linear`` / ``F.conv2d`` → ``F.batch_norm(training=False)`` → the activation, in plain
  PyTorch (autograd, any device, ONNX).
- ``onednn``: one oneDNN primitive per call with the activation as a post-op (``torch.ops.mkldnn``), the
  BatchNorm folded into the weights (``w·γ/√(σ²+ε)``, ``(b - μ)·γ/√(σ²+ε) + β``). Saves the activation's
  and the BatchNorm's extra passes over memory (aten's tanh-GELU is slow on CPU), and oneDNN's fp32 GEMMs
  beat the MKL ones behind ``F.linear`` on the CPU measured (figures: docs/bench_ops.md#onednn-fused). CPU,
  fp32/bf16, inference only (no autograd: chosen only when no gradient is needed), never under CPU autocast
  (the reference then computes in the autocast dtype, as F.linear does), never while exporting or compiling
  (torch.compile fuses on its own), and not for linears of fewer than ``ONEDNN_MIN_MACS`` multiply-adds
  (oneDNN's per-call primitive setup then costs more than the GEMM). Values equal the reference up to float
  rounding (folding reorders the arithmetic).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _dispatch
from ._dispatch import Decision, decision, forced_backend, forced_now, register, select
from ._dispatch import needs_grad as _needs_grad
from .sizes import is_capturing, pair

ACTIVATIONS = ("none", "gelu", "gelu_tanh", "silu", "relu", "sigmoid")
# act -> (oneDNN post-op, its algorithm)
_ONEDNN_POST_OP = {
    "none": ("none", None),
    "gelu": ("gelu", "none"),  # erf GELU
    "gelu_tanh": ("gelu", "tanh"),
    "silu": ("swish", None),
    "relu": ("relu", None),
    "sigmoid": ("sigmoid", None),
}


class BatchNormStats(NamedTuple):
    """An inference-mode BatchNorm over channels: ``(x - mean) / sqrt(var + eps) · weight + bias``.
    ``weight``/``bias`` are None for a BatchNorm without affine parameters."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """Apply one of :data:`ACTIVATIONS` to ``x`` (plain PyTorch)."""
    if act == "none":
        return x
    if act == "gelu":
        return F.gelu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "silu":
        return F.silu(x)
    if act == "relu":
        return F.relu(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown activation {act!r}; choose one of {ACTIVATIONS}")


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: BatchNormStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an inference BatchNorm on the OUTPUT channels of a conv/linear into its ``weight [C_out, ...]``
    and ``bias [C_out]``: returns the new ``(weight, bias)``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1))).to(weight.dtype)
    return w, shift.to(weight.dtype)


_MKLDNN = torch.backends.mkldnn.is_available()
# oneDNN sets up a primitive on every call, so below about this many multiply-adds F.linear wins; smaller
# linears take the reference path. Measured in docs/bench_ops.md#onednn-min-macs.
ONEDNN_MIN_MACS = 1 << 22


def _onednn_supports(device: torch.device, dtype: torch.dtype, needs_grad=False, mixed=False, empty=False,
                     small=False, autocast=False, enabled=True, **_) -> list[str]:
    """Why the oneDNN path cannot run a call. ``mixed``: an argument is not a CPU tensor of ``dtype``; ``empty``:
    input or weight has no elements; ``small``: a linear of fewer than :data:`ONEDNN_MIN_MACS` multiply-adds;
    ``autocast``: CPU autocast is on; ``enabled``: ``torch.backends.mkldnn.enabled``."""
    # first, and alone: torch.compile then traces no torch.backends.* call (dynamo skips them), and an opaque
    # oneDNN call can never be part of an exported graph, whatever else the dispatcher decided
    if is_capturing():
        return ["graph capture (export or torch.compile): an opaque oneDNN call cannot be part of the graph"]
    if small and forced_backend() != "onednn":  # then the signature says nothing else (see linear())
        return [f"fewer than ONEDNN_MIN_MACS={ONEDNN_MIN_MACS} multiply-adds: oneDNN's per-call setup costs more "
                "than it saves (force onednn to run it)"]
    why = []
    if device.type != "cpu":
        why.append(f"CPU only (device {device.type})")
    if dtype not in (torch.float32, torch.bfloat16):
        why.append(f"float32/bfloat16 only (dtype {dtype})")
    if not _MKLDNN:
        why.append("torch built without oneDNN")
    elif not enabled:
        why.append("oneDNN disabled (torch.backends.mkldnn.enabled is False)")
    if needs_grad:
        why.append("no backward: a gradient is needed")
    # under CPU autocast F.linear/F.conv2d compute in the autocast dtype; the reference path keeps that
    if autocast:
        why.append("CPU autocast is on (the reference computes in the autocast dtype)")
    if mixed:
        why.append("an argument is not a CPU tensor of the input's dtype")
    if empty:
        why.append("empty input or weight")
    return why


def _signature(dtype: torch.dtype, tensors) -> dict:
    """What the oneDNN rule needs to know about a call (hashable: the dispatcher caches its decision on it)."""
    return {
        "needs_grad": _needs_grad(*tensors),
        "mixed": any(t is not None and (t.dtype != dtype or t.device.type != "cpu") for t in tensors),
        "empty": tensors[0].numel() == 0 or tensors[1].numel() == 0,
        "autocast": torch.is_autocast_enabled("cpu"),
        "enabled": torch.backends.mkldnn.enabled,
    }


# ----------------------------------------------------------------------------------------------- linear
@register("linear", "reference")
def linear_reference(x, weight, bias=None, act="none"):
    y = F.linear(x, weight, bias)
    return y if act == "none" else activation(y, act)


@register("linear", "onednn", supports=_onednn_supports)
def linear_onednn(x, weight, bias=None, act="none"):
    post_op, algorithm = _ONEDNN_POST_OP[act]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, act: str = "none"
) -> torch.Tensor:
    """``act(x @ weightᵀ + bias)``: ``x [..., C_in]``, ``weight [C_out, C_in]``, ``bias [C_out]`` →
    ``[..., C_out]``."""
    if act not in _ONEDNN_POST_OP:
        raise ValueError(f"linear: unknown activation {act!r}; choose one of {ACTIVATIONS}")
    if is_capturing():  # sizes must not be read into the key there (see select)
        _check_features(x, weight)
        return select("linear", x.device, x.dtype).fn(x, weight, bias, act)
    if x.numel() * weight.size(0) < ONEDNN_MIN_MACS:  # here the dispatch's cost is what matters: no frame spared
        key = (x.device, x.dtype, _dispatch._forced.get(), _dispatch.generation)
        d = _SMALL_LINEAR.get(key)
        if d is not None:
            _dispatch._last["linear"] = d
            try:
                y = F.linear(x, weight, bias)
            except RuntimeError:  # the same check as below, only when F.linear refused
                _check_features(x, weight)
                raise
            return y if act == "none" else activation(y, act)
        _check_features(x, weight)
        d, stable = linear_decision(x, weight, bias)
        if stable and d.impl.backend == "reference":  # oneDNN refuses small linears it is not forced onto
            if len(_SMALL_LINEAR) >= 64:
                _SMALL_LINEAR.clear()
            _SMALL_LINEAR[key] = d
        return d.impl.fn(x, weight, bias, act)
    _check_features(x, weight)
    return linear_decision(x, weight, bias)[0].impl.fn(x, weight, bias, act)


def _check_features(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features (shape {tuple(x.shape)}), weight expects "
            f"{weight.shape[-1]} (weight {tuple(weight.shape)})"
        )


# (device, dtype, use_backend's value, dispatcher generation) -> the Decision of linears below ONEDNN_MIN_MACS
_SMALL_LINEAR: dict[tuple, Decision] = {}


def linear_decision(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[Decision, bool]:
    """The eager decision for ``linear(x, weight, bias)`` (cached, remembered for ``last_path``) and whether it
    holds for every later call with the same input shape, device and dtype while the forced backend and the
    dispatcher's generation are unchanged (True for linears below ``ONEDNN_MIN_MACS``, which take the reference
    whatever else holds; a larger one also depends on autocast, the oneDNN switch and ``requires_grad``)."""
    forced, strict = forced_now()
    small = x.numel() * weight.shape[0] < ONEDNN_MIN_MACS
    if small and forced != "onednn":  # oneDNN refuses whatever else holds: one cheap key
        return decision("linear", x.device, x.dtype, forced, strict, small=True), True
    sig = _signature(x.dtype, (x, weight, bias))
    return decision("linear", x.device, x.dtype, forced, strict, small=small, **sig), False


# ----------------------------------------------------------------------------------------------- conv2d
def _conv_args(stride, padding, dilation):
    return [*pair(stride)], [*pair(padding)], [*pair(dilation)]


@register("conv2d", "reference")
def conv2d_reference(x, weight, bias, stride, padding, dilation, groups, act, bn):
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if bn is not None:
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return activation(y, act)


@register("conv2d", "onednn", supports=_onednn_supports)
def conv2d_onednn(x, weight, bias, stride, padding, dilation, groups, act, bn):
    if bn is not None:
        weight, bias = fold_batchnorm(weight, bias, bn)
    post_op, algorithm = _ONEDNN_POST_OP[act]
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, stride, dilation, groups, post_op, [], algorithm
    )


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    act: str = "none",
    bn: BatchNormStats | None = None,
) -> torch.Tensor:
    """``act(bn(conv2d(x, weight, bias)))`` on ``x [B, C_in, H, W]`` with symmetric zero ``padding``;
    ``weight [C_out, C_in / groups, kh, kw]``; ``bn`` an inference-mode BatchNorm over ``C_out`` or None.
    Returns ``[B, C_out, H', W']`` in the memory format of ``x``."""
    if act not in _ONEDNN_POST_OP:
        raise ValueError(f"conv2d: unknown activation {act!r}; choose one of {ACTIVATIONS}")
    if x.dim() != 4:
        raise ValueError(f"conv2d expects [B, C, H, W], got shape {tuple(x.shape)}")
    stride, padding, dilation = _conv_args(stride, padding, dilation)
    def signature() -> dict:
        sig = _signature(x.dtype, (x, weight, bias))
        if bn is not None:  # the statistics' gradients (a BatchNorm in training mode) need the reference path
            sig["needs_grad"] = sig["needs_grad"] or _needs_grad(bn.running_mean, bn.running_var, bn.weight, bn.bias)
        return sig

    impl = select("conv2d", x.device, x.dtype, signature)
    return impl.fn(x, weight, bias, stride, padding, dilation, groups, act, bn)
