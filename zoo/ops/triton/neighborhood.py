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

from . import _common as common


@triton.jit
def _window_start(j, glen, KS: tl.constexpr):
    """First neighbour (group coordinates) of position ``j`` in a group of ``glen`` positions."""
    return tl.minimum(tl.maximum(j - KS // 2, 0), glen - KS)


@triton.jit
def _tile_setup(NHEADS, HMAP, WMAP, DIL, KS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's query tile (the forward and the backward tile alike): batch ``b``, head ``h``, ``bh``,
    query row ``qy``, and the tile's positions, window masks and key columns."""
    pid0 = tl.program_id(0)
    qy = tl.program_id(1)
    bh = tl.program_id(2)
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
    return bh // NHEADS, bh % NHEADS, bh, qy, mask_m, in_win, rel_x, gy, jy, sy, qpos, kcol, mask_n


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
    b, h, bh, qy, mask_m, in_win, rel_x, gy, jy, sy, qpos, kcol, mask_n = _tile_setup(
        NHEADS, HMAP, WMAP, DIL, KS, BLOCK_M, BLOCK_N
    )
    offs_d, offs_dv, mask_d, mask_dv = common.head_offsets(D, DV, BLOCK_D, BLOCK_DV)
    q = common.load_tile(Q + b * s_qb + h * s_qh, qpos * s_qn, offs_d, s_qd, mask_m, mask_d, False)
    m_i, l_i, acc = common.softmax_init(BLOCK_M, BLOCK_DV)
    for t in range(KS):
        ky = gy + (sy + t) * DIL
        kpos = ky * WMAP + kcol
        kt = common.load_tile(K + b * s_kb + h * s_kh, kpos * s_kn, offs_d, s_kd, mask_n, mask_d, True)
        v = common.load_tile(V + b * s_vb + h * s_vh, kpos * s_vn, offs_dv, s_vd, mask_n, mask_dv, False)
        s = common.mma(q, kt, PREC, UPCAST) * qk_scale
        if HAS_RPB:
            rel_y = sy + t - jy + (KS - 1)
            bias = tl.load(RPB + h * (2 * KS - 1) * (2 * KS - 1) + rel_y * (2 * KS - 1) + rel_x, mask=in_win, other=0.0)
            s += bias.to(tl.float32) * 1.4426950408889634
        s = tl.where(in_win, s, float("-inf"))
        m_i, l_i, acc = common.softmax_step(s, v, m_i, l_i, acc, PREC, UPCAST)
    l_safe = tl.where(mask_m, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(
        O + b * s_ob + h * s_oh + qpos[:, None] * s_on + offs_dv[None, :] * s_od,
        out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_dv[None, :],
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
    b, h, bh, qy, mask_m, in_win, rel_x, gy, jy, sy, qpos, kcol, mask_n = _tile_setup(
        NHEADS, HMAP, WMAP, DIL, KS, BLOCK_M, BLOCK_N
    )
    offs_d, offs_dv, mask_d, mask_dv = common.head_offsets(D, DVDIM, BLOCK_D, BLOCK_DV)
    q = common.load_tile(Q + b * s_qb + h * s_qh, qpos * s_qn, offs_d, s_qd, mask_m, mask_d, False)
    do = common.load_tile(DO + b * s_ob + h * s_oh, qpos * s_on, offs_dv, s_od, mask_m, mask_dv, False)
    lse = tl.load(LSE + bh * HMAP * WMAP + qpos, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + bh * HMAP * WMAP + qpos, mask=mask_m, other=0.0)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    RR = 2 * KS - 1
    for t in range(KS):
        ky = gy + (sy + t) * DIL
        kpos = ky * WMAP + kcol
        k = common.load_tile(K + b * s_kb + h * s_kh, kpos * s_kn, offs_d, s_kd, mask_n, mask_d, False)
        v = common.load_tile(V + b * s_vb + h * s_vh, kpos * s_vn, offs_dv, s_vd, mask_n, mask_dv, False)
        s = common.mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
        rel_y = sy + t - jy + (KS - 1)
        if HAS_RPB:
            bias = tl.load(RPB + h * RR * RR + rel_y * RR + rel_x, mask=in_win, other=0.0)
            s += bias.to(tl.float32) * 1.4426950408889634
        p, ds = common.softmax_grad(s, in_win, lse, delta, do, v, PREC, UPCAST)
        dq += common.mma(ds.to(k.dtype), k, PREC, UPCAST)
        common.add_key_grads(DK, DV, bh * HMAP * WMAP + kpos, mask_n, p, ds, q, do, offs_d, offs_dv, mask_d, mask_dv,
                             D, DVDIM, scale, PREC, UPCAST)
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
            heads, H, W, dil, D, DVD, scale * common.LOG2E,
            KS=ks, HAS_RPB=rpb is not None, **cfg, **common.dot_flags(q.dtype),
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
        delta, dq, dk, dv = common.backward_buffers(q, k, v, o, do, scatter_kv=True)  # dk, dv: fp32 (atomics)
        rpb_grad = rpb is not None and ctx.needs_input_grad[3]
        RR = 2 * ks - 1
        drpb = torch.zeros(B, H, heads, RR * RR, device=q.device, dtype=torch.float32) if rpb_grad else None
        _na2d_bwd_kernel[_grid(shape, ks, dil, B, heads, cfg["BLOCK_M"])](
            q, k, v, rpb if rpb is not None else q, do, lse, delta, dq, dk, dv, drpb if rpb_grad else dk,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            heads, H, W, dil, D, DVD, scale * common.LOG2E, scale,
            KS=ks, HAS_RPB=rpb is not None, RPB_GRAD=rpb_grad,
            **cfg, **common.dot_flags(q.dtype),
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
