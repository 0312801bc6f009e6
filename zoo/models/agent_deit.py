"""Agent-DeiT (Agent attention, ECCV 2024): DeiT with agent attention (class token as a query/key).

A plain ViT (patch 16, class token, stride 16), so not the hierarchical skeleton of :mod:`zoo.models._base`.
It keeps its own small model class rather than timm's ``VisionTransformer``: an agent block needs the patch
grid ``(h, w)`` of the current input (its agents are a 2-D pooling of the patch tokens, its biases are
resized to the grid), which timm's blocks are not given (they see only the token sequence, so a non-square
input's grid cannot be recovered inside a block); passing it would mean replacing timm's block loop,
``forward_intermediates`` and feature paths anyway. The variants, converter and timm registration are in
:mod:`zoo.models.agent`.

Official code: LeapLabTHU/Agent-Attention@207ce3e ``agent_transformer/models/agent_deit.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import get_device_dtype
from timm.models._features import feature_take_indices  # (no public name in timm 1.0)
from torch import nn

from ..layers import AgentAttention, Block, PatchEmbed, TokenAttention, resample_abs_pos_embed
from ._base import check_image_batch, check_model_args, input_hw, record_input_size

__all__ = ["DEIT_VARIANTS", "AgentVisionTransformer", "DeitBlock"]


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
        img_size: int | tuple[int, int] = 224,
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
        check_model_args("AgentVisionTransformer", num_classes=num_classes, in_chans=in_chans,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_size = patch_size
        self.img_size = input_hw("AgentVisionTransformer", img_size, square=True)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
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
    def set_input_size(self, img_size: int | tuple[int, int] | None = None) -> None:
        """timm's ``set_input_size``: make ``img_size`` (square) the model's input size, as the official 448 px
        model differs from the 224 px one: ``pos_embed`` resampled (bilinear) to the new patch grid and every
        agent block's biases resized to it, as the converter does for a checkpoint loaded at that size; the
        recorded size (``pretrained_cfg['input_size']``, timm's traits) follows. Any input >= 32 px runs
        before and after (the position terms are resized at run time), and at the new size the outputs equal
        the unchanged model's up to rounding."""
        if img_size is None:
            img_size = self.img_size
        h = input_hw("AgentVisionTransformer.set_input_size", img_size, square=True)[0]
        grid = (h // self.patch_size, h // self.patch_size)
        if grid != self.grid_size:
            old = self.pos_embed
            with torch.no_grad():
                new = resample_abs_pos_embed(old.detach(), grid, self.grid_size, num_prefix_tokens=1)
            self.pos_embed = nn.Parameter(new, requires_grad=old.requires_grad)
            for block in self.blocks:
                if isinstance(block.attn, AgentAttention):
                    block.attn.set_train_size(grid)
            self.grid_size = grid
        self.img_size = (h, h)
        record_input_size(self, self.img_size)

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
        dd = get_device_dtype(self)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)  # a new head follows the model's train/eval mode

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
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
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


DEIT_VARIANTS: dict[str, dict[str, Any]] = {
    "agent_deit_t": dict(embed_dim=192, depth=12, num_heads=3, agent_num=(49,) * 4, drop_path_rate=0.0),
    "agent_deit_s": dict(embed_dim=384, depth=12, num_heads=6, agent_num=(49,) * 4, drop_path_rate=0.1),
    "agent_deit_b": dict(embed_dim=768, depth=12, num_heads=12, agent_num=(81,) * 4, agent_layers=4,
                         drop_path_rate=0.3),
}

