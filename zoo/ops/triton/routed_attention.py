"""Bi-level routing attention (BiFormer BRA) without the gather: an indexed-K/V kernel.

``q, k: [B, heads, H, W, d]``, ``v: [B, heads, H, W, dv]`` (any strides; read in place, no region-major
copy), regions an ``nh x nw`` grid of ``rh x rw`` tokens, routing indices ``[B, R, topk]`` (row-major
regions). Forward: one program per (query region, batch) and head; the region's ``n = rh·rw`` queries form
one tile; the ``topk·n`` routed keys are walked in tiles of ``BLOCK_N`` tokens (several small regions per
tile), their addresses computed from the indices, with an online softmax; the log-sum-exp is saved.
Backward: the same programs recompute the probabilities; dq stays in registers, dk and dv are scattered with
fp32 atomics (a key region is routed to by several query regions), so their summation order is not fixed on
GPU. The routing indices take no gradient. The output is laid out ``[B, H, W, heads, dv]`` (returned as a
``[B, heads, H, W, dv]`` view), so merging the heads afterwards costs no copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as common


@triton.jit
def _token_offsets(idx_tok, NW, RH, RW, region):
    """Row/column of token ``idx_tok`` (0..n-1, row-major inside a region) of region ``region``."""
    y = (region // NW) * RH + idx_tok // RW
    x = (region % NW) * RW + idx_tok % RW
    return y, x


@triton.jit
def _key_tile(IDX, pid, kk, n, TOPK, NW, RH, RW):
    """Key tile ``kk`` (indices into the ``topk·n`` routed keys of query region ``pid``): its mask and the
    keys' row/column in the map, read through the routing indices."""
    mask_n = kk < TOPK * n
    reg = tl.load(IDX + pid * TOPK + kk // n, mask=mask_n, other=0)
    ky, kx = _token_offsets(kk % n, NW, RH, RW, reg)
    return mask_n, ky, kx


@triton.jit
def _region_setup(R, NW, RH, RW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's query region (the forward and the backward tile alike): ``pid`` (batch·R + region),
    head ``h``, batch ``b``, tokens per region ``n``, the key offsets ``offs_n``, the query mask and positions."""
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    qy, qx = _token_offsets(offs_m, NW, RH, RW, pid % R)
    return pid, tl.program_id(1), pid // R, RH * RW, tl.arange(0, BLOCK_N), offs_m < RH * RW, qy, qx


@triton.jit
def _routed_fwd_kernel(
    Q, K, V, IDX, O, LSE,
    s_qb, s_qh, s_qy, s_qx, s_qd,
    s_kb, s_kh, s_ky, s_kx, s_kd,
    s_vb, s_vh, s_vy, s_vx, s_vd,
    s_ob, s_oh, s_oy, s_ox, s_od,
    NHEADS, HMAP, WMAP, R, NW, RH, RW, TOPK, D, DV, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid, h, b, n, offs_n, mask_m, qy, qx = _region_setup(R, NW, RH, RW, BLOCK_M, BLOCK_N)
    offs_d, offs_dv, mask_d, mask_dv = common.head_offsets(D, DV, BLOCK_D, BLOCK_DV)
    q = common.load_tile(Q + b * s_qb + h * s_qh, qy * s_qy + qx * s_qx, offs_d, s_qd, mask_m, mask_d, False)
    m_i, l_i, acc = common.softmax_init(BLOCK_M, BLOCK_DV)
    for start in range(0, TOPK * n, BLOCK_N):
        mask_n, ky, kx = _key_tile(IDX, pid, start + offs_n, n, TOPK, NW, RH, RW)
        kt = common.load_tile(K + b * s_kb + h * s_kh, ky * s_ky + kx * s_kx, offs_d, s_kd, mask_n, mask_d, True)
        v = common.load_tile(V + b * s_vb + h * s_vh, ky * s_vy + kx * s_vx, offs_dv, s_vd, mask_n, mask_dv, False)
        s = tl.where(mask_n[None, :], common.mma(q, kt, PREC, UPCAST) * qk_scale, float("-inf"))
        m_i, l_i, acc = common.softmax_step(s, v, m_i, l_i, acc, PREC, UPCAST)
    out = acc / l_i[:, None]
    tl.store(
        O + b * s_ob + h * s_oh + qy[:, None] * s_oy + qx[:, None] * s_ox + offs_dv[None, :] * s_od,
        out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_dv[None, :],
    )
    tl.store(LSE + ((b * NHEADS + h) * HMAP + qy) * WMAP + qx, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _routed_bwd_kernel(
    Q, K, V, IDX, DO, LSE, DELTA, DQ, DK, DV,
    s_qb, s_qh, s_qy, s_qx, s_qd,
    s_kb, s_kh, s_ky, s_kx, s_kd,
    s_vb, s_vh, s_vy, s_vx, s_vd,
    s_ob, s_oh, s_oy, s_ox, s_od,
    NHEADS, HMAP, WMAP, R, NW, RH, RW, TOPK, D, DVDIM, qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    # DQ: [B, heads, H, W, D] (q's dtype); DK, DV: fp32 [B, heads, H, W, D / DV], zero-initialised.
    pid, h, b, n, offs_n, mask_m, qy, qx = _region_setup(R, NW, RH, RW, BLOCK_M, BLOCK_N)
    offs_d, offs_dv, mask_d, mask_dv = common.head_offsets(D, DVDIM, BLOCK_D, BLOCK_DV)
    q = common.load_tile(Q + b * s_qb + h * s_qh, qy * s_qy + qx * s_qx, offs_d, s_qd, mask_m, mask_d, False)
    do = common.load_tile(DO + b * s_ob + h * s_oh, qy * s_oy + qx * s_ox, offs_dv, s_od, mask_m, mask_dv, False)
    row = ((b * NHEADS + h) * HMAP + qy) * WMAP + qx
    lse = tl.load(LSE + row, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    base = (b * NHEADS + h) * HMAP
    for start in range(0, TOPK * n, BLOCK_N):
        mask_n, ky, kx = _key_tile(IDX, pid, start + offs_n, n, TOPK, NW, RH, RW)
        k = common.load_tile(K + b * s_kb + h * s_kh, ky * s_ky + kx * s_kx, offs_d, s_kd, mask_n, mask_d, False)
        v = common.load_tile(V + b * s_vb + h * s_vh, ky * s_vy + kx * s_vx, offs_dv, s_vd, mask_n, mask_dv, False)
        s = common.mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
        p, ds = common.softmax_grad(s, mask_m[:, None] & mask_n[None, :], lse, delta, do, v, PREC, UPCAST)
        dq += common.mma(ds.to(k.dtype), k, PREC, UPCAST)
        common.add_key_grads(DK, DV, (base + ky) * WMAP + kx, mask_n, p, ds, q, do, offs_d, offs_dv, mask_d, mask_dv, D,
                             DVDIM, scale, PREC, UPCAST)
    tl.store(
        DQ + (row[:, None]) * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )


def _launch_args(q, num_regions, indices):
    B, heads, H, W, D = q.shape
    nh, nw = num_regions
    R = nh * nw
    rh, rw = H // nh, W // nw
    topk = indices.shape[-1]
    return (B, heads, H, W, D, R, nw, rh, rw, topk)


class _RoutedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, indices, num_regions, scale):
        B, heads, H, W, D, R, nw, rh, rw, topk = _launch_args(q, num_regions, indices)
        DVD = v.shape[-1]
        idx = indices.contiguous()
        o = torch.empty(B, H, W, heads, DVD, device=q.device, dtype=q.dtype).permute(0, 3, 1, 2, 4)
        lse = torch.empty(B, heads, H, W, device=q.device, dtype=torch.float32)
        blocks = dict(
            BLOCK_M=common.block(rh * rw, hi=128), BLOCK_N=common.block(topk * rh * rw, hi=64),
            BLOCK_D=common.block(D, hi=256), BLOCK_DV=common.block(DVD, hi=256),
        )
        _routed_fwd_kernel[(B * R, heads)](
            q, k, v, idx, o, lse,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(),
            heads, H, W, R, nw, rh, rw, topk, D, DVD, scale * common.LOG2E,
            **blocks, **common.dot_flags(q.dtype),
        )
        ctx.save_for_backward(q, k, v, idx, o, lse)
        ctx.meta = (num_regions, scale, blocks)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, idx, o, lse = ctx.saved_tensors
        num_regions, scale, blocks = ctx.meta
        B, heads, H, W, D, R, nw, rh, rw, topk = _launch_args(q, num_regions, idx)
        DVD = v.shape[-1]
        delta, dq, dk, dv = common.backward_buffers(q, k, v, o, do, scatter_kv=True)  # dk, dv: fp32 (atomics)
        _routed_bwd_kernel[(B * R, heads)](
            q, k, v, idx, do, lse, delta, dq, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            heads, H, W, R, nw, rh, rw, topk, D, DVD, scale * common.LOG2E, scale,
            **blocks, **common.dot_flags(q.dtype),
        )
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: tuple[int, int],
    indices: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of every region's tokens over the tokens of its routed regions (see the module docstring).

    ``indices: [B, R, topk]`` int64 (no gradient); returns ``[B, heads, H, W, dv]``.
    """
    return _RoutedAttention.apply(q, k, v, indices.detach(), tuple(num_regions), float(scale))
