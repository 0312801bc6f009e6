"""Neighborhood attention mixers of NAT and DiNAT (legacy NATTEN module semantics).

Official key names (``natten.NeighborhoodAttention2D`` as used by SHI-Labs/Neighborhood-Attention-Transformer
``classification/nat.py``; module attribute ``attn``): ``qkv`` (Linear dim→3·dim, q/k/v outer, heads inner),
``rpb`` (``[heads, 2k-1, 2k-1]``; ``[heads, 2k-1]`` in 1-D; NATTEN <= 0.14 called the switch ``bias``,
0.17 ``rel_pos_bias``), ``proj``.

Maps smaller than ``kernel_size * dilation`` along an axis: like legacy NATTEN (<= 0.14) the input is
zero-padded at the bottom/right up to ``kernel_size * dilation`` *before* ``qkv`` (so padded tokens carry the
qkv bias and are attended to, not masked), and the output is cropped before ``proj``. NATTEN 0.17 raises
instead; the official NAT/DiNAT configs never hit this at 224² (stage maps 56/28/14/7 >= 7·dilation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .linear import Linear


def _shortfall(window: int, n):
    """``max(0, window - n)``; while tracing for export (:func:`zoo.ops.is_tracing`) a traced value, not a
    Python int, so the exported graph pads (by 0 or more) at every size."""
    if not ops.is_tracing():
        return max(0, window - n)
    if isinstance(n, torch.Tensor):  # ONNX tracing: sizes are 0-d tensors
        return (window - n).clamp(min=0)
    return torch.sym_max(window - n, 0)  # torch.export: SymInt


class _NeighborhoodAttention(nn.Module):
    ndim: int = 2

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int,
        dilation: int | None = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}; pick a divisor of dim")
        odd_int = isinstance(kernel_size, int) and not isinstance(kernel_size, bool) and kernel_size % 2 == 1
        if not odd_int or kernel_size < 3:
            raise ValueError(f"kernel_size must be an odd int > 1 (3, 5, 7, ...), got {kernel_size!r}")
        dilation = 1 if dilation is None else dilation
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation must be an int >= 1 (or None for 1), got {dilation!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5  # `or` as the official module: qk_scale=0 means default
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.window_size = kernel_size * dilation
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros((num_heads,) + (2 * kernel_size - 1,) * self.ndim, **dd))
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.rpb is not None:
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, *spatial, C]`` (each axis >= window_size) → attention output before ``proj``."""
        B, *spatial, C = x.shape
        N = spatial[0] * spatial[1] if len(spatial) == 2 else spatial[0]  # explicit: a -1 is ambiguous at B = 0
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (t.reshape(B, self.num_heads, *spatial, self.head_dim) for t in qkv.unbind(0))
        fn = ops.neighborhood_attention2d if self.ndim == 2 else ops.neighborhood_attention1d
        p = self.attn_drop.p if self.training else 0.0
        out = fn(q, k, v, self.kernel_size, self.dilation, rpb=self.rpb, scale=self.scale, attn_drop=p)
        return out.movedim(1, -2).reshape(B, *spatial, C)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, rel_pos_bias={self.rpb is not None}"
        )


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D (dilated) neighborhood attention ``[B, H, W, C] -> [B, H, W, C]`` (NAT / DiNAT mixer).

    Each pixel attends to the ``kernel_size²`` window (every ``dilation``-th pixel) clamped inside the map,
    plus the relative position bias ``rpb[heads, 2k-1, 2k-1]``; see :mod:`zoo.ops.neighborhood`. Maps
    smaller than ``kernel_size * dilation`` are zero-padded bottom/right before ``qkv`` and cropped before
    ``proj`` (legacy NATTEN module behaviour). ``dilation=None`` means 1 (official NATLayer default).
    """

    ndim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"NeighborhoodAttention2D expects [B, H, W, {self.dim}], got {tuple(x.shape)}")
        H, W = x.shape[1], x.shape[2]
        pad_b, pad_r = _shortfall(self.window_size, H), _shortfall(self.window_size, W)
        padded = ops.is_tracing() or pad_b or pad_r  # tracing: always the padded path (dynamic H/W)
        if padded:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        x = self._attend(x)
        if padded:
            x = x[:, :H, :W]
        return self.proj_drop(self.proj(x))


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D (dilated) neighborhood attention ``[B, L, C] -> [B, L, C]``; ``rpb: [heads, 2k-1]``.

    Sequences shorter than ``kernel_size * dilation`` are zero-padded at the end before ``qkv`` and cropped
    before ``proj`` (legacy NATTEN ``NeighborhoodAttention1D``).
    """

    ndim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"NeighborhoodAttention1D expects [B, L, {self.dim}], got {tuple(x.shape)}")
        L = x.shape[1]
        pad = _shortfall(self.window_size, L)
        padded = ops.is_tracing() or pad
        if padded:
            x = F.pad(x, (0, 0, 0, pad))
        x = self._attend(x)
        if padded:
            x = x[:, :L]
        return self.proj_drop(self.proj(x))
