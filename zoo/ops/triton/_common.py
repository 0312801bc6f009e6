"""Helpers shared by the Triton kernel modules (imports Triton: load only through ``zoo.ops.triton.load``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

LOG2E = 1.4426950408889634

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def mma(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b`` accumulated in fp32. ``UPCAST`` (bf16 in the interpreter) multiplies in fp32: the
    interpreter's bf16 dot is wrong. ``PREC`` is the fp32 input precision ("ieee" or "tf32"; ignored for fp16/bf16)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


def dot_flags(dtype: torch.dtype) -> dict:
    """Kernel constexprs for the matmuls: fp32 inputs multiply exactly ("ieee") unless torch allows TF32 for
    CUDA matmuls (``torch.backends.cuda.matmul.allow_tf32``), the same choice torch makes for ``@``."""
    prec = "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"
    # Only bf16 is upcast in the interpreter, so its fp32/fp16 runs take the same code path as on GPU.
    return {"PREC": prec, "UPCAST": interpreting() and dtype == torch.bfloat16}


def block(n: int, lo: int = 16, hi: int = 64) -> int:
    """Power-of-two tile size covering ``n``, clamped to ``[lo, hi]`` (``tl.dot`` needs dims >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def num_programs_target(device: torch.device) -> int:
    """How many programs a launch should have to fill the device (4 per SM on CUDA; few in the interpreter)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


# Row reductions and zeros written with core builtins only: triton.language's own ``tl.sum``/``tl.max``/
# ``tl.zeros`` are @jit functions decorated when triton.language is first imported, and in the interpreter
# they only work if that import happened with TRITON_INTERPRET=1 already set (timm/torch may import Triton
# earlier, e.g. when a test session collects other modules first). These work either way.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def row_sum(x):
    """``x.sum(1)`` of a 2-D block."""
    return tl.reduce(x, 1, _add)


@triton.jit
def row_max(x):
    """``x.max(1)`` of a 2-D block."""
    return tl.reduce(x, 1, _maximum)


# Tile pieces the attention kernels share (window, routed, neighborhood). Logits are in base 2: the kernels
# scale them by ``scale·log2(e)`` (and a bias by log2(e)), so ``exp2`` gives the softmax's ``exp``.
@triton.jit
def head_offsets(D, DV, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Column offsets and masks of the head dims: ``(offs_d, offs_dv, mask_d, mask_dv)``."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    return offs_d, offs_dv, offs_d < D, offs_dv < DV


@triton.jit
def load_tile(P, rows, cols, s_col, mask_rows, mask_cols, TRANS: tl.constexpr):
    """The tile ``P[rows[i] + cols[j]·s_col]`` as ``[len(rows), len(cols)]`` (``[len(cols), len(rows)]`` with
    ``TRANS``), 0 outside ``mask_rows × mask_cols``; ``rows`` are element offsets (row index × row stride)."""
    if TRANS:
        return tl.load(P + rows[None, :] + cols[:, None] * s_col, mask=mask_rows[None, :] & mask_cols[:, None],
                       other=0.0)
    else:
        return tl.load(P + rows[:, None] + cols[None, :] * s_col, mask=mask_rows[:, None] & mask_cols[None, :],
                       other=0.0)


@triton.jit
def softmax_init(BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Online-softmax state of a query tile before any key: ``(m = -inf, l = 0, acc = 0 [BLOCK_M, BLOCK_DV])``."""
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    return m_i, l_i, acc


@triton.jit
def softmax_step(s, v, m_i, l_i, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """One key tile of the online softmax: ``s [M, N]`` its base-2 logits (``-inf`` where masked), ``v [N, dv]``
    its values; returns the updated ``(m, l, acc)``. A row whose logits are all ``-inf`` so far keeps
    ``m = -inf, l = 0, acc = 0`` (no NaN from ``-inf - -inf``)."""
    m_new = tl.maximum(m_i, row_max(s))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + row_sum(p)
    acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PREC, UPCAST)
    return m_new, l_i, acc


@triton.jit
def softmax_grad(s, keep, lse, delta, do, v, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Backward of one tile: the probabilities ``p = exp2(s - lse)`` recomputed from the forward's base-2
    log-sum-exp (0 outside ``keep``) and the logit gradient ``ds = p ∘ (dO·vᵀ − delta)``, ``delta = rowsum(dO ∘ O)``.
    Returns ``(p, ds)``."""
    p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
    dp = mma(do, tl.trans(v), PREC, UPCAST)
    return p, p * (dp - delta[:, None])


@triton.jit
def add_key_grads(DK, DV, krow, mask_n, p, ds, q, do, offs_d, offs_dv, mask_d, mask_dv, D, DVDIM, scale,
                  PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Add one tile's key/value gradients ``dk = dsᵀ·q·scale``, ``dv = pᵀ·dO`` with fp32 atomics into the
    contiguous ``DK [rows, D]``, ``DV [rows, DVDIM]`` at rows ``krow`` (for kernels whose key tiles overlap)."""
    dv = mma(tl.trans(p).to(do.dtype), do, PREC, UPCAST)
    tl.atomic_add(DV + krow[:, None] * DVDIM + offs_dv[None, :], dv, mask=mask_n[:, None] & mask_dv[None, :])
    dk = mma(tl.trans(ds).to(q.dtype), q, PREC, UPCAST) * scale
    tl.atomic_add(DK + krow[:, None] * D + offs_d[None, :], dk, mask=mask_n[:, None] & mask_d[None, :])


def backward_buffers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, do: torch.Tensor,
                     scatter_kv: bool) -> tuple:
    """``(delta, dq, dk, dv)`` for a kernel backward, shaped as q, k, v: ``delta = rowsum(dO ∘ O)`` in fp32; the
    gradients that atomics accumulate zeroed in fp32 (dk and dv when ``scatter_kv``, else dq), the others
    uninitialised in q's dtype."""
    delta = (do.float() * o.float()).sum(-1)
    acc = {"device": q.device, "dtype": torch.float32}
    own = {"device": q.device, "dtype": q.dtype}
    if scatter_kv:
        return delta, torch.empty(q.shape, **own), torch.zeros(k.shape, **acc), torch.zeros(v.shape, **acc)
    return delta, torch.zeros(q.shape, **acc), torch.empty(k.shape, **own), torch.empty(v.shape, **own)
