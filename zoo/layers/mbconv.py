"""MBConv (inverted bottleneck with squeeze-excite), its shortcut, and the MaxViT conv stem.

These work on NCHW maps ``[B, C, H, W]`` (convolutions and BatchNorm); a model whose blocks are
channels-last converts at the boundary (``x.permute(0, 3, 1, 2)`` before, ``x.permute(0, 2, 3, 1)`` after).

Layout and names follow timm's ``MbConvBlock`` / ``Stem`` in ``timm/models/maxxvit.py`` with the
``maxvit_*_tf`` config (the TF MaxViT weights): keys ``shortcut.expand``, ``pre_norm``, ``conv1_1x1``,
``norm1``, ``conv2_kxk``, ``norm2``, ``se.fc1``, ``se.fc2``, ``conv3_1x1``; stem ``conv1``, ``norm1``,
``conv2``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .conv import BatchNormAct2d, conv_act, conv_norm_act, create_avg_pool2d, create_conv2d
from .drop import DropPath
from .mlp import get_act_layer


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``, never below
    ``round_limit·v``), as timm's channel rounding."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation on ``[B, C, H, W]``: ``x · sigmoid(fc2(act(fc1(mean_hw(x)))))``.

    ``fc1``/``fc2`` are 1×1 convs with bias (keys ``fc1.weight [rd, C, 1, 1]``, ``fc1.bias``, ``fc2.weight
    [C, rd, 1, 1]``, ``fc2.bias``), as timm's ``SEModule``.

    Args:
        channels: C.
        rd_channels: reduced width; default ``int(channels · rd_ratio)``.
        rd_ratio: used when ``rd_channels`` is None.
        act_layer: activation between the two convs (MaxViT: ``"silu"``).
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int | None = None,
        rd_ratio: float = 0.25,
        act_layer: str | Callable[[], nn.Module] = "silu",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        rd_channels = int(channels * rd_ratio) if rd_channels is None else rd_channels
        if rd_channels < 1:
            raise ValueError(
                f"SqueezeExcite: reduced width must be >= 1, got {rd_channels} ({channels} channels)"
            )
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True, **dd)
        self.act = get_act_layer(act_layer)()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class PoolShortcut(nn.Module):
    """Shortcut of a downsampling/widening block on ``[B, C, H, W]``: 2×2 average pool (stride 2) then a
    1×1 conv ``expand`` when the width changes (timm's ``Downsample2d``, ``pool_type='avg2'``).

    Keys: ``expand.weight [out, in, 1, 1]``, ``expand.bias`` (only when ``in_chs != out_chs``).
    ``stride=1`` skips the pool. ``padding="same"`` (TF) pads odd sizes at the bottom/right with zeros that
    count in the average, as timm's port does.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 2,
        padding: str = "same",
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"PoolShortcut: stride must be 1 or 2, got {stride}")
        self.pool = create_avg_pool2d(2, padding) if stride == 2 else nn.Identity()
        if in_chs != out_chs:
            self.expand = nn.Conv2d(in_chs, out_chs, 1, bias=bias, device=device, dtype=dtype)
        else:
            self.expand = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_act(self.expand, self.pool(x))


