"""Window and grid partition/merge for channels-last maps, with padding for sizes that don't divide.

Window (block) partition: each ``P×P`` tile of contiguous pixels is one group (MaxViT block attention,
Swin windows, CrossFormer short-distance attention). Grid partition: the map is split into a ``G×G`` grid of
interleaved pixels; group ``(i, j)`` holds the pixels ``(i + a·H/G, j + b·W/G)`` — a dilated grid spanning
the map (MaxViT grid attention, CrossFormer long-distance attention with interval ``I = H/G``).

Layouts: maps are ``[B, H, W, C]``; partitions are ``[B·nW, P·P, C]`` (window) or ``[B·nG, G·G, C]`` (grid)
with groups ordered row-major. ``H`` and ``W`` must be divisible; :func:`pad_to_multiple` pads first and
:func:`pad_mask` tells which tokens of each group are padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sizes import is_traced, is_tracing, pair


def _check_map(op: str, x: torch.Tensor, size: tuple[int, int], what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be [B, H, W, C], got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    H, W = x.shape[1], x.shape[2]
    if is_traced(H, W, *size):  # a Python check on a traced size would be a guard (or baked): trust the caller
        return
    if H % size[0] or W % size[1]:
        raise ValueError(
            f"{op}: map {H}x{W} is not divisible by the {what} {size[0]}x{size[1]}; "
            f"pad it first with zoo.ops.pad_to_multiple"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int | tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``x: [B, H, W, C]`` at the bottom/right to multiples of ``multiple``.

    Returns the padded map and ``(pad_h, pad_w)``; crop with ``x[:, :H, :W]`` afterwards. While a graph is
    traced for export (:func:`zoo.ops.is_tracing`) it always pads (possibly by 0), so the graph keeps
    dynamic H/W; callers then test ``is_tracing() or pad_h or pad_w`` too.
    """
    mh, mw = pair(multiple)
    H, W = x.shape[1], x.shape[2]
    # ceil(H / m)·m - H rather than (-H) % m: the same number, but the padded size is then a multiple of m
    # by construction, which lets torch.export prove the partition reshapes for every H (no guard)
    pad_h, pad_w = (H + mh - 1) // mh * mh - H, (W + mw - 1) // mw * mw - W
    if is_tracing() or pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x, (pad_h, pad_w)


def roll_map(x: torch.Tensor, shift) -> torch.Tensor:
    """``torch.roll(x, (shift, shift), dims=(1, 2))`` of a map ``[B, H, W, C]`` for a shift that may be traced.

    Eager calls ``torch.roll``. While tracing for export, ``shift`` may be a function of the input size
    (Swin drops the shift on maps not larger than the window), which ``torch.roll`` would bake as a
    constant: the roll is then a gather with indices ``(i - shift) mod n``, which stays dynamic.
    """
    if not is_tracing():
        return torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    H, W = x.shape[1], x.shape[2]
    rows = (torch.arange(H, device=x.device) - shift) % H
    cols = (torch.arange(W, device=x.device) - shift) % W
    return x.index_select(1, rows).index_select(2, cols)


def window_partition(x: torch.Tensor, window: int | tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` → ``[B·(H/P)·(W/P), P·P, C]``, windows of contiguous pixels, row-major."""
    ph, pw = pair(window)
    _check_map("window_partition", x, (ph, pw), "window")
    B, H, W, C = x.shape
    x = x.view(B, H // ph, ph, W // pw, pw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ph * pw, C)


def window_merge(windows: torch.Tensor, window: int | tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B·nW, P·P, C]`` → ``[B, H, W, C]``."""
    ph, pw = pair(window)
    H, W = hw
    C = windows.shape[-1]
    x = windows.view(-1, H // ph, W // pw, ph, pw, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def grid_partition(x: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C]`` → ``[B·(H/G)·(W/G), G·G, C]``: group ``(a, b)`` holds pixels ``(a + i·H/G, b + j·W/G)``."""
    gh, gw = pair(grid)
    _check_map("grid_partition", x, (gh, gw), "grid")
    B, H, W, C = x.shape
    x = x.view(B, gh, H // gh, gw, W // gw, C).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, gh * gw, C)


def grid_merge(groups: torch.Tensor, grid: int | tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`grid_partition`: ``[B·nG, G·G, C]`` → ``[B, H, W, C]``."""
    gh, gw = pair(grid)
    H, W = hw
    C = groups.shape[-1]
    x = groups.view(-1, H // gh, W // gw, gh, gw, C).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, H, W, C)


def valid_map(hw: tuple[int, int], pad: tuple[int, int], device=None) -> torch.Tensor:
    """``[1, H, W, 1]`` float map: 1 on real pixels, 0 on the ``pad`` rows/columns at the bottom/right.

    Built by comparisons with ``arange`` (no in-place slice assignment), so it traces with dynamic sizes.
    """
    H, W = hw
    rows = torch.arange(H, device=device) < H - pad[0]
    cols = torch.arange(W, device=device) < W - pad[1]
    return (rows[:, None] & cols[None, :]).to(torch.float32)[None, :, :, None]


def pad_mask(
    hw: tuple[int, int], pad: tuple[int, int], size: int | tuple[int, int], mode: str, device=None
) -> torch.Tensor | None:
    """Additive key mask ``[nGroups, N, N]`` (0 = real key, -1e4 = padded key) for a padded map.

    ``hw`` is the padded size, ``pad`` the padding at the bottom/right, ``size`` the window (``mode='window'``)
    or grid (``mode='grid'``) size. Returns None when nothing is padded. Padded queries are cropped later,
    so only keys are masked. The mask is finite so a group made only of padding (possible with small maps
    in interval mode) gives a uniform softmax, not NaN; such queries are cropped anyway. While tracing for
    export the mask is always built (all zeros without padding), so the graph keeps dynamic H/W.
    """
    if not is_tracing() and not pad[0] and not pad[1]:
        return None
    valid = valid_map(hw, pad, device)
    parts = window_partition(valid, size) if mode == "window" else grid_partition(valid, size)
    keep = parts[..., 0] > 0  # [nGroups, N]
    mask = torch.zeros(keep.shape, device=device).masked_fill(~keep, -1e4)
    return mask[:, None, :].expand(-1, keep.shape[1], -1)
