"""Learned absolute position embeddings (DeiT, PVT) and their resampling to other grid sizes.

Official behaviour this follows (Agent-Attention@207ce3e):

* Agent-PVT (``agent_pvt.py`` ``_get_pos_embed``) resamples each stage's ``pos_embed{i}: [1, H0·W0, C]`` at
  run time with ``F.interpolate(mode="bilinear")`` (``align_corners=False``, no antialias) whenever the
  input is not the training size.
* Agent-DeiT (``agent_deit.py`` ``resize_pos_embed``, used by ``checkpoint_filter_fn``) resamples the grid
  part of ``pos_embed: [1, 1 + H0·W0, C]`` (cls token first, kept as is) with the same bilinear call when a
  checkpoint is loaded into a model of another size; its forward then adds it without resampling.

timm's own helper defaults to bicubic with antialias; pass ``interpolation="bicubic", antialias=True``
for that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops


def _hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_hw: int | tuple[int, int],
    old_hw: int | tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bilinear",
    antialias: bool = False,
) -> torch.Tensor:
    """Resample ``pos_embed: [1, T + Ho·Wo, C]`` (``T`` prefix tokens, row-major) to ``[1, T + Hn·Wn, C]``.

    ``num_prefix_tokens`` defaults to 1 like timm's helper of the same name (DeiT: 1, PVT: 0).
    The ``T`` prefix entries (cls / dist tokens) are kept unchanged; the grid part is interpolated with
    ``F.interpolate(mode=interpolation, align_corners=False, antialias=antialias)`` — the defaults are the
    official Agent-DeiT/PVT call (bilinear, no antialias). ``old_hw`` defaults to a square grid. At the same
    size the input is returned unchanged (except while tracing/exporting, where the resample always runs,
    so the graph does not specialise; it is then an exact identity for bilinear/bicubic). Works on
    half/bfloat16 by interpolating in float32.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(
            f"resample_abs_pos_embed: pos_embed must be [1, T + H*W, C], got shape {tuple(pos_embed.shape)}"
        )
    num_grid = pos_embed.shape[1] - num_prefix_tokens
    if num_prefix_tokens < 0 or num_grid <= 0:
        raise ValueError(
            f"resample_abs_pos_embed: num_prefix_tokens={num_prefix_tokens} leaves no grid in a pos_embed "
            f"of {pos_embed.shape[1]} tokens"
        )
    if old_hw is None:
        side = math.isqrt(num_grid)
        if side * side != num_grid:
            raise ValueError(
                f"resample_abs_pos_embed: {num_grid} grid tokens are not a square; pass old_hw=(H, W)"
            )
        old_hw = (side, side)
    oh, ow = _hw(old_hw)
    nh, nw = _hw(new_hw)
    if oh * ow != num_grid:
        raise ValueError(
            f"resample_abs_pos_embed: old_hw={oh}x{ow} does not match the {num_grid} grid tokens of pos_embed"
        )
    if nh <= 0 or nw <= 0:
        raise ValueError(f"resample_abs_pos_embed: new_hw must be positive, got {nh}x{nw}")
    exporting = ops.is_tracing()
    if not exporting and (oh, ow) == (nh, nw):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    C = pos_embed.shape[-1]
    dtype = grid.dtype
    grid = grid.reshape(1, oh, ow, C).permute(0, 3, 1, 2)
    if dtype in (torch.float16, torch.bfloat16):
        grid = grid.float()
    align = False if interpolation in ("linear", "bilinear", "bicubic", "trilinear") else None
    grid = F.interpolate(grid, size=(nh, nw), mode=interpolation, align_corners=align, antialias=antialias)
    grid = grid.to(dtype).permute(0, 2, 3, 1).reshape(1, nh * nw, C)
    return torch.cat([prefix, grid], dim=1) if num_prefix_tokens else grid


class AbsPosEmbed(nn.Module):
    """Learned absolute position embedding ``pos_embed: [1, T + H0·W0, C]`` trained on an ``H0×W0`` grid.

    ``forward(x)`` with ``x: [B, H, W, C]`` of any size: the grid part is resampled to ``H×W``
    (:func:`resample_abs_pos_embed`, bilinear like the official code) and added.

    * ``num_prefix_tokens == 0`` (PVT ``pos_embed{i}``): returns ``[B, H, W, C]``.
    * ``num_prefix_tokens == T > 0`` (DeiT ``pos_embed`` with the cls token): ``forward(x, prefix)`` with
      ``prefix: [B, T, C]`` (e.g. the expanded cls token) returns tokens ``[B, T + H·W, C]``, prefix first.

    Parameter ``pos_embed`` has the official shape; init ``trunc_normal(std=0.02)`` as the official code.
    Note: official Agent-PVT resamples only when ``H·W`` differs from stage 1's token count (a shortcut that
    is the identity at the training size); this module resamples whenever ``(H, W) != (H0, W0)``.
    """

    def __init__(
        self,
        dim: int,
        grid_size: int | tuple[int, int],
        num_prefix_tokens: int = 0,
        interpolation: str = "bilinear",
        antialias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.grid_size = _hw(grid_size)
        if min(self.grid_size) <= 0:
            raise ValueError(f"AbsPosEmbed: grid_size must be positive, got {grid_size}")
        if num_prefix_tokens < 0:
            raise ValueError(f"AbsPosEmbed: num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.dim = dim
        self.num_prefix_tokens = num_prefix_tokens
        self.interpolation = interpolation
        self.antialias = antialias
        n = num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def resampled(self, hw: tuple[int, int]) -> torch.Tensor:
        """The embedding for an ``H×W`` grid: ``[1, T + H·W, C]``."""
        return resample_abs_pos_embed(
            self.pos_embed, hw, self.grid_size, self.num_prefix_tokens, self.interpolation, self.antialias
        )

    def forward(self, x: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"AbsPosEmbed: x must be channels-last [B, H, W, {self.dim}], got shape {tuple(x.shape)}"
            )
        B, H, W, C = x.shape
        pos = self.resampled((H, W))
        if self.num_prefix_tokens == 0:
            if prefix is not None:
                raise ValueError("AbsPosEmbed: prefix given but num_prefix_tokens == 0")
            return x + pos.reshape(1, H, W, C)
        if prefix is None or prefix.dim() != 3 or prefix.shape[1] != self.num_prefix_tokens:
            got = None if prefix is None else tuple(prefix.shape)
            raise ValueError(
                f"AbsPosEmbed: expected prefix tokens [B, {self.num_prefix_tokens}, {C}], got {got}"
            )
        return torch.cat([prefix, x.reshape(B, H * W, C)], dim=1) + pos

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}, "
            f"interpolation={self.interpolation!r}"
        )
