"""Agent-PVT (Agent attention, ECCV 2024): PVT v1 with agent attention in every block.

No spatial reduction (``agent_sr_ratios='1111'``), per-stage absolute position embeddings (resampled to the
actual grid), no final norm. The variants, converter and timm registration are in :mod:`zoo.models.agent`.

Official code: LeapLabTHU/Agent-Attention@207ce3e ``agent_transformer/models/agent_pvt.py``, configs
``agent_transformer/cfgs/agent_pvt_*.yaml``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..layers import AbsPosEmbed, AgentAttention, PatchEmbed, PatchEmbedDownsample, resample_abs_pos_embed
from ._base import Backbone, BlockSite, NetCfg, StageCfg, input_hw, register_downsampler, register_mixer, register_stem

__all__ = ["PVT_VARIANTS", "AgentPVT", "PvtEmbed", "agent_pvt_cfg", "agent_pvt_resized"]


class PvtEmbed(nn.Module):
    """Agent-PVT stage entry: patch embedding (``embed``) then the stage's absolute position embedding
    (``pos``, resampled bilinearly to the actual grid as the official ``_get_pos_embed``).

    Keys: ``embed.proj``, ``embed.norm`` (official ``patch_embed{i}.proj/norm``), ``pos.pos_embed`` (official
    ``pos_embed{i}``). ``[B, C, H, W]`` images (stage 1) or ``[B, H, W, C]`` maps → ``[B, h, w, out_dim]``.
    """

    def __init__(self, embed: nn.Module, out_dim: int, grid_size: int, device=None, dtype=None):
        super().__init__()
        self.embed = embed
        self.pos = AbsPosEmbed(out_dim, grid_size, num_prefix_tokens=0, device=device, dtype=dtype)

    def set_grid_size(self, grid_size: int) -> None:
        """Another training grid (``set_input_size``): ``pos_embed`` resampled as the converter does."""
        pos, grid = self.pos, (grid_size, grid_size)
        if grid == pos.grid_size:
            return
        old = pos.pos_embed
        with torch.no_grad():
            new = resample_abs_pos_embed(old.detach(), grid, pos.grid_size, num_prefix_tokens=0)
        pos.pos_embed = nn.Parameter(new, requires_grad=old.requires_grad)
        pos.grid_size = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos(self.embed(x))


@register_stem("agent_pvt")
def _agent_pvt_stem(
    in_chans: int, out_dim: int, *, patch_size: int = 4, grid_size: int = 56, device=None, dtype=None
) -> nn.Module:
    """PVT stage-1 patch embedding (conv p×p/p, LayerNorm eps 1e-5, no padding) + ``pos_embed1``."""
    dd = {"device": device, "dtype": dtype}
    return PvtEmbed(PatchEmbed(in_chans, out_dim, patch_size, pad=False, **dd), out_dim, grid_size, **dd)


@register_downsampler("agent_pvt")
def _agent_pvt_down(in_dim: int, out_dim: int, *, grid_size: int = 28, device=None, dtype=None) -> nn.Module:
    """PVT stage-2..4 patch embedding (conv 2×2/2, LayerNorm eps 1e-5) + ``pos_embed{i}``."""
    dd = {"device": device, "dtype": dtype}
    return PvtEmbed(PatchEmbedDownsample(in_dim, out_dim, 2, pad=False, **dd), out_dim, grid_size, **dd)


@register_mixer("agent_pvt", norm_eps=1e-6)
def _agent_pvt_mixer(dim: int, site: BlockSite, num_heads: int, **kw) -> nn.Module:
    """Agent-PVT block (LayerNorm eps 1e-6): agent attention with ``q``/``kv`` projections; ``kw``: its
    ``agent_num``, ``train_size`` (the stage map its biases are defined on), ``sr_ratio`` (spatial reduction),
    ``qkv_bias``."""
    return AgentAttention(dim, num_heads, qkv_layout="q_kv", proj_drop=site.drop, **kw, **site.dd)


def agent_pvt_cfg(
    depths: Sequence[int] = (2, 2, 2, 2),
    embed_dims: Sequence[int] = (64, 128, 320, 512),
    num_heads: Sequence[int] = (1, 2, 5, 8),
    mlp_ratios: Sequence[float] = (8, 8, 4, 4),
    agent_num: Sequence[int] = (9, 16, 49, 49),
    agent_sr_ratios: Sequence[int] = (1, 1, 1, 1),
    img_size: int = 224,
    patch_size: int = 4,
    qkv_bias: bool = True,
    drop: float = 0.0,
    drop_path_rate: float = 0.1,
) -> NetCfg:
    """The :class:`NetCfg` of an Agent-PVT (official ``PyramidVisionTransformer`` with ``attn_type='AAAA'``).

    Stage ``i`` sees a ``img_size / (patch_size · 2**i)`` map at the training size: the size of its
    ``pos_embed`` and of its agent biases. No final norm (the official head pools the last stage's tokens).
    """
    n = len(depths)
    for name, v in (("embed_dims", embed_dims), ("num_heads", num_heads), ("mlp_ratios", mlp_ratios),
                    ("agent_num", agent_num), ("agent_sr_ratios", agent_sr_ratios)):
        if len(v) != n:
            raise ValueError(f"agent_pvt_cfg: {name} needs one entry per stage ({n}), got {len(v)}")
    res = img_size // patch_size
    stages = []
    for i in range(n):
        grid = res // 2**i
        stages.append(
            StageCfg(
                depth=int(depths[i]),
                dim=int(embed_dims[i]),
                block="agent_pvt",
                block_kwargs=dict(
                    num_heads=int(num_heads[i]), agent_num=int(agent_num[i]), train_size=grid,
                    sr_ratio=int(agent_sr_ratios[i]), mlp_ratio=float(mlp_ratios[i]), qkv_bias=qkv_bias,
                    drop=drop,
                ),
                downsample=None if i == 0 else "agent_pvt",
                downsample_kwargs={} if i == 0 else dict(grid_size=grid),
            )
        )
    return NetCfg(
        stem="agent_pvt",
        stem_kwargs=dict(patch_size=patch_size, grid_size=res),
        stages=tuple(stages),
        norm=None,
        head="classifier",
        drop_path_rate=drop_path_rate,
        # the official PVT recipe decays pos_embed (its no_weight_decay lists only a cls_token it does not have)
        no_weight_decay=(),
    )


def agent_pvt_resized(cfg: NetCfg, img_size: int) -> NetCfg:
    """``cfg`` at another training size (as :func:`agent_pvt_cfg` builds it): position embeddings and agent
    biases on the stage maps ``img_size / (patch · 2**i)``."""
    res = img_size // cfg.stem_kwargs.get("patch_size", 4)
    stages = tuple(
        dataclasses.replace(
            s, block_kwargs={**s.block_kwargs, "train_size": res // 2**i},
            downsample_kwargs={**s.downsample_kwargs, "grid_size": res // 2**i} if i else s.downsample_kwargs,
        )
        for i, s in enumerate(cfg.stages)
    )
    return cfg.replace(stem_kwargs={**cfg.stem_kwargs, "grid_size": res}, stages=stages)


class AgentPVT(Backbone):
    """:class:`~zoo.models.Backbone` of the Agent-PVT variants. ``set_input_size(img_size)`` (square) builds
    what the official 256 px model differs in (:func:`agent_pvt_resized`): every stage's ``pos_embed``
    resampled and every agent bias resized to the new stage maps, as the converter does for a checkpoint
    loaded into a model of that size. At the new size the outputs equal the unchanged model's (which
    resizes both at run time) up to rounding."""

    def resized_cfg(self, hw: tuple[int, int], window_size: int | tuple[int, int] | None = None) -> NetCfg:
        super().resized_cfg(hw, window_size)  # no window_size
        return agent_pvt_resized(self.cfg, input_hw("AgentPVT.set_input_size", hw, square=True)[0])

    def apply_cfg(self, cfg: NetCfg) -> None:
        self.stem.set_grid_size(cfg.stem_kwargs["grid_size"])
        for i, (stage, sc) in enumerate(zip(self.stages, cfg.stages)):
            if i:
                stage.downsample.set_grid_size(sc.downsample_kwargs["grid_size"])
            for block in stage.blocks:
                block.attn.set_train_size(sc.block_kwargs["train_size"])


# name -> kwargs of agent_pvt_cfg (official cfgs/agent_pvt_*.yaml)
PVT_VARIANTS: dict[str, dict[str, Any]] = {
    "agent_pvt_t": dict(depths=(2, 2, 2, 2), drop_path_rate=0.1),
    "agent_pvt_s": dict(depths=(3, 4, 6, 3), drop_path_rate=0.1),
    "agent_pvt_m": dict(depths=(3, 4, 18, 3), drop_path_rate=0.3),
    "agent_pvt_l": dict(depths=(3, 8, 27, 3), drop_path_rate=0.3),
}