class MBConv(nn.Module):
    """Pre-norm inverted bottleneck ``[B, C_in, H, W] -> [B, C_out, ceil(H/s), ceil(W/s)]`` (NCHW).

    ``x' = shortcut(x) + drop_path(conv3_1x1(se(norm2(conv2_kxk(norm1(conv1_1x1(pre_norm(x))))))))``:
    ``pre_norm`` BatchNorm (no activation), 1×1 expansion to ``mid = make_divisible(out_chs · expand_ratio)``
    + BN + act, k×k depthwise conv carrying the stride + BN + act, squeeze-excite
    (``int(se_ratio · out_chs)`` reduced channels, SiLU), 1×1 projection with bias. The shortcut is identity,
    or :class:`PoolShortcut` when the stride is 2 or the width changes. Convs before the projection have no
    bias. MaxViT TF weights: ``act_layer="gelu_tanh"``, ``norm_eps=1e-3``, ``padding="same"`` (defaults).

    Keys (timm ``MbConvBlock``): ``shortcut.expand.{weight,bias}`` (if widening), ``pre_norm.*``,
    ``conv1_1x1.weight``, ``norm1.*``, ``conv2_kxk.weight``, ``norm2.*``, ``se.fc1.*``, ``se.fc2.*``,
    ``conv3_1x1.{weight,bias}``; ``*`` = BatchNorm ``weight, bias, running_mean, running_var,
    num_batches_tracked``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        expand_ratio: float = 4.0,
        kernel_size: int = 3,
        se_ratio: float = 0.25,
        act_layer: str | Callable[[], nn.Module] = "gelu_tanh",
        se_act_layer: str | Callable[[], nn.Module] = "silu",
        norm_eps: float = 1e-3,
        padding: str = "same",
        output_bias: bool = True,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if stride not in (1, 2):
            raise ValueError(f"MBConv: stride must be 1 or 2, got {stride}")
        if in_chs < 1 or out_chs < 1:
            raise ValueError(f"MBConv: channels must be positive, got in_chs={in_chs}, out_chs={out_chs}")
        if padding not in ("same", "symmetric"):
            raise ValueError(f"MBConv: padding must be 'same' (TF weights) or 'symmetric', got {padding!r}")
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        mid = make_divisible(out_chs * expand_ratio)
        self.mid_chs = mid
        if stride == 2 or in_chs != out_chs:
            self.shortcut = PoolShortcut(in_chs, out_chs, stride, padding, bias=output_bias, **dd)
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = BatchNormAct2d(in_chs, eps=norm_eps, act_layer=None, **dd)
        self.conv1_1x1 = nn.Conv2d(in_chs, mid, 1, bias=False, **dd)
        self.norm1 = BatchNormAct2d(mid, eps=norm_eps, act_layer=act_layer, **dd)
        self.conv2_kxk = create_conv2d(
            mid, mid, kernel_size, stride=stride, groups=mid, bias=False, padding=padding, **dd
        )
        self.norm2 = BatchNormAct2d(mid, eps=norm_eps, act_layer=act_layer, **dd)
        self.se = SqueezeExcite(mid, rd_channels=int(se_ratio * out_chs), act_layer=se_act_layer, **dd)
        self.conv3_1x1 = nn.Conv2d(mid, out_chs, 1, bias=output_bias, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chs:
            raise ValueError(
                f"MBConv expects NCHW [B, {self.in_chs}, H, W], got shape {tuple(x.shape)}; "
                "convert channels-last maps with x.permute(0, 3, 1, 2)"
            )
        shortcut = self.shortcut(x)
        x = conv_norm_act(self.conv1_1x1, self.norm1, self.pre_norm(x))
        x = self.se(conv_norm_act(self.conv2_kxk, self.norm2, x))
        return self.drop_path(conv_act(self.conv3_1x1, x)) + shortcut


class MaxViTStem(nn.Module):
    """MaxViT stem ``[B, C_in, H, W] -> [B, C_out, ceil(H/2), ceil(W/2)]`` (NCHW): ``conv1`` (k×k, stride 2)
    → ``norm1`` (BatchNorm + act) → ``conv2`` (k×k, stride 1).

    ``out_chs`` is an int or ``(conv1 width, conv2 width)``. TF weights: ``padding="same"``, ``bias=True``,
    ``act_layer="gelu_tanh"``, ``norm_eps=1e-3`` (the defaults). Keys: ``conv1.{weight,bias}``,
    ``norm1.{weight,bias,running_mean,running_var,num_batches_tracked}``, ``conv2.{weight,bias}``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int | tuple[int, int],
        kernel_size: int = 3,
        padding: str = "same",
        bias: bool = True,
        act_layer: str | Callable[[], nn.Module] = "gelu_tanh",
        norm_eps: float = 1e-3,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        c1, c2 = (out_chs, out_chs) if isinstance(out_chs, int) else (int(out_chs[0]), int(out_chs[1]))
        self.out_chs = c2
        self.stride = 2
        self.conv1 = create_conv2d(in_chs, c1, kernel_size, stride=2, bias=bias, padding=padding, **dd)
        self.norm1 = BatchNormAct2d(c1, eps=norm_eps, act_layer=act_layer, **dd)
        self.conv2 = create_conv2d(c1, c2, kernel_size, stride=1, bias=bias, padding=padding, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_act(self.conv2, conv_norm_act(self.conv1, self.norm1, x))
