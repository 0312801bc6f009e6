"""Dynamic position bias (CrossFormer's DPB): a small MLP maps each relative offset to one bias per head.

Unlike a relative position bias table, DPB has no size-dependent parameters, so one module serves groups of
any shape ``(gh, gw)``: the offsets ``(dh, dw)`` with ``|dh| < gh``, ``|dw| < gw`` (``(2gh-1)·(2gw-1)`` rows,
``dh`` outer, as floats in group units) go through the MLP, and the result is gathered for every query/key
pair of the group. Offsets and the index are computed from the group shape on each call (no buffers).

Official keys (cheerss/CrossFormer ``models/crossformer.py`` ``DynamicPosBias``): ``pos_proj``,
``pos1.{0,2}``, ``pos2.{0,2}``, ``pos3.{0,2}`` (``Sequential(LayerNorm, ReLU, Linear)``). The released
checkpoints also carry ``attn.biases`` / ``attn.relative_position_index`` tables; they are not needed here.
"""

from __future__ import annotations

import torch
from torch import nn

# a group shape may be traced (CrossFormer's small-map fallback uses the map size): pair never int()s it
from ..ops.sizes import pair


def relative_offsets(group_hw: int | tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """All offsets of a ``gh×gw`` group: ``[(2gh-1)·(2gw-1), 2]`` rows ``(dh, dw)``, ``dh`` outer."""
    gh, gw = pair(group_hw)
    dh = torch.arange(1 - gh, gh, device=device)
    dw = torch.arange(1 - gw, gw, device=device)
    grid = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1)  # [2gh-1, 2gw-1, 2]
    return grid.reshape(-1, 2).to(dtype or torch.get_default_dtype())


def relative_position_index(group_hw: int | tuple[int, int], device=None) -> torch.Tensor:
    """``[N, N]`` (N = gh·gw, tokens row-major): the row of :func:`relative_offsets` for query i, key j.

    The offset is ``pos(i) - pos(j)``; row ``(dh + gh - 1)·(2gw - 1) + (dw + gw - 1)``.
    """
    gh, gw = pair(group_hw)
    ys = torch.arange(gh, device=device)[:, None].expand(gh, gw).reshape(-1)  # [N], row-major
    xs = torch.arange(gw, device=device)[None, :].expand(gh, gw).reshape(-1)
    dh = ys[:, None] - ys[None, :] + (gh - 1)
    dw = xs[:, None] - xs[None, :] + (gw - 1)
    return dh * (2 * gw - 1) + dw


def _ln_relu_linear(width: int, out: int, dd: dict) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width, **dd), nn.ReLU(), nn.Linear(width, out, **dd))


class DynamicPosBias(nn.Module):
    """Dynamic position bias: ``forward((gh, gw)) -> [heads, gh·gw, gh·gw]`` additive attention bias.

    Args:
        dim: the official constructor argument; the MLP width is ``pos_dim = dim // 4``. CrossFormer's
            attention passes ``dim = C // 4`` (so ``pos_dim = C // 16``: 4 for C = 64).
        num_heads: one bias per head.
        residual: ``pos = proj(d); pos = pos + pos1(pos); pos = pos + pos2(pos); pos3(pos)`` if True, else the
            plain chain ``pos3(pos2(pos1(proj(d))))`` (what every official CrossFormer block uses).
    """

    def __init__(self, dim: int, num_heads: int, residual: bool = False, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim // 4 < 1:
            raise ValueError(f"DynamicPosBias: dim={dim} gives an MLP width dim // 4 = 0; pass dim >= 4")
        if num_heads < 1:
            raise ValueError(f"DynamicPosBias: num_heads must be >= 1, got {num_heads}")
        self.residual = bool(residual)
        self.num_heads = num_heads
        self.pos_dim = dim // 4
        self.pos_proj = nn.Linear(2, self.pos_dim, **dd)
        self.pos1 = _ln_relu_linear(self.pos_dim, self.pos_dim, dd)
        self.pos2 = _ln_relu_linear(self.pos_dim, self.pos_dim, dd)
        self.pos3 = _ln_relu_linear(self.pos_dim, num_heads, dd)

    def mlp(self, offsets: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` offsets → ``[..., heads]`` biases."""
        pos = self.pos_proj(offsets)
        if self.residual:
            pos = pos + self.pos1(pos)
            pos = pos + self.pos2(pos)
        else:
            pos = self.pos2(self.pos1(pos))
        return self.pos3(pos)

    def table(self, group_hw: int | tuple[int, int]) -> torch.Tensor:
        """Bias of every offset of the group: ``[(2gh-1)·(2gw-1), heads]`` (the official ``pos``)."""
        w = self.pos_proj.weight
        return self.mlp(relative_offsets(group_hw, device=w.device, dtype=w.dtype))

    def forward(self, group_hw: int | tuple[int, int]) -> torch.Tensor:
        gh, gw = pair(group_hw)
        if gh < 1 or gw < 1:
            raise ValueError(f"DynamicPosBias: group shape must be positive, got {(gh, gw)}")
        table = self.table((gh, gw))
        index = relative_position_index((gh, gw), device=table.device)
        n = gh * gw
        return table[index.reshape(-1)].reshape(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def extra_repr(self) -> str:
        return f"pos_dim={self.pos_dim}, num_heads={self.num_heads}, residual={self.residual}"
