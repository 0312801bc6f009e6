"""Plain multi-head self-attention over a token sequence (no map, no partition)."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .linear import Linear


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
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = ops.attention(q, k, v, None, scale=self.head_dim**-0.5)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

