"""BiFormer's token mixers and position terms, on channels-last maps ``[B, H, W, C]``.

- :class:`BiLevelRoutingAttention`: bi-level routing attention (BRA, :func:`zoo.ops.routed_attention`)
  plus LePE, BiFormer stages 1-3; ``topk=-1`` (or ``≥ n_win²``) is dense attention over the map.
- :class:`AttentionLePE`: dense multi-head attention plus LePE on the input, BiFormer stage 4
  (``topk=-2`` in the official config). The same module in its dense mode, with the official options.
- :class:`DWConvPos` / :class:`LePE`: depthwise convolutions on channels-last maps: the per-block
  ``pos_embed`` residual (``Block(pos=...)``) and the locally-enhanced positional encoding.

Official key names (rayleizhu/BiFormer@1697bbb) and how they map here:
- BRA (``ops/bra_legacy.py``): ``attn.qkv.qkv.{weight,bias}`` (a ``QKVLinear`` wrapping one Linear; here
  that Linear is ``attn.qkv`` itself: rename ``qkv.qkv.`` → ``qkv.``), ``attn.lepe.{weight,bias}``,
  ``attn.wo.{weight,bias}`` (same names here).
- AttentionLePE (``models/_common.py``): ``attn.qkv.weight`` (no bias), ``attn.proj.{weight,bias}``,
  ``attn.lepe.{weight,bias}`` (same names here).
- Block position term: ``pos_embed.{weight,bias}`` (a depthwise ``Conv2d``; :class:`DWConvPos` is a
  ``Conv2d`` subclass, so its keys are ``weight``/``bias`` under whatever name the block gives it).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .linear import Linear


class DWConvPos(nn.Conv2d):
    """Depthwise ``kernel×kernel`` convolution on ``[B, H, W, C]`` → ``[B, H, W, C]`` (same padding, bias).

    BiFormer's per-block ``pos_embed`` (kernel 3), added to the residual stream before ``norm1``; the
    official layer hard-codes ``padding=1``, which equals ``kernel // 2`` for its kernel 3.
    Parameters ``weight: [C, 1, k, k]``, ``bias: [C]`` as ``nn.Conv2d``.
    """

    def __init__(self, dim: int, kernel: int = 3, bias: bool = True, device=None, dtype=None):
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(
                f"{type(self).__name__}: kernel must be a positive odd int (same padding), got {kernel!r}"
            )
        super().__init__(
            dim, dim, kernel, padding=kernel // 2, groups=dim, bias=bias, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects [B, H, W, {self.in_channels}] (channels last), "
                f"got shape {tuple(x.shape)}"
            )
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class LePE(DWConvPos):
    """Locally-enhanced positional encoding: a depthwise ``kernel×kernel`` conv (default 5, BiFormer's
    ``side_dwconv``) on ``[B, H, W, C]`` whose output is added to the attention output."""

    def __init__(self, dim: int, kernel: int = 5, bias: bool = True, device=None, dtype=None):
        super().__init__(dim, kernel, bias=bias, device=device, dtype=dtype)


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention with LePE: ``[B, H, W, C] -> [B, H, W, C]`` (BiFormer stages 1-3).

    ``q, k, v = split(qkv(x), [qk_dim, qk_dim, dim])`` (heads outer, channels inner, as official), then
    :func:`zoo.ops.routed_attention` over an ``n_win×n_win`` grid of regions (region size ``H/n_win``,
    so it grows with the map), ``out = wo(attn + lepe(v))``.

    Args:
        dim: channels C (also the value dim).
        num_heads: heads; must divide ``dim`` and ``qk_dim``.
        n_win: regions per side (int or (nh, nw)); official 7.
        topk: regions each query region attends to; ``-1`` or ``≥ n_win²`` means all (dense attention).
        qk_dim: query/key channels over all heads, default ``dim``.
        qk_scale: logit scale, default ``qk_dim ** -0.5`` — the official BRA scale, over ALL heads'
            channels (not ``(qk_dim/heads) ** -0.5``); used for routing and attention.
        side_dwconv: LePE kernel (official BRA default 3; BiFormer models pass 5); 0 disables LePE.
        qkv_bias: bias of ``qkv``.
        lepe_on: ``"v"`` (BRA: LePE on the values) or ``"x"`` (AttentionLePE: on the mixer's input).
        proj_name: attribute name of the output Linear, ``"wo"`` (BRA) or ``"proj"`` (AttentionLePE).

    Sizes: ``x`` is zero-padded at the bottom/right to multiples of ``n_win`` and the output cropped,
    as the official ``auto_pad=True``: padded tokens are ``qkv(0)`` (the biases) and take part in the
    region means and as keys, unmasked. At sizes divisible by ``n_win`` (BiFormer at 224: 56, 28, 14)
    nothing is padded, which is the only case the official ``auto_pad=False`` classification models
    accept (they assert divisibility).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int | tuple[int, int] = 7,
        topk: int = 4,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        side_dwconv: int = 3,
        qkv_bias: bool = True,
        lepe_on: str = "v",
        proj_name: str = "wo",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        name = type(self).__name__
        qk_dim = qk_dim or dim
        if num_heads < 1 or dim % num_heads or qk_dim % num_heads:
            raise ValueError(
                f"{name}: num_heads={num_heads} must divide dim={dim} and qk_dim={qk_dim}; pick a divisor"
            )
        if isinstance(n_win, bool) or not isinstance(n_win, (int, tuple, list)):
            raise ValueError(f"{name}: n_win must be a positive int or (nh, nw), got {n_win!r}")
        n_win = ops.pair(n_win, name=f"{name}: n_win")
        if isinstance(topk, bool) or not isinstance(topk, int) or (topk < 1 and topk != -1):
            raise ValueError(f"{name}: topk must be a positive int, or -1 for dense attention, got {topk!r}")
        if isinstance(side_dwconv, bool) or not isinstance(side_dwconv, int) or side_dwconv < 0 or (
            side_dwconv and side_dwconv % 2 == 0
        ):
            raise ValueError(
                f"{name}: side_dwconv must be 0 (no LePE) or a positive odd int, got {side_dwconv!r}"
            )
        if lepe_on not in ("v", "x"):
            raise ValueError(
                f"{name}: lepe_on must be 'v' (on the values) or 'x' (on the input), got {lepe_on!r}"
            )
        if proj_name not in ("wo", "proj"):
            raise ValueError(f"{name}: proj_name must be 'wo' or 'proj', got {proj_name!r}")
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = qk_scale or qk_dim**-0.5
        self.lepe_on = lepe_on
        self.proj_name = proj_name
        self.qkv = Linear(dim, 2 * qk_dim + dim, bias=qkv_bias, **dd)
        self.lepe = LePE(dim, side_dwconv, **dd) if side_dwconv else None
        self.add_module(proj_name, Linear(dim, dim, **dd))

    @property
    def dense(self) -> bool:
        """True when every region is routed to every region: plain dense attention over the map."""
        return self.topk == -1 or self.topk >= self.n_win[0] * self.n_win[1]

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, n_win={self.n_win}, "
            f"topk={self.topk}, scale={self.scale:.4g}, lepe_on={self.lepe_on!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects [B, H, W, {self.dim}] (channels last), "
                f"got shape {tuple(x.shape)}"
            )
        B, H, W, _ = x.shape
        x, pad = ops.pad_to_multiple(x, self.n_win)
        Hp, Wp = x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        h = self.num_heads
        if self.dense:
            qh, kh, vh = (t.reshape(B, Hp * Wp, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
            out = ops.attention(qh, kh, vh, scale=self.scale)  # [B, heads, N, d]
            out = out.transpose(1, 2).reshape(B, Hp, Wp, self.dim)
        else:
            # reshape with the traced sizes, not unflatten: torch.jit.trace bakes unflatten's output shape into
            # the graph, so an exported model would only run at the example input's size (head dims explicit:
            # a -1 is ambiguous for an empty batch)
            qh, kh, vh = (t.reshape(B, Hp, Wp, h, t.shape[-1] // h).permute(0, 3, 1, 2, 4) for t in (q, k, v))
            out = ops.routed_attention(qh, kh, vh, self.n_win, self.topk, scale=self.scale)
            out = out.permute(0, 2, 3, 1, 4).reshape(B, Hp, Wp, self.dim)
        if self.lepe is not None:
            out = out + self.lepe(v if self.lepe_on == "v" else x)
        out = getattr(self, self.proj_name)(out)
        padded = ops.is_tracing() or pad[0] or pad[1]  # tracing: pad_to_multiple always pads, so always crop
        return out[:, :H, :W].contiguous() if padded else out


class AttentionLePE(BiLevelRoutingAttention):
    """Dense multi-head attention plus LePE on the input: ``[B, H, W, C] -> [B, H, W, C]`` (BiFormer
    stage 4, official ``AttentionLePE``): ``proj(attn(qkv(x)) + lepe(x))``, 8 heads, ``qkv`` without
    bias, scale ``(C/heads) ** -0.5``. Keys ``qkv.weight``, ``proj.{weight,bias}``, ``lepe.{weight,bias}``.
    Any map size (nothing is padded)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        side_dwconv: int = 5,
        device=None,
        dtype=None,
    ):
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"AttentionLePE: num_heads={num_heads} must divide dim={dim}; pick a divisor")
        super().__init__(
            dim,
            num_heads,
            n_win=1,
            topk=-1,
            qk_scale=qk_scale or (dim // num_heads) ** -0.5,
            side_dwconv=side_dwconv,
            qkv_bias=qkv_bias,
            lepe_on="x",
            proj_name="proj",
            device=device,
            dtype=dtype,
        )
