"""Agent attention (ECCV 2024): Agent-Swin, Agent-PVT and Agent-DeiT.

Agent attention pools the queries to a small ``p×p`` grid of *agent* tokens; the agents first attend to all
keys, then every query attends to the agents (two softmax attentions, linear in the number of tokens), plus
a depthwise 3×3 conv of V and learned agent position biases (:class:`~zoo.layers.AgentAttention`).

* **Agent-Swin** (``agent_swin_*``): Swin-T/S/B whose blocks are chosen per stage by ``attn_type``: ``A`` =
  agent attention over the whole stage map, ``B`` = plain Swin shifted-window attention (window 7, shift on odd
  blocks), ``Mk`` = the first ``k`` blocks ``A``, the rest ``B``. T: ``AAAB``, S: ``AABB``, B: ``AAMB2``
  (a ``M`` stage takes its ``k`` from the characters after the four stage letters). Agents 9/16/49/49.
* **Agent-PVT** (``agent_pvt_*``): PVT v1 with agent attention in every block, no spatial reduction
  (``agent_sr_ratios='1111'``), per-stage absolute position embeddings, no final norm.
* **Agent-DeiT** (``agent_deit_*``): DeiT with agent attention (class token as a query/key) — a plain ViT,
  stride 16, see :class:`AgentVisionTransformer`.

Official code: LeapLabTHU/Agent-Attention@207ce3e ``agent_transformer/models/agent_{swin,pvt,deit}.py``,
configs ``agent_transformer/cfgs/agent_{swin,pvt,deit}_*.yaml``.

Any input size works. The agent biases are defined at the training map size (224 px) and resized at run
time (as the official downstream code); Swin ``B`` blocks pad the map to a multiple of the window (like
official downstream Swin; padded tokens are zeros, not masked), and use a window of ``min(H, W)`` without
shift when the map is not larger than the window (what official Swin decides from ``img_size``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs
from torch import nn

from .. import ops
from ..layers import (
    AbsPosEmbed,
    AgentAttention,
    Block,
    PartitionAttention,
    PatchEmbed,
    PatchEmbedDownsample,
    PatchMerging,
    RelPosBias,
)
from ..layers.agent import RANK5_BIASES, official_agent_bias
from ..layers.mlp import linear_act
from ._base import NetCfg, StageCfg, build_backbone, register_block, register_downsampler, register_stem
from ._convert import check_fits, map_keys, unwrap_state_dict
from ._family import Family, tag_input_size

__all__ = [
    "FAMILY",
    "AgentVisionTransformer",
    "DeitBlock",
    "ShiftedWindowAttention",
    "TokenAttention",
    "checkpoint_filter_fn",
    "agent_swin_cfg",
    "agent_pvt_cfg",
    "agent_swin_cfg_from_official",
]


# ------------------------------------------------------------------------------------------------ parts
class ShiftedWindowAttention(PartitionAttention):
    """Swin (shifted) window attention on ``[B, H, W, C]`` with a Swin relative position bias table.

    Keys: ``qkv``, ``proj``, ``rel_pos.relative_position_bias_table`` (official ``attn.qkv``, ``attn.proj``,
    ``attn.relative_position_bias_table``; the official ``relative_position_index`` / ``attn_mask`` buffers
    are rebuilt). With ``shift`` the map is rolled by ``-window // 2`` before partitioning and keys from
    another region of the rolled map get ``-100`` (official Swin mask). The map is zero-padded to a
    multiple of the window first (official downstream Swin). If ``min(H, W) <= window`` the call uses one
    window of ``min(H, W)`` without shift (official: decided from ``input_resolution``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift: bool = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        if window_size < 1:
            raise ValueError(f"ShiftedWindowAttention: window_size must be >= 1, got {window_size}")
        super().__init__(
            dim, num_heads, "window", window_size, qkv_bias=qkv_bias, qk_scale=qk_scale,
            pos_bias=RelPosBias(window_size, num_heads, layout="swin", **dd), pos_bias_name="rel_pos",
            mask_padding=False, proj_drop=proj_drop, **dd,
        )
        self.window_size = window_size
        self.shift = shift

    @staticmethod
    def shift_mask(hw: tuple[int, int], window: int, shift: int, device=None) -> torch.Tensor:
        """Official Swin SW-MSA mask ``[nW, N, N]``: 0 within a region of the rolled map, -100 across."""
        Hp, Wp = hw

        def region(n: int) -> torch.Tensor:  # 0 | 1 | 2 for the slices [0, n-w), [n-w, n-s), [n-s, n)
            i = torch.arange(n, device=device)
            return (i >= n - window).long() + (i >= n - shift).long()

        ids = (region(Hp)[:, None] * 3 + region(Wp)[None, :]).to(torch.float32)
        win = ops.window_partition(ids.reshape(1, Hp, Wp, 1), window)[..., 0]  # [nW, N]
        diff = win[:, None, :] - win[:, :, None]
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.dim() != 4:
            raise ValueError(f"ShiftedWindowAttention expects [B, H, W, C], got shape {tuple(x.shape)}")
        B, H, W, C = x.shape
        ops.refuse_symbolic_sizes(f"{type(self).__name__} (Swin window attention)", H, W)
        tracing = ops.is_tracing()
        if tracing:  # the eager choice below as arithmetic on the traced size (the graph keeps it dynamic)
            small = ops.size_min(H, W)
            ws = ops.size_min(small, self.window_size)
            shift = (self.window_size // 2) * ops.greater(small, self.window_size) if self.shift else 0
        else:
            ws = self.window_size
            small = min(H, W) <= ws
            if small:
                ws = min(H, W)
            shift = ws // 2 if (self.shift and not small) else 0
        shifted = self.shift if tracing else bool(shift)
        x, pad = ops.pad_to_multiple(x, ws)
        padded = tracing or pad[0] or pad[1]  # tracing: always the padded path (dynamic H/W)
        Hp, Wp = x.shape[1], x.shape[2]
        if shifted:
            x = ops.roll_map(x, -shift)
        groups = ops.window_partition(x, ws)  # [B·nW, N, C]
        Bg, N, _ = groups.shape
        qkv = linear_act(self.qkv, groups).reshape(Bg, N, 3, self.num_heads, self.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.rel_pos((ws, ws)).unsqueeze(0)  # [1, heads, N, N]
        if shifted:  # (a shift of 0 while tracing gives an all-zero mask: one region per window)
            mask = self.shift_mask((Hp, Wp), ws, shift, x.device).to(q.dtype)  # [nW, N, N]
            bias = (bias + mask.unsqueeze(1)).repeat(B, 1, 1, 1)  # [B·nW, heads, N, N]
        out = ops.attention(q, k, v, bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(Bg, N, self.num_heads * self.dim_head)
        out = self.proj_drop(linear_act(self.proj, out))
        out = ops.window_merge(out, (ws, ws), (Hp, Wp))
        if shifted:
            out = ops.roll_map(out, shift)
        return out[:, :H, :W].contiguous() if padded else out

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


@register_downsampler("agent_swin_merge")
def _agent_swin_merge(in_dim: int, out_dim: int, *, device=None, dtype=None) -> nn.Module:
    """Swin patch merging (official ``layers.i.downsample``)."""
    return PatchMerging(in_dim, out_dim, device=device, dtype=dtype)


@register_block("agent_swin")
def _agent_swin_block(
    dim: int,
    *,
    index: int,
    depth: int,
    stage: int,
    drop_path: float,
    num_heads: int,
    attn_type: str = "A",
    agent_num: int = 49,
    train_size: int = 14,
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    qk_scale: float | None = None,
    drop: float = 0.0,
    device=None,
    dtype=None,
) -> nn.Module:
    """Agent-Swin block ``index`` of a stage whose kinds are ``attn_type`` (``A``, ``B`` or ``M<k>``).

    ``A``: agent attention (``agent_num`` agents, biases defined on a ``train_size`` map = the official
    ``min(WINDOW_SIZE, stage map)``); ``B``: Swin window attention of ``window_size`` (official
    ``max(7, WINDOW_SIZE // 8)``), shifted on odd ``index``. Official agent attention ignores ``qk_scale``.
    """
    dd = {"device": device, "dtype": dtype}
    kind = _stage_kinds(attn_type, depth)[index]
    if kind == "A":
        mixer: nn.Module = AgentAttention(
            dim, num_heads, agent_num=agent_num, train_size=train_size, qkv_layout="qkv", qkv_bias=qkv_bias,
            proj_drop=drop, **dd,
        )
    else:
        mixer = ShiftedWindowAttention(
            dim, num_heads, window_size, shift=index % 2 == 1, qkv_bias=qkv_bias, qk_scale=qk_scale,
            proj_drop=drop, **dd,
        )
    return Block(dim, mixer, mlp_ratio=mlp_ratio, drop=drop, drop_path=drop_path, **dd)


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
    res = img_size // patch_size
    stages = []
    for i in range(n):
        stage_res = res // 2**i
        stages.append(
            StageCfg(
                depth=int(depths[i]),
                dim=embed_dim * 2**i,
                block="agent_swin",
                block_kwargs=dict(
                    num_heads=int(num_heads[i]), attn_type=patterns[i], agent_num=int(agent_num[i]),
                    train_size=min(window_size, stage_res), window_size=swin_window, mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                ),
                downsample=None if i == 0 else "agent_swin_merge",
            )
        )
    return NetCfg(
        stem="agent_patch_embed",
        stem_kwargs=dict(patch_size=patch_size, norm=patch_norm),
        stages=tuple(stages),
        norm="layernorm",
        norm_eps=1e-5,
        head="classifier",
        drop_path_rate=drop_path_rate,
        # official no_weight_decay_keywords: relative_position_bias_table; the agent biases are >= 2-D
        no_weight_decay=("relative_position_bias_table",),
        min_input_size=32,
    )


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


@register_block("agent_pvt")
def _agent_pvt_block(
    dim: int,
    *,
    index: int,
    depth: int,
    stage: int,
    drop_path: float,
    num_heads: int,
    agent_num: int = 49,
    train_size: int = 14,
    sr_ratio: int = 1,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop: float = 0.0,
    norm_eps: float = 1e-6,
    device=None,
    dtype=None,
) -> nn.Module:
    """Agent-PVT block: agent attention with ``q``/``kv`` projections (optional spatial reduction
    ``sr_ratio``), biases defined on the ``train_size`` stage map; LayerNorm eps 1e-6."""
    dd = {"device": device, "dtype": dtype}
    mixer = AgentAttention(
        dim, num_heads, agent_num=agent_num, train_size=train_size, qkv_layout="q_kv", qkv_bias=qkv_bias,
        sr_ratio=sr_ratio, proj_drop=drop, **dd,
    )
    return Block(
        dim, mixer, mlp_ratio=mlp_ratio, drop=drop, drop_path=drop_path,
        norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=norm_eps, **kw), **dd,
    )


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
        min_input_size=32,
    )


_SWIN = dict(agent_num=(9, 16, 49, 49))
# name -> kwargs of agent_swin_cfg / agent_pvt_cfg (official cfgs/agent_{swin,pvt}_*.yaml)
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
PVT_VARIANTS: dict[str, dict[str, Any]] = {
    "agent_pvt_t": dict(depths=(2, 2, 2, 2), drop_path_rate=0.1),
    "agent_pvt_s": dict(depths=(3, 4, 6, 3), drop_path_rate=0.1),
    "agent_pvt_m": dict(depths=(3, 4, 18, 3), drop_path_rate=0.3),
    "agent_pvt_l": dict(depths=(3, 8, 27, 3), drop_path_rate=0.3),
}


# ------------------------------------------------------------------------------------------------- DeiT
class TokenAttention(nn.Module):
    """Plain multi-head self-attention over tokens ``[B, N, C]`` (timm ViT ``Attention``; keys ``qkv``,
    ``proj``) — the non-agent blocks of Agent-DeiT-B."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"TokenAttention: num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = linear_act(self.qkv, x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = ops.attention(q, k, v, None, scale=self.head_dim**-0.5)
        return self.proj_drop(linear_act(self.proj, out.transpose(1, 2).reshape(B, N, C)))


class DeitBlock(Block):
    """Pre-norm ViT block on tokens ``[B, 1 + H·W, C]`` (class token first): agent attention
    (:class:`~zoo.layers.AgentAttention` with ``cls_token=True``) or plain attention (:class:`TokenAttention`).
    ``forward(x, hw)``; keys as official ``blocks.i``: ``norm1, attn.*, norm2, mlp.fc1, mlp.fc2``."""

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        y = self.norm1(x)
        y = self.attn.forward_tokens(y, hw) if isinstance(self.attn, AgentAttention) else self.attn(y)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class AgentVisionTransformer(nn.Module):
    """Agent-DeiT: a DeiT (ViT, patch 16, class token) whose first ``agent_layers`` blocks use agent attention.

    timm ViT API: ``forward_features`` → tokens ``[B, 1 + h·w, C]`` (after the final norm),
    ``forward_head(pre_logits=...)`` (``global_pool='token'``: the class token; ``'avg'``: mean of the patch
    tokens), ``forward_intermediates`` (per-block patch maps, NCHW), ``feature_info`` (every block, reduction
    16), ``reset_classifier``, ``no_weight_decay`` (``pos_embed``, ``cls_token``, as the official model).

    Keys equal the official ``agent_deit.py`` ``VisionTransformer``: ``cls_token``, ``pos_embed``,
    ``patch_embed.proj``, ``blocks.i.*``, ``norm``, ``head``. Block ``i`` gets
    ``agent_num[{0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}[i // 2]]`` agents (official rule). Any input size: the
    image is zero-padded to a multiple of 16, ``pos_embed`` and the agent biases are resized bilinearly.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        agent_num: Sequence[int] = (49, 49, 49, 49),
        agent_layers: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"AgentVisionTransformer: global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if len(agent_num) != 4:
            raise ValueError(f"AgentVisionTransformer: agent_num needs 4 entries (official), got {agent_num}")
        from ._base import check_model_args

        check_model_args("AgentVisionTransformer", num_classes=num_classes, in_chans=in_chans,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.drop_rate = drop_rate
        agent_layers = depth if agent_layers is None else agent_layers
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm_layer=None, pad=True, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        n = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, embed_dim, **dd))
        self.pos_drop = nn.Dropout(drop_rate)
        stage_num = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]

        def norm(d, **kw):
            return nn.LayerNorm(d, eps=1e-6, **kw)

        blocks = []
        for i in range(depth):
            if i < agent_layers:
                mixer: nn.Module = AgentAttention(
                    embed_dim, num_heads, agent_num=int(agent_num[stage_num.get(i // 2, 3)]),
                    train_size=self.grid_size, qkv_layout="qkv", qkv_bias=qkv_bias, cls_token=True,
                    proj_drop=drop_rate, **dd,
                )
            else:
                mixer = TokenAttention(embed_dim, num_heads, qkv_bias, drop_rate, **dd)
            blocks.append(
                DeitBlock(embed_dim, mixer, mlp_ratio=mlp_ratio, norm_layer=norm, drop=drop_rate,
                          drop_path=dpr[i], **dd)
            )
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.norm = norm(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    # timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        from timm.layers.helpers import get_device_dtype

        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)  # a new head follows the model's train/eval mode

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        from ..layers import resample_abs_pos_embed
        from ._base import check_image_batch

        check_image_batch(x, self.in_chans, 32)
        x = self.patch_embed(x)  # [B, h, w, C]
        B, h, w, C = x.shape
        pos = resample_abs_pos_embed(self.pos_embed, (h, w), self.grid_size, num_prefix_tokens=1)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, h * w, C)], dim=1)
        return self.pos_drop(x + pos), (h, w)

    def _run_block(self, blk: nn.Module, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(blk, x, hw, use_reentrant=False)
        return blk(x, hw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, hw = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x, hw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs as patch maps ``[B, C, h, w]`` (NCHW) or ``[B, h, w, C]`` (NHWC); ``norm`` applies
        the final norm to each."""
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x, (h, w) = self._embed(x)
        blocks = self.blocks if (torch.jit.is_scripting() or not stop_early) else self.blocks[: max_index + 1]
        out = []
        for i, blk in enumerate(blocks):
            x = self._run_block(blk, x, (h, w))
            if i in take:
                y = self.norm(x) if norm else x
                y = y[:, self.num_prefix_tokens:].reshape(x.shape[0], h, w, y.shape[-1])
                out.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return out
        return self.norm(x), out

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        from timm.models._features import feature_take_indices

        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


# -------------------------------------------------------------------------------------------- converter
_DROP = re.compile(r".*\.attn\.relative_position_index$|.*\.attn_mask$")
_ATTN = r"(?:an|na|ah|aw|ha|wa|ac|ca)_bias|(?:qkv|q|kv|proj|dwc|sr|norm)\.(?:weight|bias)"
_BLOCK = rf"norm1\.(?:weight|bias)|norm2\.(?:weight|bias)|mlp\.fc[12]\.(?:weight|bias)|attn\.(?:{_ATTN})"
_SWIN_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^patch_embed\.(proj|norm)\.(weight|bias)$"), r"stem.\1.\2"),
    (re.compile(rf"^layers\.(\d+)\.blocks\.(\d+)\.({_BLOCK})$"), r"stages.\1.blocks.\2.\3"),
    (
        re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$"),
        r"stages.\1.blocks.\2.attn.rel_pos.relative_position_bias_table",
    ),
    (
        re.compile(r"^layers\.(\d+)\.downsample\.(norm|reduction)\.(weight|bias)$"),
        lambda m: f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}.{m.group(3)}",
    ),
    (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
]


def _pvt_stage(m: re.Match, rest: str) -> str:
    i = int(m.group(1)) - 1
    return f"stem.{rest}" if i == 0 else f"stages.{i}.downsample.{rest}"


_PVT_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^patch_embed(\d)\.(proj|norm)\.(weight|bias)$"),
     lambda m: _pvt_stage(m, f"embed.{m.group(2)}.{m.group(3)}")),
    (re.compile(r"^pos_embed(\d)$"), lambda m: _pvt_stage(m, "pos.pos_embed")),
    (re.compile(rf"^block(\d)\.(\d+)\.({_BLOCK})$"),
     lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{m.group(3)}"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
]
_DEIT_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^(cls_token|pos_embed)$"), r"\1"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(rf"^blocks\.(\d+)\.({_BLOCK})$"), r"blocks.\1.\2"),
    (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.\1"),
]

def _layout(keys: list[str]) -> str | None:
    """Which official (or zoo) layout a state dict is in."""
    ks = set(keys)
    if any(k.startswith("stem.") for k in ks) and any(k.startswith("stages.") for k in ks):
        return "zoo"
    if any(k.startswith("patch_embed1.") for k in ks) and any(k.startswith("block1.") for k in ks):
        return "pvt"
    if any(k.startswith("layers.") and ".attn." in k for k in ks) and "patch_embed.proj.weight" in ks:
        return "swin"
    if "cls_token" in ks and any(k.startswith("blocks.") and "_bias" in k for k in ks):
        return "deit"
    return None


def _resize_axes(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Linear (``align_corners=False``) resize of every axis where ``t`` and ``shape`` differ (agent biases)."""
    import torch.nn.functional as F

    for d, (a, b) in enumerate(zip(t.shape, shape)):
        if a != b:
            moved = t.movedim(d, -1)
            lead = moved.shape[:-1]
            r = F.interpolate(moved.reshape(1, -1, a).float(), size=b, mode="linear", align_corners=False)
            t = r.reshape(*lead, b).to(t.dtype).movedim(-1, d)
    return t


def _fit_to_model(out: dict, model: nn.Module) -> dict:
    """Resize resolution-dependent tensors (agent biases, abs pos embeds, Swin tables) to ``model``."""
    from ..layers import resample_abs_pos_embed, resize_rel_pos_bias_tables

    expected = model.state_dict()
    out = resize_rel_pos_bias_tables(out, model)
    for k, v in list(out.items()):
        if k not in expected or expected[k].shape == v.shape:
            continue
        want = expected[k].shape
        leaf = k.rsplit(".", 1)[-1]
        if leaf in ("ah_bias", "aw_bias", "ha_bias", "wa_bias") and v.dim() == len(want):
            out[k] = _resize_axes(v, want)
        elif leaf == "pos_embed" and v.dim() == 3:
            prefix = 1 if k == "pos_embed" else 0  # DeiT: class token first; PVT: none
            n = want[1] - prefix
            mod = model.get_submodule(k.rsplit(".", 1)[0]) if "." in k else model
            hw = getattr(mod, "grid_size", None) or (int(n**0.5), int(n**0.5))
            out[k] = resample_abs_pos_embed(v, hw, num_prefix_tokens=prefix)
    return out


def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Official Agent-Swin / Agent-PVT / Agent-DeiT checkpoint → zoo state dict (strict, explicit key map).

    Accepts a plain state dict or one wrapped in ``model`` / ``state_dict_ema`` / ``state_dict``. Swin: drops
    ``relative_position_index`` and ``attn_mask`` (rebuilt), moves ``layers.i.downsample`` to
    ``stages.{i+1}.downsample``, ``attn.relative_position_bias_table`` to ``attn.rel_pos.*``, ``head`` to
    ``head.fc``. PVT: ``patch_embed1``/``pos_embed1`` → ``stem.embed``/``stem.pos``, ``patch_embed{i}``/
    ``pos_embed{i}`` → ``stages.{i-1}.downsample.{embed,pos}``, ``block{i}`` → ``stages.{i-1}.blocks``. DeiT:
    keys unchanged. With ``model``: agent biases, position embeddings and bias tables are resized to the
    model's training size, then every zoo key nothing mapped to, every extra key and every shape mismatch
    is named in one ValueError (the classifier is left to timm, which drops it when ``num_classes`` differs).
    """
    sd = unwrap_state_dict(state_dict)
    keys = list(sd)
    layout = _layout(keys)
    if layout is None:
        raise FAMILY.not_a_checkpoint(
            keys, "no 'layers.*.attn', 'patch_embed1.*' or 'cls_token' + agent 'blocks.*' keys"
        )
    if layout == "zoo":
        out = dict(sd)
    else:
        table = {"swin": _SWIN_MAP, "pvt": _PVT_MAP, "deit": _DEIT_MAP}[layout]
        out, unmatched = map_keys(sd, table, drop=_DROP)
        if unmatched:
            raise ValueError(
                f"checkpoint_filter_fn(agent): {len(unmatched)} official Agent-{layout} keys have no mapping "
                f"(unsupported options such as ape, or another model): {unmatched}"
            )
    # the official (and older zoo) rank-5 [1, ...] ah/aw/ha/wa biases -> the zoo's rank-4 storage
    out = {k: official_agent_bias(v) if k.rsplit(".", 1)[-1] in RANK5_BIASES else v for k, v in out.items()}
    if model is not None:
        out = _fit_to_model(out, model)
        expected = model.state_dict()
        is_head = re.compile(r"^head\.(fc\.)?(weight|bias)$").match
        check_fits(
            out, expected, "agent", "another variant or family?", what=f"the {layout} checkpoint", is_head=is_head
        )
    return out


# -------------------------------------------------------------------------------------- official configs
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


# -------------------------------------------------------------------------------------------------- timm
_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
FAMILY = Family(
    "agent", "Agent-Swin/PVT/DeiT", markers=("attn.agent", "patch_embed1.", "cls_token", "an_bias"),
    # the official repository carries no LICENSE file
    cfg=dict(first_conv="stem.proj", license="unknown", paper_ids="arXiv:2312.08874",
             origin_url="https://github.com/LeapLabTHU/Agent-Attention"),
)
_dcfg = FAMILY.tag_cfg


_PVT = dict(first_conv="stem.embed.proj")
_DEIT = dict(first_conv="patch_embed.proj", classifier="head")
# Release links from the official agent_transformer/README.md (TsinghuaCloud).
default_cfgs = generate_default_cfgs({
    "agent_swin_nano": _dcfg(),
    "agent_swin_t.official_in1k": _dcfg(_TSINGHUA.format("a2ddc1190c224f768a41")),
    "agent_swin_s.official_in1k": _dcfg(_TSINGHUA.format("f607172c9fea4d6e99bb")),
    "agent_swin_s.official_in1k_288": _dcfg(_TSINGHUA.format("09760394e93b4046a25e"), size=288),
    "agent_swin_b.official_in1k": _dcfg(_TSINGHUA.format("4fcd2d0114bb490483c3")),
    "agent_swin_b.official_in1k_384": _dcfg(_TSINGHUA.format("bb84ee9058954706a557"), size=384),
    "agent_pvt_t.official_in1k": _dcfg(_TSINGHUA.format("13fdf0e0a7c5498c934f"), **_PVT),
    "agent_pvt_s.official_in1k": _dcfg(_TSINGHUA.format("36b8be9a8863456685a3"), **_PVT),
    "agent_pvt_m.official_in1k": _dcfg(_TSINGHUA.format("4d00ecacf18b45f9b88c"), **_PVT),
    "agent_pvt_m.official_in1k_256": _dcfg(_TSINGHUA.format("654df734121643b19c52"), size=256, **_PVT),
    "agent_pvt_l.official_in1k": _dcfg(_TSINGHUA.format("040cfe0cfbbe4762ad09"), **_PVT),
    "agent_deit_t.official_in1k": _dcfg(_TSINGHUA.format("57e0904221824ee7b7af"), **_DEIT),
    "agent_deit_s.official_in1k": _dcfg(_TSINGHUA.format("fdd43304372541db8ea7"), **_DEIT),
    "agent_deit_s.official_in1k_448": _dcfg(_TSINGHUA.format("a228f86241c445f1969b"), size=448, **_DEIT),
    "agent_deit_b.official_in1k": _dcfg(_TSINGHUA.format("5115f15fdd7e4ab58fbc"), **_DEIT),
})


def _train_size(variant: str, kwargs: dict) -> int:
    """The square training resolution the position terms are defined at (:func:`tag_input_size`); pops
    ``img_size`` (the models take no such argument)."""
    h, w = tag_input_size(variant, kwargs)
    kwargs.pop("img_size", None)
    if h != w:
        raise ValueError(f"{variant}: img_size must be square, got {(h, w)}")
    return h


def _create_swin(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    img_size = _train_size(variant, kwargs)
    cfg = agent_swin_cfg(img_size=img_size, window_size=img_size // 4, **SWIN_VARIANTS[variant])
    return build_backbone(variant, cfg, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


def _create_pvt(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    img_size = _train_size(variant, kwargs)
    cfg = agent_pvt_cfg(img_size=img_size, **PVT_VARIANTS[variant])
    return build_backbone(variant, cfg, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


DEIT_VARIANTS: dict[str, dict[str, Any]] = {
    "agent_deit_t": dict(embed_dim=192, depth=12, num_heads=3, agent_num=(49,) * 4, drop_path_rate=0.0),
    "agent_deit_s": dict(embed_dim=384, depth=12, num_heads=6, agent_num=(49,) * 4, drop_path_rate=0.1),
    "agent_deit_b": dict(embed_dim=768, depth=12, num_heads=12, agent_num=(81,) * 4, agent_layers=4,
                         drop_path_rate=0.3),
}


def _create_deit(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    from ._pretrained import build_zoo_model

    img_size = _train_size(variant, kwargs)
    out_indices = kwargs.pop("out_indices", 3)
    return build_zoo_model(
        AgentVisionTransformer, variant, pretrained, checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **{**DEIT_VARIANTS[variant], "img_size": img_size, **kwargs},
    )


FAMILY.register_models(__name__, _create_swin, {
    "agent_swin_nano": "Agent-Swin-nano (zoo addition): embed 48, depths 1/1/3/1, heads 2/4/8/16, AAAB, "
                       "agents 9/16/49/49.",
    "agent_swin_t": "Agent-Swin-T (29 M): embed 96, depths 2/2/6/2, heads 3/6/12/24, AAAB, agents 9/16/49/49.",
    "agent_swin_s": "Agent-Swin-S (50 M): embed 96, depths 2/2/18/2, heads 3/6/12/24, AABB, agents 9/16/49/49.",
    "agent_swin_b": "Agent-Swin-B (88 M): embed 128, depths 2/2/18/2, heads 4/8/16/32, AAMB2, agents 9/16/49/49.",
})


FAMILY.register_models(__name__, _create_pvt, {
    "agent_pvt_t": "Agent-PVT-T (11.6 M): dims 64/128/320/512, depths 2/2/2/2, agents 9/16/49/49.",
    "agent_pvt_s": "Agent-PVT-S (20.6 M): dims 64/128/320/512, depths 3/4/6/3, agents 9/16/49/49.",
    "agent_pvt_m": "Agent-PVT-M (35.9 M): dims 64/128/320/512, depths 3/4/18/3, agents 9/16/49/49.",
    "agent_pvt_l": "Agent-PVT-L (48.7 M; official ``agent_pvt_large``, cfg ``agent_pvt_b.yaml``): depths 3/8/27/3.",
})


FAMILY.register_models(__name__, _create_deit, {
    "agent_deit_t": "Agent-DeiT-T (6.0 M): dim 192, depth 12, 3 heads, 49 agents in every block.",
    "agent_deit_s": "Agent-DeiT-S (22.7 M): dim 384, depth 12, 6 heads, 49 agents in every block.",
    "agent_deit_b": "Agent-DeiT-B (87.2 M): dim 768, depth 12, 12 heads, "
                    "agent attention (81 agents) in blocks 0-3 only.",
})
