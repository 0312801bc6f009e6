"""Agent attention (Agent-Swin/PVT/DeiT) and an export-friendly adaptive average pooling.

Agent attention routes every query through ``n`` agent tokens (in the official models: the queries
average-pooled to a ``p×p`` grid) with two softmax attentions::

    agent_v = softmax(agent·kᵀ·scale + agent_bias) v          # agents gather from the keys
    out     = softmax(q·agentᵀ·scale + query_bias) agent_v    # queries read from the agents

Layouts: ``q: [B, heads, Nq, d]``, ``k: [B, heads, Nk, d]``, ``v: [B, heads, Nk, dv]``,
``agent: [B, heads, n, d]``; ``agent_bias`` broadcasts to ``[B, heads, n, Nk]`` and ``query_bias`` to
``[B, heads, Nq, n]`` (float, added to the logits; or bool keep-masks). Returns ``[B, heads, Nq, dv]``.

Paths:
- ``reference``: the two attentions in plain PyTorch, in the official arithmetic order
  (``(agent·scale) @ kᵀ + bias``, softmax, ``@ v``); autograd, any device, ONNX.
- ``sdpa``: two calls of the dense attention op's fast path (:func:`zoo.ops.attention`'s dispatcher,
  SDPA with 4-D biases; learnable biases get exact gradients there). On CPU with autograd the reference
  is the default (as for :func:`zoo.ops.attention`: SDPA's CPU backward recomputes the logits, so its
  fwd+bwd is slower there; docs/bench_ops.md#cpu-training-attention); forcing "sdpa" still runs it.

:func:`adaptive_avg_pool2d_matmul` pools a channels-last map as ``Ph · x · Pwᵀ`` with pooling matrices built
from the shape by torch ops, so an exported graph keeps dynamic H/W (``F.adaptive_avg_pool2d`` to a fixed
output size does not export with dynamic input sizes).
"""

from __future__ import annotations

import torch

from ._checks import check_qkv, checked_output, empty_batch_output
from ._dispatch import needs_grad as _needs_grad
from ._dispatch import register, select
from .attention import _sdpa_supports, default_scale, dispatch_attention, softmax_probs
from .sizes import pair


