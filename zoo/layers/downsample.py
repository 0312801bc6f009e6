"""Downsamplers between stages: channels-last ``[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C_out]``.

* :class:`ConvBNDownsample` — BiFormer: conv3x3/2 (bias) → BatchNorm2d.
* :class:`ConvDownsampler` — NAT/DiNAT: conv3x3/2 (no bias) → LayerNorm.
* :class:`PatchMerging` — Swin (Agent-Swin): 2×2 neighbourhood concat → LayerNorm(4C) → Linear(4C, C_out).
* :class:`PatchEmbedDownsample` — PVT (Agent-PVT stages 2–4): conv with kernel = stride = 2 → LayerNorm.

Submodule names equal the official ones, so official keys map with a prefix change only.
Outputs are contiguous channels-last tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .conv import conv_norm_act
from .embed import PatchEmbed, _Seq
from .linear import Linear


def _check_map(name: str, x: torch.Tensor, dim: int) -> None:
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(
            f"{name}: expected a channels-last map [B, H, W, {dim}], got shape {tuple(x.shape)} "
            f"(an NCHW tensor needs x.permute(0, 2, 3, 1) first)"
        )


class ConvBNDownsample(_Seq):
    """BiFormer downsampler: ``[B, H, W, dim] -> [B, ceil(H/2), ceil(W/2), out_dim]``.

    ``0`` conv3x3 stride 2 pad 1 (bias) → ``1`` BatchNorm2d (eps 1e-5), run in NCHW between two permutes.
    Keys: ``0.weight, 0.bias, 1.{weight,bias,running_mean,running_var,num_batches_tracked}`` — official
    ``downsample_layers.{1,2,3}.*`` (rayleizhu/BiFormer models/biformer.py). ``out_dim`` defaults to
    ``2 * dim`` (BiFormer configs set it explicitly; some keep the width, e.g. 64 → 64).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        out_dim = out_dim or 2 * dim
        super().__init__(
            nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, **dd),
            norm_layer(out_dim, **dd),
        )
        self.dim = dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map("ConvBNDownsample", x, self.dim)
        return conv_norm_act(self[0], self[1], x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()


class ConvDownsampler(nn.Module):
    """NAT/DiNAT downsampler: ``[B, H, W, dim] -> [B, ceil(H/2), ceil(W/2), out_dim]``.

    ``reduction`` conv3x3 stride 2 pad 1 **without bias** → ``norm`` (LayerNorm eps 1e-5 on channels).
    Keys: ``reduction.weight, norm.weight, norm.bias`` — official ``levels.{i}.downsample.*`` (at the END of
    level ``i``; SHI-Labs NAT classification/nat.py ``ConvDownsampler``). ``out_dim`` defaults to ``2 * dim``
    (the official value, not configurable there).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.out_dim = out_dim = out_dim or 2 * dim
        self.reduction = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, bias=False, **dd)
        self.norm = norm_layer(out_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map("ConvDownsampler", x, self.dim)
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)).contiguous()


class PatchMerging(nn.Module):
    """Swin patch merging: ``[B, H, W, dim] -> [B, ceil(H/2), ceil(W/2), out_dim]``.

    Each output pixel concatenates its 2×2 input pixels in the official order
    ``x0 = x[0::2, 0::2], x1 = x[1::2, 0::2], x2 = x[0::2, 1::2], x3 = x[1::2, 1::2]`` (row offset varies
    fastest) → ``norm`` LayerNorm(4·dim, eps 1e-5) → ``reduction`` Linear(4·dim, out_dim, bias=False).
    Keys: ``norm.weight, norm.bias, reduction.weight`` — official ``layers.{i}.downsample.*`` (at the END of
    layer ``i``; Agent-Attention agent_swin.py ``PatchMerging``). ``out_dim`` defaults to ``2 * dim``.

    Odd ``H``/``W``: the official classification code asserts even sizes; like the official Swin downstream
    backbones this zero-pads one row/column at the bottom/right (the zeros enter the LayerNorm).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.out_dim = out_dim = out_dim or 2 * dim
        self.norm = norm_layer(4 * dim, **dd)
        self.reduction = Linear(4 * dim, out_dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map("PatchMerging", x, self.dim)
        B, H, W, C = x.shape
        h2, w2 = (H + 1) // 2, (W + 1) // 2
        # pad unconditionally to (2·h2, 2·w2): no branch on the size, so torch.export stays dynamic
        x = F.pad(x, (0, 0, 0, 2 * w2 - W, 0, 2 * h2 - H))
        # [B, h2, dh, w2, dw, C] -> [B, h2, w2, dw, dh, C]: channel block 2·dw + dh = x0, x1, x2, x3
        x = x.reshape(B, h2, 2, w2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, h2, w2, 4 * C)
        return self.reduction(self.norm(x))


class PatchEmbedDownsample(PatchEmbed):
    """PVT downsampler: ``[B, H, W, dim] -> [B, H/p, W/p, out_dim]`` (``p = patch_size``, default 2).

    The stage-2..4 ``PatchEmbed`` of Agent-PVT applied to a channels-last map: ``proj`` conv with
    kernel = stride = ``p`` (bias) → ``norm`` LayerNorm (eps 1e-5, the official ``nn.LayerNorm`` default, not
    the blocks' 1e-6). Keys: ``proj.weight, proj.bias, norm.weight, norm.bias`` — official
    ``patch_embed{2,3,4}.*`` (Agent-Attention agent_pvt.py ``PatchEmbed``).

    ``pad=False`` (default here) follows the official code: sizes not divisible by ``p`` drop the last
    row/column (``floor(H/p)``); ``pad=True`` zero-pads bottom/right instead (``ceil(H/p)``).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        patch_size: int | tuple[int, int] = 2,
        norm_layer: Callable[..., nn.Module] | None = nn.LayerNorm,
        pad: bool = False,
        device=None,
        dtype=None,
    ):
        out_dim = out_dim or 2 * dim
        super().__init__(dim, out_dim, patch_size, norm_layer=norm_layer, pad=pad, device=device, dtype=dtype)
        self.dim = dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map("PatchEmbedDownsample", x, self.dim)
        return self._embed(x.permute(0, 3, 1, 2), "PatchEmbedDownsample")
