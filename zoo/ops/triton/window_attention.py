"""Fused softmax attention over many small groups (windows, grids) with an additive bias.

``q: [G, heads, Nq, d]``, ``k: [G, heads, Nk, d]``, ``v: [G, heads, Nk, dv]`` (any strides: the permuted
views that ``qkv(...).unbind`` gives are read in place), ``bias`` broadcastable to ``[G, heads, Nq, Nk]``
(float, added to the logits, or bool keep-mask) — e.g. a relative position bias ``[1, heads, N, N]``, a
padding mask ``[G, 1, N, N]``, or their sum. Forward: one program per (query tile, group·head), online
softmax over key tiles, the log-sum-exp saved for the backward. Backward: one program per (chunk of groups,
head) recomputes the probabilities tile by tile and gives dq, dk, dv and the bias gradient:

- bias shared by every group (leading dim 1, heads/Nq/Nk full — the learnable table): each program sums
  its chunk's ``dS`` into its own fp32 slice ``[chunks, heads, Nq, Nk]``; torch sums the chunks;
- any other bias that needs a gradient: ``dS`` per (group, head) in fp32, reduced to the bias's shape by
  torch (memory as one attention matrix).

dq accumulates in an fp32 buffer with atomics (only the owning program touches it, so the sum order is
fixed); dk, dv stay in registers per key tile. Rows whose keys are all masked give NaN, like the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as common
from ._common import num_programs_target  # a name of this module: tests patch it to chunk small inputs


@triton.jit
def _fwd_kernel(
    Q, K, V, Bias, O, LSE,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_bb, s_bh, s_bm, s_bn,
    s_ob, s_oh, s_om, s_od,
    H, NQ, NK, D, DV, qk_scale,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d, offs_dv, mask_d, mask_dv = common.head_offsets(D, DV, BLOCK_D, BLOCK_DV)
    mask_m = offs_m < NQ
    q = common.load_tile(Q + b * s_qb + h * s_qh, offs_m * s_qm, offs_d, s_qd, mask_m, mask_d, False)
    m_i, l_i, acc = common.softmax_init(BLOCK_M, BLOCK_DV)
    for start_n in range(0, NK, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < NK
        kt = common.load_tile(K + b * s_kb + h * s_kh, cols * s_kn, offs_d, s_kd, mask_n, mask_d, True)
        v = common.load_tile(V + b * s_vb + h * s_vh, cols * s_vn, offs_dv, s_vd, mask_n, mask_dv, False)
        s = common.mma(q, kt, PREC, UPCAST) * qk_scale
        if HAS_BIAS:
            bias = tl.load(
                Bias + b * s_bb + h * s_bh + offs_m[:, None] * s_bm + cols[None, :] * s_bn,
                mask=mask_m[:, None] & mask_n[None, :], other=0.0,
            )
            s += bias.to(tl.float32) * 1.4426950408889634
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_i, l_i, acc = common.softmax_step(s, v, m_i, l_i, acc, PREC, UPCAST)
    out = acc / l_i[:, None]
    tl.store(
        O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_dv[None, :] * s_od,
        out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_dv[None, :],
    )
    tl.store(LSE + pid_bh * NQ + offs_m, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _bwd_kernel(
    Q, K, V, Bias, DO, LSE, DELTA, DQ, DK, DV, DB,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_bb, s_bh, s_bm, s_bn,
    s_ob, s_oh, s_om, s_od,
    G, H, NQ, NK, D, DVDIM, qk_scale, scale, WPP,
    HAS_BIAS: tl.constexpr, DB_MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    # DQ: fp32 [G, H, NQ, D]; DK: [G, H, NK, D]; DV: [G, H, NK, DV] (contiguous, q's dtype);
    # DB: DB_MODE 1 -> fp32 [G, H, NQ, NK]; DB_MODE 2 -> fp32 [chunks, H, NQ, NK].
    pid_c = tl.program_id(0)
    h = tl.program_id(1)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d, offs_dv, mask_d, mask_dv = common.head_offsets(D, DVDIM, BLOCK_D, BLOCK_DV)
    w_end = tl.minimum(pid_c * WPP + WPP, G)
    for b in range(pid_c * WPP, w_end):
        bh = b * H + h
        for start_n in range(0, NK, BLOCK_N):
            cols = start_n + offs_n0
            mask_n = cols < NK
            k = common.load_tile(K + b * s_kb + h * s_kh, cols * s_kn, offs_d, s_kd, mask_n, mask_d, False)
            v = common.load_tile(V + b * s_vb + h * s_vh, cols * s_vn, offs_dv, s_vd, mask_n, mask_dv, False)
            dk = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
            dv = tl.full([BLOCK_N, BLOCK_DV], 0.0, tl.float32)
            for start_m in range(0, NQ, BLOCK_M):
                rows = start_m + offs_m0
                mask_m = rows < NQ
                q = common.load_tile(Q + b * s_qb + h * s_qh, rows * s_qm, offs_d, s_qd, mask_m, mask_d, False)
                do = common.load_tile(DO + b * s_ob + h * s_oh, rows * s_om, offs_dv, s_od, mask_m, mask_dv, False)
                lse = tl.load(LSE + bh * NQ + rows, mask=mask_m, other=0.0)
                delta = tl.load(DELTA + bh * NQ + rows, mask=mask_m, other=0.0)
                s = common.mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
                mask_mn = mask_m[:, None] & mask_n[None, :]
                if HAS_BIAS:
                    bias = tl.load(
                        Bias + b * s_bb + h * s_bh + rows[:, None] * s_bm + cols[None, :] * s_bn,
                        mask=mask_mn, other=0.0,
                    )
                    s += bias.to(tl.float32) * 1.4426950408889634
                p, ds = common.softmax_grad(s, mask_mn, lse, delta, do, v, PREC, UPCAST)
                dv += common.mma(tl.trans(p).to(do.dtype), do, PREC, UPCAST)
                if DB_MODE == 1:
                    tl.store(DB + (bh * NQ + rows[:, None]) * NK + cols[None, :], ds, mask=mask_mn)
                if DB_MODE == 2:
                    tl.atomic_add(DB + ((pid_c * H + h) * NQ + rows[:, None]) * NK + cols[None, :], ds, mask=mask_mn)
                dk += common.mma(tl.trans(ds).to(q.dtype), q, PREC, UPCAST)
                dq = common.mma(ds.to(k.dtype), k, PREC, UPCAST) * scale
                tl.atomic_add(
                    DQ + (bh * NQ + rows[:, None]) * D + offs_d[None, :], dq, mask=mask_m[:, None] & mask_d[None, :]
                )
            tl.store(
                DK + (bh * NK + cols[:, None]) * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
                mask=mask_n[:, None] & mask_d[None, :],
            )
            tl.store(
                DV + (bh * NK + cols[:, None]) * DVDIM + offs_dv[None, :], dv.to(DV.dtype.element_ty),
                mask=mask_n[:, None] & mask_dv[None, :],
            )


def _blocks(nq: int, nk: int, d: int, dv: int) -> dict:
    return dict(
        BLOCK_M=common.block(nq), BLOCK_N=common.block(nk), BLOCK_D=common.block(d, hi=256),
        BLOCK_DV=common.block(dv, hi=256),
    )


def _bias_args(bias: torch.Tensor | None, shape: tuple[int, int, int, int]):
    """Bias as a (possibly stride-0) view of ``shape``; bool masks become additive fp32 (0 / -inf)."""
    if bias is None:
        return None, (0, 0, 0, 0)
    if bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device).masked_fill(~bias, float("-inf"))
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    view = bias.expand(shape)
    return view, view.stride()


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        G, H, NQ, D = q.shape
        NK, DVD = k.shape[2], v.shape[3]
        bias_view, bstr = _bias_args(bias, (G, H, NQ, NK))
        o = torch.empty(G, H, NQ, DVD, device=q.device, dtype=q.dtype)
        lse = torch.empty(G, H, NQ, device=q.device, dtype=torch.float32)
        blocks = _blocks(NQ, NK, D, DVD)
        grid = (triton.cdiv(NQ, blocks["BLOCK_M"]), G * H)
        _fwd_kernel[grid](
            q, k, v, bias_view if bias_view is not None else q, o, lse,
            *q.stride(), *k.stride(), *v.stride(), *bstr, *o.stride(),
            H, NQ, NK, D, DVD, scale * common.LOG2E,
            HAS_BIAS=bias is not None, **blocks, **common.dot_flags(q.dtype),
        )
        ctx.save_for_backward(q, k, v, bias_view, o, lse)
        ctx.scale = scale
        ctx.bias_shape = None if bias is None else bias.shape
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, bias_view, o, lse = ctx.saved_tensors
        scale = ctx.scale
        G, H, NQ, D = q.shape
        NK, DVD = k.shape[2], v.shape[3]
        delta, dq, dk, dv = common.backward_buffers(q, k, v, o, do, scatter_kv=False)  # dq: fp32 (atomics)
        need_db = ctx.needs_input_grad[3]
        db_mode, wpp, db = 0, 1, None
        if need_db:
            bias4 = ctx.bias_shape
            b4 = (1,) * (4 - len(bias4)) + tuple(bias4)
            if b4 == (1, H, NQ, NK) and G > 1:
                db_mode = 2
                target = max(1, num_programs_target(q.device) // H)
                wpp = triton.cdiv(G, target)
                db = torch.zeros(triton.cdiv(G, wpp), H, NQ, NK, device=q.device, dtype=torch.float32)
            else:
                db_mode = 1
                db = torch.empty(G, H, NQ, NK, device=q.device, dtype=torch.float32)
        grid = (triton.cdiv(G, wpp), H)
        bstr = (0, 0, 0, 0) if bias_view is None else bias_view.stride()
        _bwd_kernel[grid](
            q, k, v, bias_view if bias_view is not None else q, do, lse, delta, dq, dk, dv,
            db if db is not None else dq,
            *q.stride(), *k.stride(), *v.stride(), *bstr, *do.stride(),
            G, H, NQ, NK, D, DVD, scale * common.LOG2E, scale, wpp,
            HAS_BIAS=bias_view is not None, DB_MODE=db_mode, **_blocks(NQ, NK, D, DVD), **common.dot_flags(q.dtype),
        )
        dbias = None
        if need_db:
            shape = ctx.bias_shape
            b4 = (1,) * (4 - len(shape)) + tuple(shape)
            g = db.sum(0, keepdim=True) if db_mode == 2 else db
            dims = tuple(i for i in range(4) if b4[i] == 1 and g.shape[i] != 1)
            if dims:
                g = g.sum(dim=dims, keepdim=True)
            dbias = g.reshape(shape).to(bias_view.dtype)
        return dq.to(q.dtype), dk, dv, dbias, None


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """``softmax(q kᵀ·scale + bias) v`` for ``q: [G, heads, Nq, d]`` (see the module docstring).

    ``bias`` (float or bool, broadcastable to ``[G, heads, Nq, Nk]``) gets a gradient when it requires one.
    """
    return _WindowAttention.apply(q, k, v, bias, scale)
