"""Dense scaled dot-product attention with an optional additive bias.

``attention(q, k, v, bias)`` is the core every structured op reduces to. Layouts: ``q: [B, heads, Nq, d]``,
``k: [B, heads, Nk, d]``, ``v: [B, heads, Nk, dv]``; ``bias`` broadcasts to ``[B, heads, Nq, Nk]`` (float,
added to the logits) or is a bool mask of that shape (True = attend). Returns ``[B, heads, Nq, dv]``.

Paths:
- ``reference``: softmax(q kᵀ·scale + bias) v in plain PyTorch (autograd, any device, ONNX).
- ``sdpa``: ``F.scaled_dot_product_attention`` with the bias expanded to 4-D, which on CPU takes the fused
  flash kernel. That kernel has no bias gradient, so a bias that requires grad (a learnable relative
  position table) would fall to SDPA's slow math path; instead :class:`_BiasedSDPA` runs the fused forward
  with the bias detached and computes all gradients, the bias's included, in its own backward by
  recomputing the probabilities (memory as the fused forward; the backward equals the math path's).
- ``triton``: :mod:`zoo.ops.triton.window_attention`, a fused kernel for many small groups with a bias
  (windows/grids of MaxViT, CrossFormer, Swin), bias gradient summed over groups in the kernel. Opt-in
  (``use_backend("triton")``) until the validation record lists it for the GPU and dtype (docs/dispatch.md);
  then chosen on CUDA for biased 4-D calls of at most ``TRITON_AUTO_MAX_TOKENS`` tokens. On CPU only when
  forced and ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import triton as _triton
from ._checks import check_qkv, checked_output, empty_batch_output
from ._dispatch import forced_backend, register, register_sample, select
from ._dispatch import needs_grad as _needs_grad
from .sizes import is_capturing


def default_scale(q: torch.Tensor, scale: float | None) -> float:
    """The logit scale: ``scale``, or ``d ** -0.5`` for ``q: [..., d]`` when it is None."""
    return q.shape[-1] ** -0.5 if scale is None else scale


def _as_4d(bias: torch.Tensor) -> torch.Tensor:
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    return bias


def add_logit_bias(logits: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``logits + bias`` for a float bias; a bool bias is a keep-mask (False → ``-inf``); None leaves them."""
    if bias is None:
        return logits
    if bias.dtype == torch.bool:
        return logits.masked_fill(~bias, float("-inf"))
    return logits + bias


