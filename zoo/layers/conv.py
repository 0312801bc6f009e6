"""Convolutions with TensorFlow 'SAME' padding, and BatchNorm + activation, for NCHW maps ``[B, C, H, W]``.

TF 'SAME' pads a stride-``s`` conv so that the output has ``ceil(H / s)`` rows, putting the odd pixel of
padding at the bottom/right: total ``max((ceil(H/s) - 1)·s + (k-1)·d + 1 - H, 0)``, ``total // 2`` before.
For stride 1 and an odd effective kernel this is plain symmetric padding; otherwise it depends on the input
size and is applied at run time (:class:`Conv2dSame`, :class:`AvgPool2dSame`), as in timm's port of the TF
MaxViT/EfficientNet weights (``create_conv2d(..., padding='same')``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from .. import ops
from .mlp import activation_name, get_act_layer, run_modules

_PADDINGS = ("same", "symmetric", "valid")


def same_padding(size: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Total TF 'SAME' padding along one axis of length ``size`` (``total // 2`` goes before).

    Written without branches on ``size`` where possible, so exported graphs keep H, W symbolic.
    """
    span = (kernel_size - 1) * dilation + 1
    total = ((size + stride - 1) // stride - 1) * stride + span - size
    if span >= stride:  # size - (out - 1)·stride is in [1, stride]: never negative
        return total
    return torch.sym_max(total, 0)


def pad_same(
    x: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    value: float = 0.0,
) -> torch.Tensor:
    """Pad the last two dims of ``x`` (``[..., H, W]``) with TF 'SAME' padding for the given window."""
    ph = same_padding(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    pw = same_padding(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


def is_static_same(kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1, dilation=1) -> bool:
    """True when 'SAME' padding does not depend on the input size (stride 1, even ``(k-1)·d``)."""
    k, s, d = ops.pair(kernel_size), ops.pair(stride), ops.pair(dilation)
    return all(si == 1 and (di * (ki - 1)) % 2 == 0 for ki, si, di in zip(k, s, d))


def symmetric_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """PyTorch-style symmetric padding ``((s - 1) + d·(k - 1)) // 2`` (timm's default ``padding=''``)."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' padding computed from the input size at run time (NCHW).

    Parameters and state-dict keys are those of ``nn.Conv2d`` (``weight``, ``bias``); ``padding`` is 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def create_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    padding: str | int = "same",
    device=None,
    dtype=None,
) -> nn.Conv2d:
    """A 2-D conv with ``padding`` = ``"same"`` (TF; static when possible, else :class:`Conv2dSame`),
    ``"symmetric"`` (PyTorch ``((s-1) + d·(k-1)) // 2``), ``"valid"`` (0), or an int."""
    dd = {"device": device, "dtype": dtype}
    if isinstance(padding, str):
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS} or an int, got {padding!r}")
        if padding == "same" and not is_static_same(kernel_size, stride, dilation):
            return Conv2dSame(in_channels, out_channels, kernel_size, stride, dilation, groups, bias, **dd)
        pad = 0 if padding == "valid" else symmetric_padding(kernel_size, stride, dilation)
    else:
        pad = int(padding)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, dilation, groups, bias, **dd)


class AvgPool2dSame(nn.Module):
    """Average pooling with TF 'SAME' padding (NCHW), as timm's ``AvgPool2dSame``.

    The padding is zeros and counts in the average (``count_include_pad=True``): that is timm's port, not
    TF (which excludes it); it only matters for odd input sizes.
    """

    def __init__(self, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None):
        super().__init__()
        self.kernel_size = ops.pair(kernel_size)
        self.stride = ops.pair(stride) if stride is not None else self.kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride)
        return F.avg_pool2d(x, self.kernel_size, self.stride, 0, False, True)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def create_avg_pool2d(kernel_size: int = 2, padding: str = "same") -> nn.Module:
    """Downsampling average pooling (stride = kernel) with ``"same"`` padding (TF, :class:`AvgPool2dSame`)
    or ``"symmetric"`` (``nn.AvgPool2d(k, k, ceil_mode=True)``: odd sizes give ``ceil(H/k)`` rows like the
    matching strided conv, the partial last window averaging only real pixels; timm's non-TF configs use
    ``ceil_mode=False`` and cannot run odd sizes, even sizes agree)."""
    if padding not in ("same", "symmetric"):
        raise ValueError(f"pool padding must be 'same' or 'symmetric', got {padding!r}")
    if padding == "same" and kernel_size > 1:
        return AvgPool2dSame(kernel_size, kernel_size)
    return nn.AvgPool2d(kernel_size, kernel_size, 0, ceil_mode=True)


class BatchNormAct2d(nn.BatchNorm2d):
    """``BatchNorm2d`` followed by an activation, on ``[B, C, H, W]``.

    State-dict keys are exactly ``nn.BatchNorm2d``'s (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``), as timm's ``BatchNormAct2d``. The TF MaxViT port uses
    ``eps=1e-3`` and ``act_layer="gelu_tanh"``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        act_layer: str | Callable[[], nn.Module] | None = "gelu_tanh",
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.act = get_act_layer(act_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def _hooked(*modules: nn.Module | None) -> bool:
    """Whether a forward hook would be skipped by fusing these sibling modules into one op call (a conv and the
    BatchNorm after it belong to their parent, so the fused call cannot run as either module)."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in modules)


def _plain_conv(conv: nn.Module) -> bool:
    return type(conv) in (nn.Conv2d, Conv2dSame) and conv.padding_mode == "zeros" and not isinstance(
        conv.padding, str
    )


def _conv_op(conv: nn.Conv2d, x: torch.Tensor, act: str, bn: ops.BatchNormStats | None = None) -> torch.Tensor:
    """``conv``'s arithmetic as one :func:`zoo.ops.conv2d` call (a :class:`Conv2dSame` pads first)."""
    padding = conv.padding
    if type(conv) is Conv2dSame:
        x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
        padding = 0
    return ops.conv2d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups, act, bn)


