"""Relative position bias tables for window / grid attention (MaxViT, Swin, Agent-Swin, ...).

A table holds one learned bias per head and per relative offset ``(dh, dw)`` inside a ``wh×ww`` window
(``(2wh-1)·(2ww-1)`` offsets). :class:`RelPosBias` gathers it into the additive attention bias
``[heads, N, N]`` (``N = wh·ww``, tokens row-major) that :class:`~zoo.layers.PartitionAttention` adds to
its logits. Two parameter layouts, both named ``relative_position_bias_table`` as in the official code:

* ``layout="tf"`` — ``[heads, 2wh-1, 2ww-1]``, the TF MaxViT weights as ported by timm (``RelPosBiasTf``).
  Query ``q``, key ``k``: row ``k_r - q_r + wh - 1``, column ``k_c - q_c + ww - 1`` (key minus query).
* ``layout="swin"`` — ``[(2wh-1)·(2ww-1), heads]`` plus a non-persistent ``relative_position_index``
  ``[N, N]``, as Swin / Agent-Swin. Row ``(q_r - k_r + wh - 1)·(2ww-1) + (q_c - k_c + ww - 1)`` (query minus
  key). The ``tf`` buffer of the same name is the same index for the flattened ``[heads, ·]`` table.

Groups of another shape than the table's window get a table resized at run time (see
:func:`resize_rel_pos_bias_table`; the resize is a fixed function of the sizes, so gradients reach the
table). :func:`resize_rel_pos_bias_tables` does the same on a state dict, for converters that load a
checkpoint into a model built for another window.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

_LAYOUTS = ("tf", "swin")
_MODES = ("geometric", "bicubic")


def relative_position_index(window: int | tuple[int, int], layout: str = "swin", device=None) -> torch.Tensor:
    """Index ``[N, N]`` of the (flattened) offset of key ``j`` seen from query ``i`` in a ``wh×ww`` window.

    ``layout="swin"``: ``(q_r - k_r + wh - 1)·(2ww - 1) + (q_c - k_c + ww - 1)`` (Swin's
    ``relative_position_index``); ``layout="tf"``: the same with key minus query (the transpose).
    """
    wh, ww = ops.pair(window)
    rows = torch.arange(wh, device=device).repeat_interleave(ww)  # [N] row of token n
    cols = torch.arange(ww, device=device).repeat(wh)
    if layout == "swin":
        dr, dc = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]
    elif layout == "tf":
        dr, dc = rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]
    else:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    return (dr + wh - 1) * (2 * ww - 1) + (dc + ww - 1)


@functools.lru_cache(maxsize=64)
def _geometric_points(src: int, dst: int) -> tuple[float, ...]:
    """Positions, in destination offsets, of the ``src`` source offsets (BEiT/timm geometric spacing).

    Spacing grows by a factor ``q`` per step away from the centre; ``q`` (bisection in [1.01, 1.5]) is picked
    so the outermost source offset lands near ``dst // 2``.
    """
    half = src // 2
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2.0
        if (1.0 - q**half) / (1.0 - q) > dst // 2:
            hi = q
        else:
            lo = q
    dis, cur = [], 1.0
    for i in range(half):
        dis.append(cur)
        cur += q ** (i + 1)
    return tuple([-d for d in reversed(dis)] + [0] + dis)


@functools.lru_cache(maxsize=64)
def _geometric_axis(src: int, dst: int, dtype: str) -> tuple[np.ndarray, ...]:
    """Linear interpolation on the geometric source points at the integer targets ``-(dst//2) .. dst//2``.

    Returns ``(idx_left, idx_right, dist_left, dist_right, total)`` as numpy arrays (plain constants, so
    tracing/export never sees them built), clamped at the ends; a target on a source point gets both
    distances 1 (the value is then the mean of two equal reads). ``dtype`` is ``"float32"`` or
    ``"float64"``; float32 reproduces timm's arithmetic bit for bit.
    """
    p = np.asarray(_geometric_points(src, dst), dtype=np.float32).astype(dtype)
    t = float(dst // 2)
    x = np.arange(-t, t + 0.1, 1.0, dtype=np.float32).astype(dtype)
    right = np.minimum(np.searchsorted(p, x, side="left"), len(p) - 1)  # = torch.bucketize(x, p)
    left = np.clip(right - 1, 0, len(p) - 1)
    dl = np.maximum(x - p[left], 0).astype(dtype)
    dr = np.maximum(p[right] - x, 0).astype(dtype)
    both = (dl == 0) & (dr == 0)
    dl[both] = 1
    dr[both] = 1
    out = (left, right, dl, dr, (dl + dr).astype(dtype))
    for a in out:
        a.setflags(write=False)
    return out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype == torch.float64 else torch.float32


def _resize_grid(grid: torch.Tensor, dst: tuple[int, int], mode: str) -> torch.Tensor:
    """``[heads, Sh, Sw] -> [heads, Dh, Dw]`` (Sh, Dh = 2·window - 1)."""
    if not ops.is_traced(*dst) and tuple(grid.shape[-2:]) == tuple(dst):
        return grid
    if mode == "bicubic":  # the identity at the same size, so a traced size may keep it (graph stays dynamic)
        return F.interpolate(grid.unsqueeze(0), size=dst, mode="bicubic", align_corners=False).squeeze(0)
    if mode != "geometric":
        raise ValueError(f"resize mode must be one of {_MODES}, got {mode!r}")
    if ops.is_traced(*dst):
        raise NotImplementedError(
            "RelPosBias: the geometric table resize is computed in Python from the window size, so it cannot "
            "follow a window size that changes with the input of an exported graph; export with static H/W "
            "(tools/export.py --static-size) or use resize_mode='bicubic'"
        )
    ct = _compute_dtype(grid.dtype)
    g = grid.to(ct)
    dev = grid.device
    name = "float64" if ct == torch.float64 else "float32"
    ly, ry, dly, dry, ty = (
        torch.tensor(a, device=dev) for a in _geometric_axis(grid.shape[-2], dst[0], name)
    )
    lx, rx, dlx, drx, tx = (
        torch.tensor(a, device=dev) for a in _geometric_axis(grid.shape[-1], dst[1], name)
    )
    # bilinear: the weight of a corner is the product of the distances to the opposite corner
    out = g[:, ly[:, None], lx[None, :]] * (dry[:, None] * drx[None, :])
    out = out + g[:, ly[:, None], rx[None, :]] * (dry[:, None] * dlx[None, :])
    out = out + g[:, ry[:, None], lx[None, :]] * (dly[:, None] * drx[None, :])
    out = out + g[:, ry[:, None], rx[None, :]] * (dly[:, None] * dlx[None, :])
    return (out / (ty[:, None] * tx[None, :])).to(grid.dtype)


def _vocab(window: tuple[int, int]) -> tuple[int, int]:
    return 2 * window[0] - 1, 2 * window[1] - 1


def resize_rel_pos_bias_table(
    table: torch.Tensor,
    new_window: int | tuple[int, int],
    old_window: int | tuple[int, int] | None = None,
    mode: str = "geometric",
) -> torch.Tensor:
    """Resize a relative position bias table to another window, keeping its layout.

    Args:
        table: ``[heads, 2wh-1, 2ww-1]`` (tf layout, 3-D) or ``[(2wh-1)·(2ww-1), heads]`` (swin layout, 2-D).
        new_window: the target window ``(wh', ww')``.
        old_window: the table's window; inferred from a 3-D table, or from a 2-D one if it is square.
        mode: ``"geometric"`` — timm's ``resize_rel_pos_bias_table`` (BEiT): source offsets placed on a
            geometric progression over the target range, bilinear in between, clamped outside; what timm
            uses for the MaxViT TF tables at load time and in ``set_window_size``. ``"bicubic"`` —
            ``F.interpolate(..., mode="bicubic", align_corners=False)`` on the offset grid, what official
            Swin's ``load_pretrained`` does.

    Returns the same table object when the sizes already match.
    """
    dst = _vocab(ops.pair(new_window))
    if table.dim() == 3:
        heads = table.shape[0]
        src = (table.shape[1], table.shape[2])
        if old_window is not None and _vocab(ops.pair(old_window)) != src:
            raise ValueError(f"old_window={old_window} does not match a table of shape {tuple(table.shape)}")
        grid = table
    elif table.dim() == 2:
        n, heads = table.shape
        if old_window is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"non-square table {tuple(table.shape)}: pass old_window to give its window")
            src = (side, side)
        else:
            src = _vocab(ops.pair(old_window))
            if src[0] * src[1] != n:
                raise ValueError(f"old_window={old_window} does not fit a table {tuple(table.shape)}")
        grid = table.t().reshape(heads, src[0], src[1])
    else:
        raise ValueError(f"table must be 3-D (tf) or 2-D (swin), got shape {tuple(table.shape)}")
    if src == dst:
        return table
    if table.is_meta:
        shape = (heads, *dst) if table.dim() == 3 else (dst[0] * dst[1], heads)
        return table.new_empty(shape)
    out = _resize_grid(grid, dst, mode)
    return out if table.dim() == 3 else out.reshape(heads, -1).t().contiguous()


class RelPosBias(nn.Module):
    """Learned relative position bias: ``forward((gh, gw)) -> [heads, gh·gw, gh·gw]``.

    Args:
        window_size: the table's window ``(wh, ww)`` (int or pair).
        num_heads: one table per head.
        layout: ``"tf"`` (``[heads, 2wh-1, 2ww-1]``, MaxViT TF weights) or ``"swin"``
            (``[(2wh-1)·(2ww-1), heads]``, Swin); see the module docstring for the offset conventions.
        resize_mode: how the table is resized for groups of another shape, ``"geometric"`` or ``"bicubic"``
            (see :func:`resize_rel_pos_bias_table`). Default: geometric for ``tf`` (timm), bicubic for
            ``swin`` (official Swin).

    State dict: ``relative_position_bias_table`` only (``relative_position_index`` is non-persistent).
    """

    def __init__(
        self,
        window_size: int | tuple[int, int],
        num_heads: int,
        layout: str = "tf",
        resize_mode: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        resize_mode = resize_mode or ("geometric" if layout == "tf" else "bicubic")
        if resize_mode not in _MODES:
            raise ValueError(f"resize_mode must be one of {_MODES}, got {resize_mode!r}")
        self.window_size = ops.pair(window_size)
        if min(self.window_size) < 1 or num_heads < 1:
            raise ValueError(f"window_size and num_heads must be positive, got {window_size}, {num_heads}")
        self.num_heads = num_heads
        self.layout = layout
        self.resize_mode = resize_mode
        vh, vw = _vocab(self.window_size)
        shape = (num_heads, vh, vw) if layout == "tf" else (vh * vw, num_heads)
        self.relative_position_bias_table = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        index = relative_position_index(self.window_size, layout, device=device)
        self.register_buffer("relative_position_index", index, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # timm: normal(std=.02) for the TF table; Swin: trunc_normal(std=.02)
        if self.layout == "tf":
            nn.init.normal_(self.relative_position_bias_table, std=0.02)
        else:
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def grid(self) -> torch.Tensor:
        """The table as ``[heads, 2wh-1, 2ww-1]`` (offset grid), whatever the layout."""
        t = self.relative_position_bias_table
        if self.layout == "tf":
            return t
        vh, vw = _vocab(self.window_size)
        return t.t().reshape(self.num_heads, vh, vw)

    def forward(self, group_hw: int | tuple[int, int] | None = None) -> torch.Tensor:
        gh, gw = self.window_size if group_hw is None else ops.pair(group_hw)
        if gh < 1 or gw < 1:
            raise ValueError(f"RelPosBias: group shape must be positive, got {(gh, gw)}")
        n = gh * gw
        table = self.relative_position_bias_table
        if not ops.is_traced(gh, gw) and (gh, gw) == self.window_size:  # a traced size may change: resize
            index = self.relative_position_index
            if self.layout == "swin":  # exactly Swin's gather
                return table[index.reshape(-1)].reshape(n, n, self.num_heads).permute(2, 0, 1).contiguous()
            return table.reshape(self.num_heads, -1)[:, index.reshape(-1)].reshape(self.num_heads, n, n)
        grid = _resize_grid(self.grid(), _vocab((gh, gw)), self.resize_mode)
        index = relative_position_index((gh, gw), self.layout, device=table.device)
        return grid.reshape(self.num_heads, -1)[:, index.reshape(-1)].reshape(self.num_heads, n, n)

    def set_window_size(self, window_size: int | tuple[int, int]) -> None:
        """Make ``window_size`` the table's window in place (``set_input_size`` of a model whose windows grow
        with the input): the table is resized with :func:`resize_rel_pos_bias_table` and this module's
        ``resize_mode``, as :func:`resize_rel_pos_bias_tables` resizes a checkpoint's table for a model built
        at that window; device, dtype and ``requires_grad`` are kept."""
        window = ops.pair(window_size, name="RelPosBias.set_window_size: window_size")
        if window == self.window_size:
            return
        old = self.relative_position_bias_table
        with torch.no_grad():
            table = resize_rel_pos_bias_table(old.detach(), window, self.window_size, mode=self.resize_mode)
        self.relative_position_bias_table = nn.Parameter(table, requires_grad=old.requires_grad)
        self.window_size = window
        self.relative_position_index = relative_position_index(window, self.layout, device=old.device)

    def extra_repr(self) -> str:
        return (
            f"window_size={self.window_size}, num_heads={self.num_heads}, layout={self.layout!r}, "
            f"resize_mode={self.resize_mode!r}"
        )


def resize_rel_pos_bias_tables(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Resize every ``*.relative_position_bias_table`` of a (zoo-keyed) state dict to ``model``'s windows.

    For each such key whose module in ``model`` is a :class:`RelPosBias` with a different table shape, the
    table is resized with that module's window and ``resize_mode``; other entries pass through. Returns a
    new dict (the input is not modified).
    """
    out = dict(state_dict)
    suffix = ".relative_position_bias_table"
    for key, value in state_dict.items():
        if not key.endswith(suffix):
            continue
        try:
            mod = model.get_submodule(key[: -len(suffix)])
        except AttributeError:
            continue
        if not isinstance(mod, RelPosBias) or value.shape == mod.relative_position_bias_table.shape:
            continue
        if value.dim() != mod.relative_position_bias_table.dim():
            raise ValueError(
                f"{key}: table of shape {tuple(value.shape)} is not in the model's {mod.layout!r} layout"
            )
        out[key] = resize_rel_pos_bias_table(value, mod.window_size, mode=mod.resize_mode)
    return out
