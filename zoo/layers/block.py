"""The one pre-norm residual block every family's attention stages are made of."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .drop import DropPath, LayerScale
from .mlp import Mlp


class Block(nn.Module):
    """Pre-norm residual block around any token mixer, on channels-last maps ``[B, H, W, C]``.

    ``x = x + pos(x)`` (optional, e.g. BiFormer's depthwise conv), then
    ``x = x + drop_path(ls1(attn(norm1(x))))`` and ``x = x + drop_path(ls2(mlp(norm2(x))))``.
    ``mixer`` is any module mapping ``[B, H, W, C] -> [B, H, W, C]`` (window, grid, routed, agent,
    neighborhood attention...). ``layer_scale`` None/0 disables layer scale (plain residual).
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        mlp_ratio: float = 4.0,
        mlp: nn.Module | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: str | Callable[[], nn.Module] = "gelu",
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        pos: nn.Module | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.pos = pos
        self.norm1 = norm_layer(dim, **dd)
        self.attn = mixer
        self.ls1 = LayerScale(dim, layer_scale, **dd) if layer_scale else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = mlp if mlp is not None else Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **dd)
        self.ls2 = LayerScale(dim, layer_scale, **dd) if layer_scale else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos(x)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x
