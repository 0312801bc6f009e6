"""Agent-DeiT (Agent attention, ECCV 2024): DeiT with agent attention (class token as a query/key).

A plain ViT (patch 16, class token, stride 16), so not the hierarchical skeleton of :mod:`zoo.models._base`:
it is timm's :class:`~timm.models.vision_transformer.VisionTransformer` with agent blocks (``block_fn``), and
timm's model gives it ``forward_features``, ``forward_head``, ``forward_intermediates`` (laid out here as the
zoo's maps), ``prune_intermediate_layers``, ``reset_classifier``, ``feature_info`` and ``group_matcher``.
What this file adds: the blocks, the bilinear ``pos_embed`` resize (official; timm's is bicubic), the patch
grid for the blocks, ``set_input_size`` for the agent biases, and the official ``no_weight_decay``.

Shapes: image ``[B, 3, H, W]`` (any H, W >= 32; zero-padded bottom/right to a multiple of 16) → patch grid
``h × w = ⌈H/16⌉ × ⌈W/16⌉`` → tokens ``[B, 1 + h·w, C]`` (class token first) through every block →
``forward_features``: the tokens after the final norm; ``forward_head``: the class token (``'token'``) or the
mean of the patch tokens (``'avg'``) → logits; ``forward_intermediates``: per-block patch maps ``[B, C, h, w]``
(or ``[B, h, w, C]`` with ``output_fmt='NHWC'``).

The patch grid: an agent block pools its agents from the patch tokens laid out as the ``h × w`` map and
resizes its biases to that map, but timm's block loop hands a block the token sequence only, from which a
non-square grid cannot be recovered. So the model and its blocks share one :class:`PatchGrid`: the model's
``_pos_embed`` (which sees the patch map ``[B, h, w, C]`` right before the blocks) writes ``(h, w)`` there,
and every block reads it. The grid is the traced size under export (the same Python values a local variable
would carry), so exported graphs stay dynamic in H and W. It is the grid of the latest forward in the calling thread
(thread-local, so threads sharing the model at different sizes are safe; a block also refuses tokens that do
not fill the grid). Gradient checkpointing is done by each block, which passes the grid it ran on to the
recompute, so a forward at another size before the backward does not change it.

The variants, converter and timm registration are in :mod:`zoo.models.agent`.
Official code: LeapLabTHU/Agent-Attention@207ce3e ``agent_transformer/models/agent_deit.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

import timm.layers
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import AgentAttention, Block, TokenAttention, resample_abs_pos_embed
from ._base import check_image_batch, check_model_args, input_hw, record_input_size

__all__ = ["DEIT_VARIANTS", "AgentVisionTransformer", "DeitBlock", "PatchGrid"]

# official rule: block i gets agent_num[STAGE_OF_PAIR[i // 2]] agents (the last entry beyond block 11)
STAGE_OF_PAIR = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}


class PatchGrid(threading.local):
    """The patch grid ``hw = (h, w)`` of the input the model is running on (written by the model, read by its
    blocks; see the module docstring). Thread-local: each thread sees the grid of its own latest forward (a
    thread that has not run one sees the grid given here), so threads sharing one model at different input
    sizes do not read each other's grid. Copies and pickles keep the calling thread's grid."""

    def __init__(self, hw: tuple[int, int]):
        self.hw = hw

    def __reduce__(self):  # threading.local cannot be pickled or deep-copied as it is
        return (PatchGrid, (self.hw,))


class DeitBlock(Block):
    """Pre-norm ViT block on tokens ``[B, 1 + h·w, C]`` (class token first): agent attention
    (:class:`~zoo.layers.AgentAttention` with ``cls_token=True``, on the patch grid ``grid.hw``) or plain
    attention (:class:`~zoo.layers.TokenAttention`). Keys as official ``blocks.i``:
    ``norm1, attn.*, norm2, mlp.fc1, mlp.fc2``. ``grad_checkpointing``: the block checkpoints itself, with the
    grid as an argument, so the backward recomputes it on the grid of its own forward."""

    def __init__(self, dim: int, mixer: nn.Module, grid: PatchGrid, **kwargs: Any):
        super().__init__(dim, mixer, **kwargs)
        self.grid = grid
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(self.forward_on_grid, x, self.grid.hw, use_reentrant=False)
        return self.forward_on_grid(x, self.grid.hw)

    def forward_on_grid(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        y = self.norm1(x)
        y = self.attn.forward_tokens(y, hw) if isinstance(self.attn, AgentAttention) else self.attn(y)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def deit_block(
    *, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, proj_drop: float, drop_path: float,
    norm_layer: type[nn.Module], depth: int, device=None, dtype=None,
    grid: PatchGrid, agent_num: Sequence[int], agent_layers: int, train_size: tuple[int, int], **_timm: Any,
) -> DeitBlock:
    """timm's ``block_fn`` for block ``depth`` (its index): agent attention in the first ``agent_layers``
    blocks, plain attention after. The other keywords timm passes (``qk_norm``, ``init_values``, ...) are
    timm's defaults here: :class:`AgentVisionTransformer` does not expose them."""
    dd = {"device": device, "dtype": dtype}
    if depth < agent_layers:
        mixer: nn.Module = AgentAttention(
            dim, num_heads, agent_num=int(agent_num[STAGE_OF_PAIR.get(depth // 2, 3)]), train_size=train_size,
            qkv_layout="qkv", qkv_bias=qkv_bias, cls_token=True, proj_drop=proj_drop, **dd,
        )
    else:
        mixer = TokenAttention(dim, num_heads, qkv_bias, proj_drop, **dd)
    return DeitBlock(dim, mixer, grid, mlp_ratio=mlp_ratio, norm_layer=norm_layer, drop=proj_drop,
                     drop_path=drop_path, **dd)


class CheckedPatchEmbed(timm.layers.PatchEmbed):
    """timm's ``PatchEmbed`` (keys ``proj.weight, proj.bias``) that first gives one clear error for a bad image
    batch (rank, channels, smaller than 32 px, NaN/Inf), as every zoo model does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.proj.in_channels, 32)
        return super().forward(x)


def _check_pool(what: str, global_pool: str) -> None:
    if global_pool not in ("token", "avg", ""):  # (timm's others would add modules the official model lacks)
        raise ValueError(f"{what}: global_pool must be 'token', 'avg' or '', got {global_pool!r}")


class AgentVisionTransformer(VisionTransformer):
    """Agent-DeiT: a DeiT (ViT, patch 16, class token) whose first ``agent_layers`` blocks use agent attention.

    timm's ViT with ``dynamic_img_size`` and ``dynamic_img_pad`` (any input size); ``global_pool``: ``'token'``
    (class token), ``'avg'`` (mean of the patch tokens, still after the final ``norm``) or ``''``. Keys equal
    the official ``agent_deit.py`` ``VisionTransformer``: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.i.*``, ``norm``, ``head``. Block ``i`` gets ``agent_num[STAGE_OF_PAIR[i // 2]]`` agents (official
    rule) if ``i < agent_layers`` (default: every block), plain attention otherwise. Other input sizes:
    ``pos_embed`` and the agent biases are resized bilinearly at run time (the official downstream rule;
    timm's own ViT resizes ``pos_embed`` bicubically).
    """

    def __init__(
        self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
        num_classes: int = 1000, global_pool: str = "token", embed_dim: int = 192, depth: int = 12,
        num_heads: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        agent_num: Sequence[int] = (49, 49, 49, 49), agent_layers: int | None = None,
        drop_rate: float = 0.0, drop_path_rate: float = 0.0, device=None, dtype=None,
    ):
        what = type(self).__name__
        _check_pool(what, global_pool)
        if len(agent_num) != 4:
            raise ValueError(f"{what}: agent_num needs 4 entries (official), got {agent_num}")
        check_model_args(what, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                         drop_path_rate=drop_path_rate)
        img_hw = input_hw(what, img_size, square=True)
        train_grid = (img_hw[0] // patch_size, img_hw[1] // patch_size)
        grid = PatchGrid(train_grid)
        block_fn = partial(deit_block, grid=grid, agent_num=tuple(agent_num), train_size=train_grid,
                           agent_layers=depth if agent_layers is None else agent_layers)
        super().__init__(
            img_size=img_hw, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, fc_norm=False, dynamic_img_size=True, dynamic_img_pad=True, drop_rate=drop_rate,
            pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            weight_init="skip", embed_layer=CheckedPatchEmbed, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            block_fn=block_fn, device=device, dtype=dtype,
        )
        self.patch_grid = grid
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # official init; the modules initialised themselves
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def img_size(self) -> tuple[int, int]:
        """The input size the model records (and its ``pos_embed`` and agent biases are defined at)."""
        return tuple(self.patch_embed.img_size)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing per block (:class:`DeitBlock`), not in timm's block loop: a block keeps the
        grid of its forward for the recompute."""
        for block in self.blocks:
            block.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The official model's two (timm's list also names tokens this model does not have)."""
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            _check_pool(f"{type(self).__name__}.reset_classifier", global_pool)
        super().reset_classifier(num_classes, global_pool)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch map ``[B, h, w, C]`` → tokens ``[B, 1 + h·w, C]``: the class token first, ``pos_embed``
        resized (bilinear) to ``h × w`` and added; ``(h, w)`` becomes the blocks' grid."""
        B, h, w, C = x.shape
        self.patch_grid.hw = (h, w)
        pos = resample_abs_pos_embed(self.pos_embed, (h, w), self.patch_embed.grid_size, num_prefix_tokens=1)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, h * w, C)], dim=1)
        return self.pos_drop(x + pos)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, *,
                              output_fmt: str = "NCHW", **kwargs: Any):
        """timm's ``forward_intermediates`` (keywords ``norm``, ``stop_early``, ``intermediates_only``,
        ``return_prefix_tokens``, ``output_dict``) with the patch maps laid out ``NCHW`` ``[B, C, h, w]`` or
        ``NHWC`` ``[B, h, w, C]``, as the zoo's other families (also for an empty batch)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        out = super().forward_intermediates(x, indices, output_fmt="NLC", **kwargs)
        h, w = self.patch_grid.hw

        def as_map(y):  # patch tokens [B, h·w, C] (or timm's (tokens, prefix) pair) -> the map
            if isinstance(y, tuple):
                return as_map(y[0]), y[1]
            y = y.reshape(y.shape[0], h, w, y.shape[-1])
            return y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y

        if isinstance(out, dict):
            out["image_intermediates"] = [as_map(y) for y in out["image_intermediates"]]
            return out
        if kwargs.get("intermediates_only", False):
            return [as_map(y) for y in out]
        return out[0], [as_map(y) for y in out[1]]

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, patch_size: Any = None) -> None:
        """timm's ``set_input_size``: make ``img_size`` (square) the model's input size, as the official 448 px
        model differs from the 224 px one: ``pos_embed`` resampled (bilinear) to the new patch grid and every
        agent block's biases resized to it, as the converter does for a checkpoint loaded at that size; the
        recorded size (``pretrained_cfg['input_size']``, timm's traits) follows. Any input >= 32 px runs
        before and after (the position terms are resized at run time), and at the new size the outputs equal
        the unchanged model's up to rounding. The patch size is the weights' (``patch_size`` is refused)."""
        what = f"{type(self).__name__}.set_input_size"
        if patch_size is not None:
            raise ValueError(f"{what}: the patch size is fixed by the weights (patch_embed.proj), got {patch_size}")
        hw = input_hw(what, self.img_size if img_size is None else img_size, square=True)
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=hw)
        grid = self.patch_embed.grid_size
        if grid != old_grid:
            old = self.pos_embed
            with torch.no_grad():
                new = resample_abs_pos_embed(old.detach(), grid, old_grid, num_prefix_tokens=1)
            self.pos_embed = nn.Parameter(new, requires_grad=old.requires_grad)
            for block in self.blocks:
                if isinstance(block.attn, AgentAttention):
                    block.attn.set_train_size(grid)
        record_input_size(self, hw)


DEIT_VARIANTS: dict[str, dict[str, Any]] = {
    "agent_deit_t": dict(embed_dim=192, depth=12, num_heads=3, agent_num=(49,) * 4, drop_path_rate=0.0),
    "agent_deit_s": dict(embed_dim=384, depth=12, num_heads=6, agent_num=(49,) * 4, drop_path_rate=0.1),
    "agent_deit_b": dict(embed_dim=768, depth=12, num_heads=12, agent_num=(81,) * 4, agent_layers=4,
                         drop_path_rate=0.3),
}