def conv_act(conv: nn.Module, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """``act(conv(x))`` on ``[B, C, H, W]`` through :func:`zoo.ops.conv2d` (one fused call where a fast path
    exists) when ``conv`` is a plain ``nn.Conv2d``/:class:`Conv2dSame` and ``act`` a plain activation, none
    hooked; otherwise the modules run as they are."""
    name = activation_name(act)
    if not _plain_conv(conv) or name is None or _hooked(conv, act):
        return run_modules(x, conv, act)
    return _conv_op(conv, x, name)


def conv_norm_act(
    conv: nn.Module, norm: nn.Module, x: torch.Tensor, act: nn.Module | None = None
) -> torch.Tensor:
    """``act(norm(conv(x)))`` for a conv followed by a :class:`BatchNormAct2d` or ``nn.BatchNorm2d`` (and an
    optional separate activation module ``act``), on ``[B, C, H, W]``.

    With the norm in eval mode (running statistics), a plain ``nn.Conv2d``/:class:`Conv2dSame`, plain
    activations (at most one that is not identity) and no hooks, it is one :func:`zoo.ops.conv2d` call with the
    BatchNorm given as statistics: the CPU inference path folds it into the weights and fuses the activation
    (oneDNN); the reference path computes conv → BatchNorm → activation as the modules do. Otherwise
    (training, custom modules, hooks) the modules run as they are.
    """
    inner = norm.act if type(norm) is BatchNormAct2d else None
    name = activation_name(act if act is not None else inner)
    fusable = (
        type(norm) in (BatchNormAct2d, nn.BatchNorm2d)
        and not norm.training
        and norm.running_mean is not None
        and _plain_conv(conv)
        and name is not None
        and (act is None or inner is None or activation_name(inner) == "none")
        and not _hooked(conv, norm, inner, act)
    )
    if not fusable:
        return run_modules(x, conv, norm, act)
    bn = ops.BatchNormStats(norm.running_mean, norm.running_var, norm.weight, norm.bias, norm.eps)
    return _conv_op(conv, x, name, bn)
