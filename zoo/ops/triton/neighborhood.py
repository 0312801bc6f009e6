"""2-D (dilated) neighborhood attention with relative position bias, legacy NATTEN semantics.

Same semantics as the reference in :mod:`zoo.ops.neighborhood` (window clamped inside the query's dilation
group, RPB indexed by the key-minus-query offset in dilated steps). Inputs are the flattened maps the op
passes to its paths: ``q, k: [B, heads, H·W, d]``, ``v: [B, heads, H·W, dv]`` (any strides), ``rpb:
[heads, (2k-1)²]`` or None.

Tiling: one program per (tile of ``BLOCK_M`` queries along a row, inside one column dilation group; row;
batch·head). All queries of a tile share their ``k`` key rows; along the row their windows (in group
coordinates) lie inside ``[start(first), start(last) + k - 1]``, at most ``BLOCK_M + k - 1`` columns, so each
key row is one dense ``[BLOCK_M, BLOCK_N]`` tile (``BLOCK_N = next_pow2(BLOCK_M + k - 1)``) masked to each
query's window, with the RPB gathered per entry; online softmax over the ``k`` key rows.
Backward: the same programs recompute the probabilities; dq stays in registers; dk and dv are scattered with
fp32 atomics (neighbouring tiles share keys); the RPB gradient is added with atomics into a per-(batch, query
row) fp32 slice ``[B, H, heads, (2k-1)²]`` that torch sums (few programs share a slice; the entries of one
key-row tile that share an offset collide inside the program).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import LOG2E, dot_flags, mma, row_max, row_sum


@triton.jit
def _window_start(j, glen, KS: tl.constexpr):
    """First neighbour (group coordinates) of position ``j`` in a group of ``glen`` positions."""
    return tl.minimum(tl.maximum(j - KS // 2, 0), glen - KS)


@triton.jit
def _tile_setup(pid0, qy, HMAP, WMAP, DIL, KS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    gx = pid0 % DIL
    j0 = (pid0 // DIL) * BLOCK_M
    glen_x = (WMAP - gx + DIL - 1) // DIL
    jx = j0 + tl.arange(0, BLOCK_M)
    mask_m = jx < glen_x
    sx = _window_start(jx, glen_x, KS)
    ks0 = _window_start(j0, glen_x, KS)
    jk = ks0 + tl.arange(0, BLOCK_N)
    # key column c is in query i's window
    in_win = mask_m[:, None] & (jk[None, :] >= sx[:, None]) & (jk[None, :] < sx[:, None] + KS)
    rel_x = jk[None, :] - jx[:, None] + (KS - 1)
    gy = qy % DIL
    jy = qy // DIL
    glen_y = (HMAP - gy + DIL - 1) // DIL
    sy = _window_start(jy, glen_y, KS)
    qpos = qy * WMAP + gx + jx * DIL
    kcol = gx + jk * DIL
    mask_n = jk < glen_x
    return mask_m, in_win, rel_x, gy, jy, sy, qpos, kcol, mask_n


@triton.jit
def _na2d_fwd_kernel(
    Q, K, V, RPB, O, LSE,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_on, s_od,
    NHEADS, HMAP, WMAP, DIL, D, DV, qk_scale,
    KS: tl.constexpr, HAS_RPB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid0 = tl.program_id(0)
    qy = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // NHEADS
    h = bh % NHEADS
    mask_m, in_win, rel_x, gy, jy, sy, qpos, kcol, mask_n = _tile_setup(
        pid0, qy, HMAP, WMAP, DIL, KS, BLOCK_M, BLOCK_N
    )
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        Q + b * s_qb + h * s_qh + qpos[:, None] * s_qn + offs_d[None, :] * s_qd,
        mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    for t in range(KS):
        ky = gy + (sy + t) * DIL
        kpos = ky * WMAP + kcol
        kt = tl.load(
            K + b * s_kb + h * s_kh + kpos[None, :] * s_kn + offs_d[:, None] * s_kd,
            mask=mask_n[None, :] & (offs_d[:, None] < D), other=0.0,
        )
        s = mma(q, kt, PREC, UPCAST) * qk_scale
        if HAS_RPB:
            rel_y = sy + t - jy + (KS - 1)
            bias = tl.load(RPB + h * (2 * KS - 1) * (2 * KS - 1) + rel_y * (2 * KS - 1) + rel_x, mask=in_win, other=0.0)
            s += bias.to(tl.float32) * 1.4426950408889634
        s = tl.where(in_win, s, float("-inf"))
        m_new = tl.maximum(m_i, row_max(s))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + row_sum(p)
        v = tl.load(
            V + b * s_vb + h * s_vh + kpos[:, None] * s_vn + offs_dv[None, :] * s_vd,
            mask=mask_n[:, None] & (offs_dv[None, :] < DV), other=0.0,
        )
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PREC, UPCAST)
        m_i = m_new
    l_safe = tl.where(mask_m, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        O + b * s_ob + h * s_oh + qpos[:, None] * s_on + offs_dv[None, :] * s_od,
        out.to(O.dtype.element_ty), mask=mask_m[:, None] & (offs_dv[None, :] < DV),
    )
    tl.store(LSE + bh * HMAP * WMAP + qpos, m_i + tl.log2(l_safe), mask=mask_m)


@triton.jit
def _na2d_bwd_kernel(
    Q, K, V, RPB, DO, LSE, DELTA, DQ, DK, DV, DRPB,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_on, s_od,
    NHEADS, HMAP, WMAP, DIL, D, DVDIM, qk_scale, scale,
    KS: tl.constexpr, HAS_RPB: tl.constexpr, RPB_GRAD: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    # DQ: [B, heads, N, D] (q's dtype); DK, DV: fp32 [B, heads, N, D / DV] zeroed;
    # DRPB: fp32 [B, HMAP, heads, (2k-1)²] zeroed (summed over batch and rows by the caller).
    pid0 = tl.program_id(0)
    qy = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // NHEADS
    h = bh % NHEADS
    mask_m, in_win, rel_x, gy, jy, sy, qpos, kcol, mask_n = _tile_setup(
        pid0, qy, HMAP, WMAP, DIL, KS, BLOCK_M, BLOCK_N
    )
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_d = offs_d < D
    mask_dv = offs_dv < DVDIM
    q = tl.load(
        Q + b * s_qb + h * s_qh + qpos[:, None] * s_qn + offs_d[None, :] * s_qd,
        mask=mask_m[:, None] & mask_d[None, :], other=0.0,
    )
    do = tl.load(
        DO + b * s_ob + h * s_oh + qpos[:, None] * s_on + offs_dv[None, :] * s_od,
        mask=mask_m[:, None] & mask_dv[None, :], other=0.0,
    )
    lse = tl.load(LSE + bh * HMAP * WMAP + qpos, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + bh * HMAP * WMAP + qpos, mask=mask_m, other=0.0)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    RR = 2 * KS - 1
    for t in range(KS):
        ky = gy + (sy + t) * DIL
        kpos = ky * WMAP + kcol
        k = tl.load(
            K + b * s_kb + h * s_kh + kpos[:, None] * s_kn + offs_d[None, :] * s_kd,
            mask=mask_n[:, None] & mask_d[None, :], other=0.0,
        )
        v = tl.load(
            V + b * s_vb + h * s_vh + kpos[:, None] * s_vn + offs_dv[None, :] * s_vd,
            mask=mask_n[:, None] & mask_dv[None, :], other=0.0,
        )
        s = mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
        rel_y = sy + t - jy + (KS - 1)
        if HAS_RPB:
            bias = tl.load(RPB + h * RR * RR + rel_y * RR + rel_x, mask=in_win, other=0.0)
            s += bias.to(tl.float32) * 1.4426950408889634
        p = tl.where(in_win, tl.exp2(s - lse[:, None]), 0.0)
        dp = mma(do, tl.trans(v), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += mma(ds.to(k.dtype), k, PREC, UPCAST)
        row = bh * HMAP * WMAP + kpos
        dv = mma(tl.trans(p).to(do.dtype), do, PREC, UPCAST)
        tl.atomic_add(DV + row[:, None] * DVDIM + offs_dv[None, :], dv, mask=mask_n[:, None] & mask_dv[None, :])
        dk = mma(tl.trans(ds).to(q.dtype), q, PREC, UPCAST) * scale
        tl.atomic_add(DK + row[:, None] * D + offs_d[None, :], dk, mask=mask_n[:, None] & mask_d[None, :])
        if RPB_GRAD:  # entries on one diagonal share an offset: colliding atomics within this slice
            tl.atomic_add(DRPB + ((b * HMAP + qy) * NHEADS + h) * RR * RR + rel_y * RR + rel_x, ds, mask=in_win)
    tl.store(
        DQ + (bh * HMAP * WMAP + qpos[:, None]) * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )


def _config(W: int, ks: int, dil: int, d: int, dv: int) -> dict:
    bm = 16
    return dict(
        BLOCK_M=bm, BLOCK_N=max(16, triton.next_power_of_2(bm + ks - 1)),
        BLOCK_D=max(16, triton.next_power_of_2(d)), BLOCK_DV=max(16, triton.next_power_of_2(dv)),
    )


def _grid(shape, ks, dil, B, heads, bm):
    H, W = shape
    return (dil * triton.cdiv(triton.cdiv(W, dil), bm), H, B * heads)


class _NA2D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rpb, shape, ks, dil, scale):
        B, heads, N, D = q.shape
        DVD = v.shape[-1]
        H, W = shape
        cfg = _config(W, ks, dil, D, DVD)
        o = torch.empty(B, heads, N, DVD, device=q.device, dtype=q.dtype)
        lse = torch.empty(B, heads, N, device=q.device, dtype=torch.float32)
        _na2d_fwd_kernel[_grid(shape, ks, dil, B, heads, cfg["BLOCK_M"])](
            q, k, v, rpb if rpb is not None else q, o, lse,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(),
            heads, H, W, dil, D, DVD, scale * LOG2E,
            KS=ks, HAS_RPB=rpb is not None, **cfg, **dot_flags(q.dtype),
        )
        ctx.save_for_backward(q, k, v, rpb, o, lse)
        ctx.meta = (shape, ks, dil, scale, cfg)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, rpb, o, lse = ctx.saved_tensors
        shape, ks, dil, scale, cfg = ctx.meta
        B, heads, N, D = q.shape
        DVD = v.shape[-1]
        H, W = shape
        delta = (do.float() * o.float()).sum(-1)
        dq = torch.empty(B, heads, N, D, device=q.device, dtype=q.dtype)
        dk = torch.zeros(B, heads, N, D, device=q.device, dtype=torch.float32)
        dv = torch.zeros(B, heads, N, DVD, device=q.device, dtype=torch.float32)
        rpb_grad = rpb is not None and ctx.needs_input_grad[3]
        RR = 2 * ks - 1
        drpb = torch.zeros(B, H, heads, RR * RR, device=q.device, dtype=torch.float32) if rpb_grad else None
        _na2d_bwd_kernel[_grid(shape, ks, dil, B, heads, cfg["BLOCK_M"])](
            q, k, v, rpb if rpb is not None else q, do, lse, delta, dq, dk, dv, drpb if rpb_grad else dk,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            heads, H, W, dil, D, DVD, scale * LOG2E, scale,
            KS=ks, HAS_RPB=rpb is not None, RPB_GRAD=rpb_grad,
            **cfg, **dot_flags(q.dtype),
        )
        g_rpb = drpb.sum((0, 1)).to(rpb.dtype) if rpb_grad else None
        return dq, dk.to(k.dtype), dv.to(v.dtype), g_rpb, None, None, None, None


def neighborhood_attention2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    shape: tuple[int, int],
    kernel_size: int,
    dilation: int,
    rpb: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Fused 2-D neighborhood attention on flattened maps ``[B, heads, H·W, d]``; ``rpb: [heads, (2k-1)²]``.

    Returns ``[B, heads, H·W, dv]``. ``H, W >= kernel_size·dilation`` (checked by the public op).
    """
    return _NA2D.apply(q, k, v, rpb, tuple(shape), int(kernel_size), int(dilation), float(scale))