def softmax_probs(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The attention probabilities ``softmax((q·scale) kᵀ + bias)`` over the keys: ``q: [..., Nq, d]``,
    ``k: [..., Nk, d]``, ``bias`` as in :func:`add_logit_bias` → ``[..., Nq, Nk]``. The explicit form every
    plain-PyTorch attention path of zoo.ops uses (reference paths, CPU training forms, recomputing backwards)."""
    return add_logit_bias((q * scale) @ k.transpose(-2, -1), bias).softmax(dim=-1)


def softmax_logit_grad(p: torch.Tensor, v: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient of the logits of ``out = p @ v``, ``p = softmax(logits)``: ``dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O))``
    (flash attention's backward). ``p: [..., Nq, Nk]``, ``v: [..., Nk, dv]``, ``out, grad_out: [..., Nq, dv]``.
    Then ``dq = dS·k·scale``, ``dk = dSᵀ·q·scale``, ``dv = Pᵀ·dO``."""
    return (grad_out @ v.transpose(-2, -1)).sub_((grad_out * out).sum(-1, keepdim=True)).mul_(p)


@register("attention", "reference")
def attention_reference(q, k, v, bias=None, scale=None):
    return softmax_probs(q, k, default_scale(q, scale), bias) @ v


def _sum_to_shape(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a gradient over the dims that were broadcast to reach ``g.shape`` from ``shape``."""
    lead = g.dim() - len(shape)
    if lead:
        g = g.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    return g


class _BiasedSDPA(torch.autograd.Function):
    """Fused SDPA forward with a float bias that needs a gradient; exact backward by recomputation."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_as_4d(bias.detach()), scale=scale)
        ctx.save_for_backward(q, k, v, bias, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out = ctx.saved_tensors
        scale = ctx.scale
        p = softmax_probs(q, k, scale, bias)
        dv = p.transpose(-2, -1) @ grad_out
        ds = softmax_logit_grad(p, v, out, grad_out)
        dq = (ds @ k) * scale
        dk = (ds.transpose(-2, -1) @ q) * scale
        dbias = _sum_to_shape(ds, bias.shape) if ctx.needs_input_grad[3] else None
        # q, k, v may be broadcast views in the forward; their grads already have their shapes.
        return dq, dk, dv, dbias, None


def _sdpa_supports(device, dtype, needs_grad=False, **kw) -> list[str]:
    # CPU training: the math formulation (softmax kept for backward) beats SDPA, whose CPU backward (and our
    # biased backward) recomputes the logits (docs/bench_ops.md#cpu-training-attention). Forcing "sdpa" still
    # runs it.
    if device.type == "cpu" and needs_grad and forced_backend() != "sdpa":
        return ["CPU training: the reference's explicit softmax is faster there (force sdpa to run it)"]
    return []


@register("attention", "sdpa", supports=_sdpa_supports)
def attention_sdpa(q, k, v, bias=None, scale=None):
    scale = default_scale(q, scale)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if (
        bias.dtype != torch.bool
        and bias.requires_grad
        and torch.is_grad_enabled()
        and q.device.type == "cpu"
        and not is_capturing()
    ):
        return _BiasedSDPA.apply(q, k, v, bias, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_as_4d(bias), scale=scale)


# Where the triton path is validated on CUDA it is auto-chosen for biased attention over groups of at most this many
# tokens (windows, grids); longer sequences and unbiased calls keep SDPA's flash kernels. Forcing lifts the limit.
TRITON_AUTO_MAX_TOKENS = 256


def _triton_supports(device, dtype, nq=0, nk=0, d=0, dv=0, ndim=0, has_bias=False, **kw) -> list[str]:
    why = []
    if ndim != 4:
        why.append(f"4-D q/k/v only (got {ndim}-D)")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        why.append(f"float16/bfloat16/float32 only (dtype {dtype})")
    if max(d, dv) > 256:
        why.append(f"head dim at most 256 (got {max(d, dv)})")
    if not _triton.available(device):
        why.append(_triton.unavailable_reason(device))
    if not why and device.type == "cuda" and not _triton.forced():
        if not has_bias:
            why.append("no bias: SDPA's flash kernels win (force triton to run it)")
        elif max(nq, nk) > TRITON_AUTO_MAX_TOKENS:
            why.append(f"more than TRITON_AUTO_MAX_TOKENS={TRITON_AUTO_MAX_TOKENS} tokens (force triton to run it)")
    return why


@register("attention", "triton", supports=_triton_supports)
def attention_triton(q, k, v, bias=None, scale=None):
    """Fused kernel of :mod:`zoo.ops.triton.window_attention` (bias gradient included)."""
    return _triton.load("window_attention").window_attention(q, k, v, bias, default_scale(q, scale))


def _sample(device: torch.device, dtype: torch.dtype, backend: str) -> tuple:
    """Self-check input: 6 groups x 2 heads of 20 tokens, d 16, a float bias per head (a window-attention call)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, 20, 16, generator=g).to(device, dtype) for _ in range(3))
    bias = torch.randn(1, 2, 20, 20, generator=g).to(device, dtype)
    return q, k, v, bias, None


register_sample("attention", _sample)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention ``softmax(q kᵀ·scale + bias) v``.

    Args:
        q: ``[B, heads, Nq, d]``; k: ``[B, heads, Nk, d]``; v: ``[B, heads, Nk, dv]`` (leading dims may be
            any number ≥ 1 as long as q, k, v agree).
        bias: additive float bias or bool mask (True = keep), broadcastable to ``[..., Nq, Nk]``.
        scale: logit scale, default ``d ** -0.5``.
    Returns:
        ``[B, heads, Nq, dv]``.
    """
    check_qkv("attention", q, k, v, q.dim(), "[B, heads, N, d]")
    if q.dim() < 3:
        raise ValueError(f"attention: q must be [B, heads, N, d], got shape {tuple(q.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: k and v need the same number of keys, got {k.shape[-2]} and {v.shape[-2]}")
    empty = empty_batch_output((*q.shape[:-1], v.shape[-1]), q, k, v, bias)
    if empty is not None:
        return empty
    return checked_output("attention", dispatch_attention(q, k, v, bias, scale), q=q, k=k, v=v)


def dispatch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`attention` without its argument and NaN/Inf checks: for ops built on it (neighborhood attention)
    that check their own inputs and output, so the inner call does not scan the data a second time."""
    needs_grad = _needs_grad(q, k, v, bias)
    impl = select(
        "attention", q.device, q.dtype, nq=q.shape[-2], nk=k.shape[-2], d=q.shape[-1], dv=v.shape[-1],
        ndim=q.dim(), has_bias=bias is not None, needs_grad=needs_grad,
    )
    return impl.fn(q, k, v, bias, scale)