def _pool_matrix(size_in: int, size_out: int, device, dtype) -> torch.Tensor:
    """``[size_out, size_in]`` averaging matrix of adaptive pooling: bin ``i`` covers
    ``[floor(i·L/n), ceil((i+1)·L/n))`` (PyTorch's rule), each row sums to 1."""
    i = torch.arange(size_out, device=device)
    start = torch.div(i * size_in, size_out, rounding_mode="floor")
    end = torch.div((i + 1) * size_in + size_out - 1, size_out, rounding_mode="floor")
    j = torch.arange(size_in, device=device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def adaptive_avg_pool2d_matmul(x: torch.Tensor, out_hw: int | tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of a channels-last map ``[B, H, W, C] -> [B, oh, ow, C]``.

    Equals ``F.adaptive_avg_pool2d`` (same bins, also for non-divisible sizes and ``oh > H``) up to float
    rounding, but is two matmuls with matrices built from ``x.shape``: plain PyTorch, autograd-able, and
    exportable to ONNX with dynamic H/W.
    """
    oh, ow = pair(out_hw)
    if x.dim() != 4:
        raise ValueError(
            f"adaptive_avg_pool2d_matmul: x must be [B, H, W, C], got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}"
        )
    if oh < 1 or ow < 1:
        raise ValueError(f"adaptive_avg_pool2d_matmul: out_hw must be positive, got {(oh, ow)}")
    if not x.is_floating_point():
        raise ValueError(f"adaptive_avg_pool2d_matmul: x must be floating point, got {x.dtype}")
    ph = _pool_matrix(x.shape[1], oh, x.device, x.dtype)  # [oh, H]
    pw = _pool_matrix(x.shape[2], ow, x.device, x.dtype)  # [ow, W]
    # rows first: [B, H, W, C] -> [B, oh, W, C], then columns -> [B, oh, ow, C]
    x = torch.einsum("ih,bhwc->biwc", ph, x)
    return torch.einsum("jw,biwc->bijc", pw, x)


@register("agent_attention", "reference")
def agent_attention_reference(q, k, v, agent, agent_bias=None, query_bias=None, scale=None):
    scale = default_scale(q, scale)
    agent_v = softmax_probs(agent, k, scale, agent_bias) @ v
    return softmax_probs(q, agent, scale, query_bias) @ agent_v


@register("agent_attention", "sdpa", supports=_sdpa_supports)
def agent_attention_sdpa(q, k, v, agent, agent_bias=None, query_bias=None, scale=None):
    scale = default_scale(q, scale)
    agent_v = dispatch_attention(agent, k, v, agent_bias, scale)
    return dispatch_attention(q, agent, agent_v, query_bias, scale)


def _check_bias(name: str, bias: torch.Tensor | None, target: tuple[int, ...], what: str) -> None:
    if bias is None:
        return
    try:
        ok = tuple(torch.broadcast_shapes(tuple(bias.shape), target)) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"agent_attention: {name} of shape {tuple(bias.shape)} does not broadcast to {what} {target}"
        )
    if bias.dtype != torch.bool and not bias.is_floating_point():
        raise ValueError(f"agent_attention: {name} must be a float bias or a bool mask, got {bias.dtype}")


def agent_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    agent: torch.Tensor,
    agent_bias: torch.Tensor | None = None,
    query_bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Agent attention: ``softmax(q·agentᵀ·s + query_bias) · softmax(agent·kᵀ·s + agent_bias) · v``.

    Args:
        q: queries ``[B, heads, Nq, d]``; k: keys ``[B, heads, Nk, d]``; v: values ``[B, heads, Nk, dv]``.
        agent: agent tokens ``[B, heads, n, d]`` (same leading dims as q).
        agent_bias: added to the agent→key logits, broadcastable to ``[B, heads, n, Nk]`` (float; or bool
            keep-mask).
        query_bias: added to the query→agent logits, broadcastable to ``[B, heads, Nq, n]``.
        scale: logit scale of both attentions, default ``d ** -0.5``.
    Returns:
        ``[B, heads, Nq, dv]``.
    """
    check_qkv("agent_attention", q, k, v, 4, "[B, heads, N, d]")
    if agent.dim() != 4 or agent.shape[:2] != q.shape[:2] or agent.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"agent_attention: agent must be [B, heads, n, d] with B, heads, d of q {tuple(q.shape)}, "
            f"got {tuple(agent.shape)}"
        )
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"agent_attention: q, k, v need the same [B, heads], got {tuple(q.shape[:2])}, "
            f"{tuple(k.shape[:2])}, {tuple(v.shape[:2])}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"agent_attention: k and v need the same number of keys, got {k.shape[-2]} and {v.shape[-2]}"
        )
    if agent.dtype != q.dtype:
        raise ValueError(f"agent_attention: agent must have q's dtype {q.dtype}, got {agent.dtype}")
    B, h, Nq, _ = q.shape
    n, Nk = agent.shape[-2], k.shape[-2]
    _check_bias("agent_bias", agent_bias, (B, h, n, Nk), "[B, heads, n, Nk] =")
    _check_bias("query_bias", query_bias, (B, h, Nq, n), "[B, heads, Nq, n] =")
    empty = empty_batch_output((B, h, Nq, v.shape[-1]), q, k, v, agent, agent_bias, query_bias)
    if empty is not None:
        return empty
    needs_grad = _needs_grad(q, k, v, agent, agent_bias, query_bias)
    impl = select("agent_attention", q.device, q.dtype, needs_grad=needs_grad)
    out = impl.fn(q, k, v, agent, agent_bias, query_bias, scale)
    return checked_output("agent_attention", out, q=q, k=k, v=v, agent=agent)
