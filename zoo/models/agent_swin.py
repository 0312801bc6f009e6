"""Agent-Swin (Agent attention, ECCV 2024): Swin-T/S/B whose blocks are chosen per stage by ``attn_type``.

``A`` = agent attention over the whole stage map (:class:`~zoo.layers.AgentAttention`), ``B`` = plain Swin
shifted-window attention (window 7, shift on odd blocks: :class:`ShiftedWindowAttention`, a configured
:class:`~zoo.layers.PartitionAttention`), ``Mk`` = the first ``k`` blocks ``A``, the rest ``B``. T: ``AAAB``,
S: ``AABB``, B: ``AAMB2`` (a ``M`` stage takes its ``k`` from the characters after the four stage letters).
Agents 9/16/49/49. The variants, converter and timm registration are in :mod:`zoo.models.agent`.

Official code: LeapLabTHU/Agent-Attention@207ce3e ``agent_transformer/models/agent_swin.py``, configs
``agent_transformer/cfgs/agent_swin_*.yaml``.

Any input size works: the agent biases are defined at the training map size and resized at run time; Swin
``B`` blocks pad the map to a multiple of the window (like official downstream Swin; padded tokens are zeros,
not masked), and use a window of ``min(H, W)`` without shift when the map is not larger than the window (what
official Swin decides from ``img_size``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import ops
from ..layers import AgentAttention, PartitionAttention, PatchEmbed, PatchMerging, RelPosBias
from ._base import (
    Backbone,
    BlockSite,
    NetCfg,
    StageCfg,
    input_hw,
    register_downsampler,
    register_mixer,
    register_stem,
)

__all__ = [
    "SWIN_VARIANTS", "AgentSwin", "ShiftedWindowAttention", "agent_swin_cfg", "agent_swin_cfg_from_official",
    "agent_swin_resized",
]


# ------------------------------------------------------------------------------------------------ parts
class ShiftedWindowAttention(PartitionAttention):
    """Swin (shifted) window attention on ``[B, H, W, C]`` with a Swin relative position bias table: a
    :class:`~zoo.layers.PartitionAttention` with ``partition="window"``, ``shift`` and unmasked zero padding.

    Keys: ``qkv``, ``proj``, ``rel_pos.relative_position_bias_table`` (official ``attn.qkv``, ``attn.proj``,
    ``attn.relative_position_bias_table``; the official ``relative_position_index`` / ``attn_mask`` buffers
    are rebuilt). With ``shift`` the map is rolled by ``-window // 2`` before partitioning and keys from
    another region of the rolled map get ``-100`` (official Swin mask). The map is zero-padded to a
    multiple of the window first (official downstream Swin). If ``min(H, W) <= window`` the call uses one
    window of ``min(H, W)`` without shift (official: decided from ``input_resolution``).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False, **kwargs):
        """``kwargs``: :class:`~zoo.layers.PartitionAttention`'s ``qkv_bias``, ``qk_scale``, ``proj_drop``,
        ``device``, ``dtype``."""
        if window_size < 1:
            raise ValueError(f"ShiftedWindowAttention: window_size must be >= 1, got {window_size}")
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        super().__init__(
            dim, num_heads, "window", window_size, pos_bias=RelPosBias(window_size, num_heads, layout="swin", **dd),
            pos_bias_name="rel_pos", mask_padding=False, shift=shift, **kwargs,
        )
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.dim() != 4:
            raise ValueError(f"ShiftedWindowAttention expects [B, H, W, C], got shape {tuple(x.shape)}")
        H, W = x.shape[1], x.shape[2]
        if ops.is_tracing():  # the eager choice below as arithmetic on the traced size (the graph keeps it dynamic)
            small = ops.size_min(H, W)
            shift = (self.window_size // 2) * ops.greater(small, self.window_size) if self.shift else 0
            return super().forward(x, size=ops.size_min(small, self.window_size), shift=shift)
        if min(H, W) <= self.window_size:  # one window of the whole map, no shift
            return super().forward(x, size=min(H, W), shift=0)
        return super().forward(x)

    def set_window_size(self, window_size: int) -> None:
        """Another window (``set_input_size``); the table is resized (bicubic) as the converter does."""
        self.rel_pos.set_window_size(window_size)
        self.window_size = window_size
        self.size = ops.pair(window_size)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift={self.shift}, num_heads={self.num_heads}"


def _stage_kinds(pattern: str, depth: int) -> list[str]:
    """Block kinds of one stage: ``"A"``, ``"B"`` or ``"M<k>"`` (first ``k`` blocks A, then B)."""
    if pattern in ("A", "B"):
        return [pattern] * depth
    m = re.fullmatch(r"M(\d+)", pattern)
    if not m:
        raise ValueError(f"agent_swin: stage attn_type must be 'A', 'B' or 'M<k>', got {pattern!r}")
    k = int(m.group(1))
    return ["A" if i < k else "B" for i in range(depth)]


@register_stem("agent_patch_embed")
def _agent_stem(
    in_chans: int, out_dim: int, *, patch_size: int = 4, norm: bool = True, pad: bool = True,
    norm_eps: float = 1e-5, device=None, dtype=None,
) -> nn.Module:
    """Patch embedding (official Swin ``patch_embed`` / PVT ``patch_embed1``): conv p×p/p → LayerNorm."""
    norm_layer = (lambda d, **dd: nn.LayerNorm(d, eps=norm_eps, **dd)) if norm else None
    return PatchEmbed(in_chans, out_dim, patch_size, norm_layer=norm_layer, pad=pad, device=device, dtype=dtype)


register_downsampler("agent_swin_merge")(PatchMerging)  # Swin patch merging (official ``layers.i.downsample``)


@register_mixer("agent_swin")
def _agent_swin_mixer(
    dim: int, site: BlockSite, num_heads: int, attn_type: str = "A", agent_num: int = 49, train_size: int = 14,
    window_size: int = 7, qkv_bias: bool = True, qk_scale: float | None = None,
) -> nn.Module:
    """The mixer of Agent-Swin block ``index`` of a stage whose kinds are ``attn_type`` (``A``, ``B`` or ``M<k>``).

    ``A``: agent attention (``agent_num`` agents, biases defined on a ``train_size`` map = the official
    ``min(WINDOW_SIZE, stage map)``); ``B``: Swin window attention of ``window_size`` (official
    ``max(7, WINDOW_SIZE // 8)``), shifted on odd ``index``. Official agent attention ignores ``qk_scale``.
    """
    if _stage_kinds(attn_type, site.depth)[site.index] == "A":
        return AgentAttention(
            dim, num_heads, agent_num=agent_num, train_size=train_size, qkv_layout="qkv", qkv_bias=qkv_bias,
            proj_drop=site.drop, **site.dd,
        )
    return ShiftedWindowAttention(
        dim, num_heads, window_size, shift=site.index % 2 == 1, qkv_bias=qkv_bias, qk_scale=qk_scale,
        proj_drop=site.drop, **site.dd,
    )


# ---------------------------------------------------------------------------------------------- configs
def _split_attn_type(attn_type: str, n: int) -> list[str]:
    """Official ``attn_type`` string (``AAAB``, ``AAMB2``) → one pattern per stage."""
    head, tail = attn_type[:n], attn_type[n:]
    if len(head) != n or any(c not in "ABM" for c in head):
        raise ValueError(f"agent_swin: attn_type {attn_type!r} needs one of A/B/M per stage ({n} stages)")
    if "M" in head and not tail.isdigit():
        raise ValueError(f"agent_swin: attn_type {attn_type!r} has an 'M' stage but no block count after it")
    return [c + tail if c == "M" else c for c in head]


def agent_swin_cfg(
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    agent_num: Sequence[int] = (9, 16, 49, 49),
    attn_type: str = "AAAB",
    window_size: int = 56,
    img_size: int = 224,
    patch_size: int = 4,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    qk_scale: float | None = None,
    drop: float = 0.0,
    drop_path_rate: float = 0.2,
    patch_norm: bool = True,
) -> NetCfg:
    """The :class:`NetCfg` of an Agent-Swin. ``window_size`` is the official ``SWIN.WINDOW_SIZE`` (56 at
    224): agent blocks are defined on ``min(window_size, stage map)`` at ``img_size``, Swin blocks use windows
    of ``max(7, window_size // 8)``."""
    n = len(depths)
    if len(num_heads) != n or len(agent_num) != n:
        raise ValueError(f"agent_swin_cfg: num_heads and agent_num need one entry per stage ({n})")
    patterns = _split_attn_type(attn_type, n)
    swin_window = max(7, window_size // 8)
    res = img_size // patch_size  # the stage-1 map at the training size; stage i: res // 2**i
    stages = tuple(
        StageCfg(
            depth=int(depths[i]), dim=embed_dim * 2**i, block="agent_swin", block_kwargs=dict(
                num_heads=int(num_heads[i]), attn_type=patterns[i], agent_num=int(agent_num[i]),
                train_size=min(window_size, res // 2**i), window_size=swin_window, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
            ),
            downsample=None if i == 0 else "agent_swin_merge",
        )
        for i in range(n)
    )
    return NetCfg(
        stem="agent_patch_embed",
        stem_kwargs=dict(patch_size=patch_size, norm=patch_norm),
        stages=stages,
        norm="layernorm",
        head="classifier",
        drop_path_rate=drop_path_rate,
        # official no_weight_decay_keywords: relative_position_bias_table; the agent biases are >= 2-D
        no_weight_decay=("relative_position_bias_table",),
    )


def agent_swin_resized(cfg: NetCfg, img_size: int) -> NetCfg:
    """``cfg`` at another training size, as the zoo's variants are built for it (official ``WINDOW_SIZE`` =
    ``img_size // 4``, as the official 288/384 px configs): agent biases on the stage maps
    ``img_size / (patch · 2**i)``, Swin windows ``max(7, img_size // 32)`` (12 at 384)."""
    window = img_size // 4
    res = img_size // cfg.stem_kwargs.get("patch_size", 4)
    stages = tuple(
        dataclasses.replace(s, block_kwargs={
            **s.block_kwargs, "train_size": min(window, res // 2**i), "window_size": max(7, window // 8),
        })
        for i, s in enumerate(cfg.stages)
    )
    return cfg.replace(stages=stages)


class AgentSwin(Backbone):
    """:class:`~zoo.models.Backbone` of the Agent-Swin variants. ``set_input_size(img_size)`` (square) builds
    what the official 288/384 px models differ in (:func:`agent_swin_resized`): the agent biases of every
    agent block resized to the new stage maps, the Swin blocks' window ``max(7, img_size // 32)`` with its
    bias table resized (bicubic), as the converter resizes 224 px weights for a model built at that size."""

    def resized_cfg(self, hw: tuple[int, int], window_size: int | tuple[int, int] | None = None) -> NetCfg:
        super().resized_cfg(hw, window_size)  # no window_size
        return agent_swin_resized(self.cfg, input_hw("AgentSwin.set_input_size", hw, square=True)[0])

    def apply_cfg(self, cfg: NetCfg) -> None:
        for stage, sc in zip(self.stages, cfg.stages):
            for block in stage.blocks:
                if isinstance(block.attn, AgentAttention):
                    block.attn.set_train_size(sc.block_kwargs["train_size"])
                else:
                    block.attn.set_window_size(sc.block_kwargs["window_size"])


def agent_swin_cfg_from_official(official_kwargs: dict[str, Any]) -> tuple[NetCfg, dict[str, Any]]:
    """Zoo config for the official ``AgentSwinTransformer(**kwargs)`` constructor arguments (its defaults
    where one is missing). Returns ``(cfg, model_kwargs)`` with ``num_classes`` and ``in_chans``; ``ape=True``
    and unknown arguments raise a ValueError."""
    kw = dict(official_kwargs)
    if kw.pop("ape", False):
        raise ValueError("agent: official option ape=True is not supported (no official config uses it)")
    kw.pop("use_checkpoint", None)
    kw.pop("attn_drop_rate", None)
    model_kwargs = dict(num_classes=kw.pop("num_classes", 1000), in_chans=kw.pop("in_chans", 3))
    cfg = agent_swin_cfg(
        embed_dim=kw.pop("embed_dim", 96), depths=kw.pop("depths", (2, 2, 6, 2)),
        num_heads=kw.pop("num_heads", (3, 6, 12, 24)),
        agent_num=tuple(int(a) for a in kw.pop("agent_num", (9, 16, 49, 49))),
        attn_type=kw.pop("attn_type", "BBBB"), window_size=kw.pop("window_size", 7),
        img_size=kw.pop("img_size", 224), patch_size=kw.pop("patch_size", 4), mlp_ratio=kw.pop("mlp_ratio", 4.0),
        qkv_bias=kw.pop("qkv_bias", True), qk_scale=kw.pop("qk_scale", None), drop=kw.pop("drop_rate", 0.0),
        drop_path_rate=kw.pop("drop_path_rate", 0.1), patch_norm=kw.pop("patch_norm", True),
    )
    if kw:
        raise ValueError(f"agent: unknown official AgentSwinTransformer arguments {sorted(kw)}")
    return cfg, model_kwargs


_SWIN = dict(agent_num=(9, 16, 49, 49))
# name -> kwargs of agent_swin_cfg (official cfgs/agent_swin_*.yaml)
SWIN_VARIANTS: dict[str, dict[str, Any]] = {
    "agent_swin_nano": dict(embed_dim=48, depths=(1, 1, 3, 1), num_heads=(2, 4, 8, 16), attn_type="AAAB",
                            drop_path_rate=0.0, **_SWIN),  # zoo addition
    "agent_swin_t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_type="AAAB",
                         drop_path_rate=0.2, **_SWIN),
    "agent_swin_s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), attn_type="AABB",
                         drop_path_rate=0.3, **_SWIN),
    "agent_swin_b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), attn_type="AAMB2",
                         drop_path_rate=0.5, **_SWIN),
}
