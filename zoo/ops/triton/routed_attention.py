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

from ._common import LOG2E, block, dot_flags, mma, row_max, row_sum


@triton.jit
def _token_offsets(idx_tok, NW, RH, RW, region):
    """Row/column of token ``idx_tok`` (0..n-1, row-major inside a region) of region ``region``."""
    y = (region // NW) * RH + idx_tok // RW
    x = (region % NW) * RW + idx_tok % RW
    return y, x


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
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = pid // R
    r = pid % R
    n = RH * RW
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < n
    qy, qx = _token_offsets(offs_m, NW, RH, RW, r)
    q = tl.load(
        Q + b * s_qb + h * s_qh + qy[:, None] * s_qy + qx[:, None] * s_qx + offs_d[None, :] * s_qd,
        mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    for start in range(0, TOPK * n, BLOCK_N):
        kk = start + offs_n
        mask_n = kk < TOPK * n
        reg = tl.load(IDX + pid * TOPK + kk // n, mask=mask_n, other=0)
        ky, kx = _token_offsets(kk % n, NW, RH, RW, reg)
        kt = tl.load(
            K + b * s_kb + h * s_kh + ky[None, :] * s_ky + kx[None, :] * s_kx + offs_d[:, None] * s_kd,
            mask=mask_n[None, :] & (offs_d[:, None] < D), other=0.0,
        )
        s = mma(q, kt, PREC, UPCAST) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, row_max(s))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + row_sum(p)
        v = tl.load(
            V + b * s_vb + h * s_vh + ky[:, None] * s_vy + kx[:, None] * s_vx + offs_dv[None, :] * s_vd,
            mask=mask_n[:, None] & (offs_dv[None, :] < DV), other=0.0,
        )
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PREC, UPCAST)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        O + b * s_ob + h * s_oh + qy[:, None] * s_oy + qx[:, None] * s_ox + offs_dv[None, :] * s_od,
        out.to(O.dtype.element_ty), mask=mask_m[:, None] & (offs_dv[None, :] < DV),
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
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = pid // R
    r = pid % R
    n = RH * RW
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < n
    mask_d = offs_d < D
    mask_dv = offs_dv < DVDIM
    qy, qx = _token_offsets(offs_m, NW, RH, RW, r)
    q = tl.load(
        Q + b * s_qb + h * s_qh + qy[:, None] * s_qy + qx[:, None] * s_qx + offs_d[None, :] * s_qd,
        mask=mask_m[:, None] & mask_d[None, :], other=0.0,
    )
    do = tl.load(
        DO + b * s_ob + h * s_oh + qy[:, None] * s_oy + qx[:, None] * s_ox + offs_dv[None, :] * s_od,
        mask=mask_m[:, None] & mask_dv[None, :], other=0.0,
    )
    row = ((b * NHEADS + h) * HMAP + qy) * WMAP + qx
    lse = tl.load(LSE + row, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    base = (b * NHEADS + h) * HMAP
    for start in range(0, TOPK * n, BLOCK_N):
        kk = start + offs_n
        mask_n = kk < TOPK * n
        reg = tl.load(IDX + pid * TOPK + kk // n, mask=mask_n, other=0)
        ky, kx = _token_offsets(kk % n, NW, RH, RW, reg)
        k = tl.load(
            K + b * s_kb + h * s_kh + ky[:, None] * s_ky + kx[:, None] * s_kx + offs_d[None, :] * s_kd,
            mask=mask_n[:, None] & mask_d[None, :], other=0.0,
        )
        v = tl.load(
            V + b * s_vb + h * s_vh + ky[:, None] * s_vy + kx[:, None] * s_vx + offs_dv[None, :] * s_vd,
            mask=mask_n[:, None] & mask_dv[None, :], other=0.0,
        )
        s = mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
        mask_mn = mask_m[:, None] & mask_n[None, :]
        p = tl.where(mask_mn, tl.exp2(s - lse[:, None]), 0.0)
        dp = mma(do, tl.trans(v), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += mma(ds.to(k.dtype), k, PREC, UPCAST)
        krow = (base + ky) * WMAP + kx
        dv = mma(tl.trans(p).to(do.dtype), do, PREC, UPCAST)
        tl.atomic_add(DV + krow[:, None] * DVDIM + offs_dv[None, :], dv, mask=mask_n[:, None] & mask_dv[None, :])
        dk = mma(tl.trans(ds).to(q.dtype), q, PREC, UPCAST) * scale
        tl.atomic_add(DK + krow[:, None] * D + offs_d[None, :], dk, mask=mask_n[:, None] & mask_d[None, :])
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
            BLOCK_M=block(rh * rw, hi=128), BLOCK_N=block(topk * rh * rw, hi=64),
            BLOCK_D=block(D, hi=256), BLOCK_DV=block(DVD, hi=256),
        )
        _routed_fwd_kernel[(B * R, heads)](
            q, k, v, idx, o, lse,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(),
            heads, H, W, R, nw, rh, rw, topk, D, DVD, scale * LOG2E,
            **blocks, **dot_flags(q.dtype),
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
        delta = (do.float() * o.float()).sum(-1)  # [B, heads, H, W]
        dq = torch.empty(B, heads, H, W, D, device=q.device, dtype=q.dtype)
        dk = torch.zeros(B, heads, H, W, D, device=q.device, dtype=torch.float32)
        dv = torch.zeros(B, heads, H, W, DVD, device=q.device, dtype=torch.float32)
        _routed_bwd_kernel[(B * R, heads)](
            q, k, v, idx, do, lse, delta, dq, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            heads, H, W, R, nw, rh, rw, topk, D, DVD, scale * LOG2E, scale,
            **blocks, **dot_flags(q.dtype),
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
