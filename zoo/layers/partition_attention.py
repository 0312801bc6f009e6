"""Window (block) and grid attention: multi-head self-attention inside partitions of the map.

One mixer serves MaxViT block and grid attention, Swin windows (Agent-Swin's plain blocks) and CrossFormer
short- and long-distance attention. The position term is any module ``pos_bias(group_hw) -> [heads, N, N]``
(a relative position bias table, CrossFormer's dynamic position bias, ...).

Official key names this mixer mirrors: ``qkv`` (Linear dim→3·heads·dim_head, q/k/v outer, heads inner),
``proj``; the position module sits under the name the caller gives (``rel_pos`` for MaxViT, ``pos`` ...).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .linear import Linear

_PARTITIONS = ("window", "grid", "interval", "dilated", "global")


def _check_partition(partition: str) -> None:
    if partition not in _PARTITIONS:
        raise ValueError(f"partition must be one of {_PARTITIONS}, got {partition!r}")


class PartitionAttention(nn.Module):
    """Self-attention within windows or grids of a channels-last map ``[B, H, W, C] -> [B, H, W, C]``.

    Args:
        dim: channels C.
        num_heads: attention heads; ``dim_head`` defaults to ``dim // num_heads``.
        partition: ``"window"`` — non-overlapping ``size`` tiles of contiguous pixels; ``"grid"`` — a ``size``
            grid of pixels spread evenly over the map (MaxViT grid: group size fixed, stride = H/size);
            ``"interval"`` — pixels ``size`` apart form a group (CrossFormer LDA: stride fixed, group size =
            H/size). ``"dilated"`` — groups of ``size`` pixels spaced ``interval`` apart inside each
            ``size·interval`` region (CrossFormer main-branch LDA: group size and interval both fixed;
            equals ``"interval"`` when the map fits one region). ``"global"`` — the whole (unpadded) map
            is one group.
        size: window size, grid size, interval (``"interval"``) or group size (``"dilated"``); int or (h, w).
        pos_bias: module mapping a group shape ``(gh, gw)`` to an additive bias ``[heads, gh·gw, gh·gw]``.
        pos_bias_name: attribute name under which ``pos_bias`` is registered (``rel_pos``, ``pos``...).
        mask_padding: when the map is padded to a multiple of ``size``, exclude padded keys from the
            softmax (True), or let them take part as zeros (False, what official Swin does).
        interval: spacing of a group's pixels for ``partition="dilated"`` (ignored otherwise).
        shift: shifted windows (Swin SW-MSA; ``partition="window"`` with ``mask_padding=False`` only): the
            (padded) map is rolled by ``-size // 2`` before partitioning and back after, and keys from another
            region of the rolled map get ``-100`` (:meth:`shift_mask`, the official Swin mask).

    ``forward(x, partition=None, size=None, interval=None, shift=None)`` may override the partition, the
    size or the shift (0: none) for one call (e.g. CrossFormer falls back to ``("window", min(H, W))`` when
    the map is not larger than its group size, Swin to an unshifted window of ``min(H, W)``); the overrides
    may be traced sizes (:mod:`zoo.ops.sizes`), so such a choice can stay a function of the input in an
    exported graph.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        partition: str = "window",
        size: int | tuple[int, int] = 7,
        dim_head: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_scale: float | None = None,
        pos_bias: nn.Module | None = None,
        pos_bias_name: str = "rel_pos",
        mask_padding: bool = True,
        proj_drop: float = 0.0,
        interval: int | tuple[int, int] = 1,
        shift: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        _check_partition(partition)
        if shift and (partition != "window" or mask_padding):
            raise ValueError(
                "shift (Swin shifted windows) needs partition='window' and mask_padding=False (the padded keys "
                f"of a rolled map cannot be masked), got partition={partition!r}, mask_padding={mask_padding}"
            )
        if dim_head is None:
            if dim % num_heads:
                raise ValueError(
                    f"num_heads={num_heads} does not divide dim={dim}; pick a divisor or pass dim_head"
                )
            dim_head = dim // num_heads
        self.num_heads = num_heads
        self.dim_head = dim_head
        self.partition = partition
        self.size = ops.pair(size)
        self.interval = ops.pair(interval)
        self.scale = qk_scale if qk_scale is not None else dim_head**-0.5
        self.mask_padding = mask_padding
        self.shift = shift
        inner = num_heads * dim_head
        self.qkv = Linear(dim, 3 * inner, bias=qkv_bias, **dd)
        self.pos_bias_name = pos_bias_name
        if pos_bias is not None:
            self.add_module(pos_bias_name, pos_bias)
        self.proj = Linear(inner, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def pos_bias(self) -> nn.Module | None:
        return getattr(self, self.pos_bias_name, None)

    @staticmethod
    def _region(size: tuple[int, int], interval: tuple[int, int]) -> tuple[int, int]:
        return (size[0] * interval[0], size[1] * interval[1])

    def _multiple(self, partition: str, size: tuple[int, int], interval: tuple[int, int]) -> tuple[int, int]:
        if partition == "global":
            return (1, 1)
        return self._region(size, interval) if partition == "dilated" else size

    def _split(
        self, x: torch.Tensor, partition: str, size: tuple[int, int], interval: tuple[int, int]
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, Hp, Wp, C]`` → groups ``[B·nG, N, C]`` and the group shape."""
        Hp, Wp = x.shape[1], x.shape[2]
        if partition == "window":
            return ops.window_partition(x, size), size
        if partition == "grid":
            return ops.grid_partition(x, size), size
        if partition == "interval":
            group = (Hp // size[0], Wp // size[1])
            return ops.grid_partition(x, group), group
        if partition == "dilated":  # regions of size·interval, then a size-grid (stride interval) in each
            R = self._region(size, interval)
            regions = ops.window_partition(x, R).view(-1, R[0], R[1], x.shape[3])
            return ops.grid_partition(regions, size), size
        return x.reshape(x.shape[0], Hp * Wp, x.shape[3]), (Hp, Wp)

    def _join(
        self, groups: torch.Tensor, group: tuple[int, int], hw: tuple[int, int], partition: str,
        interval: tuple[int, int],
    ) -> torch.Tensor:
        if partition == "window":
            return ops.window_merge(groups, group, hw)
        if partition == "global":
            return groups.reshape(-1, hw[0], hw[1], groups.shape[-1])
        if partition == "dilated":
            R = self._region(group, interval)
            regions = ops.grid_merge(groups, group, R)
            return ops.window_merge(regions.reshape(-1, R[0] * R[1], groups.shape[-1]), R, hw)
        return ops.grid_merge(groups, group, hw)

    def _dilated_pad_mask(
        self, hw: tuple[int, int], pad: tuple[int, int], size: tuple[int, int], interval: tuple[int, int], device
    ):
        """Additive key mask ``[nG, N, N]`` (0 real, -1e4 padded) for ``partition="dilated"``."""
        valid = ops.valid_map(hw, pad, device)
        keep = self._split(valid, "dilated", size, interval)[0][..., 0] > 0  # [nG, N]
        mask = torch.zeros(keep.shape, device=device).masked_fill(~keep, -1e4)
        return mask[:, None, :].expand(-1, keep.shape[1], -1)

    @staticmethod
    def shift_mask(hw: tuple[int, int], window: int, shift: int, device=None) -> torch.Tensor:
        """Official Swin SW-MSA mask ``[nW, N, N]`` of a ``hw`` map rolled by ``-shift``: 0 between keys
        and queries of one region of the rolled map, -100 across regions."""
        Hp, Wp = hw

        def region(n: int) -> torch.Tensor:  # 0 | 1 | 2 for the slices [0, n-w), [n-w, n-s), [n-s, n)
            i = torch.arange(n, device=device)
            return (i >= n - window).long() + (i >= n - shift).long()

        ids = (region(Hp)[:, None] * 3 + region(Wp)[None, :]).to(torch.float32)
        win = ops.window_partition(ids.reshape(1, Hp, Wp, 1), window)[..., 0]  # [nW, N]
        diff = win[:, None, :] - win[:, :, None]
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(
        self,
        x: torch.Tensor,
        partition: str | None = None,
        size: int | tuple[int, int] | None = None,
        interval: int | tuple[int, int] | None = None,
        shift=None,
    ) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"PartitionAttention expects [B, H, W, C], got shape {tuple(x.shape)}")
        if partition is None:
            partition = self.partition
        else:
            _check_partition(partition)
        size = self.size if size is None else ops.pair(size)
        interval = self.interval if interval is None else ops.pair(interval)
        B, H, W, C = x.shape
        ops.refuse_symbolic_sizes(f"{type(self).__name__} ({partition} attention)", H, W)
        x, pad = ops.pad_to_multiple(x, self._multiple(partition, size, interval))
        Hp, Wp = x.shape[1], x.shape[2]
        if shift is None:
            shift = size[0] // 2 if self.shift else 0
        shifted = self.shift if ops.is_tracing() else bool(shift)  # tracing: shift may be a traced 0
        if shifted:
            x = ops.roll_map(x, -shift)
        groups, group = self._split(x, partition, size, interval)
        Bg, N, _ = groups.shape
        qkv = self.qkv(groups).reshape(Bg, N, 3, self.num_heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.pos_bias is not None:
            bias = self.pos_bias(group).unsqueeze(0)  # [1, heads, N, N]
        if shifted:  # (a shift of 0 while tracing gives an all-zero mask: one region per window)
            mask = self.shift_mask((Hp, Wp), size[0], shift, x.device).to(q.dtype)  # [nW, N, N]
            bias = (mask.unsqueeze(1) if bias is None else bias + mask.unsqueeze(1)).repeat(B, 1, 1, 1)
        padded = ops.is_tracing() or pad[0] or pad[1]  # tracing: always the padded path (dynamic H/W)
        if self.mask_padding and padded:
            if partition == "dilated":
                mask = self._dilated_pad_mask((Hp, Wp), pad, size, interval, x.device).to(q.dtype)  # [nG, N, N]
            else:
                mode = "window" if partition == "window" else "grid"
                mask = ops.pad_mask((Hp, Wp), pad, group, mode, device=x.device).to(q.dtype)
            mask = mask.unsqueeze(1).repeat(B, 1, 1, 1)  # [B·nG, 1, N, N]
            bias = mask if bias is None else bias + mask
        out = ops.attention(q, k, v, bias, scale=self.scale)  # [Bg, heads, N, d]
        out = out.transpose(1, 2).reshape(Bg, N, self.num_heads * self.dim_head)
        out = self.proj_drop(self.proj(out))
        out = self._join(out, group, (Hp, Wp), partition, interval)
        if shifted:
            out = ops.roll_map(out, shift)
        return out[:, :H, :W].contiguous() if padded else out
