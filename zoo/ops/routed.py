"""Bi-level routing attention (BiFormer's BRA): attention restricted to the top-k routed regions.

The map is split into an ``nh×nw`` grid of regions (``num_regions``; BiFormer's ``n_win``), each of
``n = (H/nh)·(W/nw)`` tokens. Routing: the region-level query and key are the MEANS of q and k over each
region, taken over all heads together (one ``heads·d`` vector per region, so every head shares the
routing); the region affinity is ``(q_r·scale) k_rᵀ`` and each query region keeps the ``topk`` regions
of highest affinity. Routing takes no gradient (hard routing, as the official ``diff_routing=False``;
the softmax of the routing logits is only used by the official ``soft_routing``, which BiFormer's models
leave off, so it is not implemented). Then each query token attends, with one softmax, to all tokens of
its region's top-k regions, with ``scale``.

Layouts: ``q, k: [B, heads, H, W, d]``, ``v: [B, heads, H, W, dv]`` (per-head maps); returns
``[B, heads, H, W, dv]``. ``H`` and ``W`` must be divisible by the region grid (the layer pads first).
Regions are numbered row-major (``r = i·nw + j``), the order of the official ``(j i)`` rearrange; routing
indices are ``[B, R, topk]`` (int64, ``R = nh·nw``).

Paths (all take the same routing indices, so they agree wherever the routing does):
- ``reference``: the gather formulation, as the official code: gather k/v of the top-k regions of every
  query region, then explicit softmax attention per region (plain PyTorch, autograd, ONNX).
- ``sdpa`` (CPU default): ``topk`` covering every region → one dense SDPA call. Regions of at most
  ``MASK_FORM_MAX_REGION_TOKENS`` tokens → the gather-free mask form (:func:`routed_attention_masked`:
  all tokens region-major, a bool block mask from the indices, one dense SDPA call): it does ``R/topk``
  times the arithmetic but avoids ``B·R`` tiny per-region problems, so it is faster for small regions.
  Larger regions → the gather form with the fused SDPA kernel per region (the mask form is much slower
  there; docs/bench_ops.md#routed-mask-form); when gradients are needed on CPU the explicit product
  replaces the fused kernel, whose backward measured slower on these small per-region problems, and above
  ``CHUNKED_MIN_GATHER_ELEMENTS`` gathered elements the chunked form (:class:`_ChunkedRouted`) replaces
  the whole gather: chunks of query regions gather only their routed keys/values, and the backward
  re-gathers per chunk (a lower peak at the same CPU time; docs/bench_ops.md#routed-chunked).
  It is a form of the ``sdpa`` path, not a backend of its own: a new backend name needs ``_dispatch.py``.
- ``flex``: FlexAttention with a block mask from the indices. On CUDA (compiled) opt-in until validated
  (``flex`` and ``triton`` run by default only where ``zoo/ops/validated.json`` lists them; docs/dispatch.md); on CPU it
  runs only when forced, eagerly and forward-only (torch has no CPU flex backward; with gradients the
  dispatcher falls back to the CPU default).
- ``triton``: the gather-free indexed-K/V kernel of :mod:`zoo.ops.triton.routed_attention` (forward and
  backward; one program per query region and head walking its top-k regions with an online softmax).
  Once validated, chosen on CUDA unless every region is routed; on CPU only when forced with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from . import triton as _triton
from ._checks import check_qkv, checked_output, empty_batch_output
from ._dispatch import needs_grad as _needs_grad
from ._dispatch import register, register_sample, select
from .attention import attention_sdpa, softmax_logit_grad, softmax_probs
from .sizes import pair

_OP = "routed_attention"


def _check_regions(op: str, H: int, W: int, num_regions) -> tuple[int, int]:
    if isinstance(num_regions, bool) or not isinstance(num_regions, (int, tuple, list)):
        raise ValueError(f"{op}: num_regions must be an int or (nh, nw), got {num_regions!r}")
    nh, nw = pair(num_regions)
    if nh < 1 or nw < 1:
        raise ValueError(f"{op}: num_regions must be positive, got {num_regions!r}")
    if H % nh or W % nw:
        raise ValueError(
            f"{op}: map {H}x{W} is not divisible into {nh}x{nw} regions; pad it to multiples of the "
            f"region grid first (zoo.ops.pad_to_multiple; BiLevelRoutingAttention pads itself)"
        )
    return nh, nw


def _effective_topk(op: str, topk: int, R: int) -> int:
    if isinstance(topk, bool) or not isinstance(topk, int) or (topk < 1 and topk != -1):
        raise ValueError(f"{op}: topk must be a positive int, or -1 for every region, got {topk!r}")
    return R if topk == -1 or topk > R else topk


def to_regions(x: torch.Tensor, num_regions: int | tuple[int, int]) -> torch.Tensor:
    """Per-head map ``[B, heads, H, W, d]`` → region-major ``[B, R, heads, n, d]`` (regions row-major)."""
    nh, nw = pair(num_regions)
    B, h, H, W, d = x.shape
    x = x.reshape(B, h, nh, H // nh, nw, W // nw, d).permute(0, 2, 4, 1, 3, 5, 6)
    return x.reshape(B, nh * nw, h, (H // nh) * (W // nw), d)


def from_regions(x: torch.Tensor, num_regions: int | tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_regions`: ``[B, R, heads, n, d]`` → ``[B, heads, H, W, d]``."""
    nh, nw = pair(num_regions)
    H, W = hw
    B, _, h, _, d = x.shape
    x = x.reshape(B, nh, nw, h, H // nh, W // nw, d).permute(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(B, h, H, W, d)


def _topk_regions(q_win: torch.Tensor, k_win: torch.Tensor, topk: int, scale: float) -> torch.Tensor:
    """Region descriptors ``[B, R, heads·d]`` (means over each region's tokens) → top-k indices ``[B, R, topk]``."""
    logits = (q_win * scale) @ k_win.transpose(-2, -1)  # [B, R, R]
    return torch.topk(logits, k=topk, dim=-1).indices


def _route(qr: torch.Tensor, kr: torch.Tensor, topk: int, scale: float) -> torch.Tensor:
    """Region-major q, k ``[B, R, heads, n, d]`` → top-k region indices ``[B, R, topk]`` (no gradient)."""
    B, R = qr.shape[:2]
    q_win = qr.detach().mean(3).reshape(B, R, -1)  # [B, R, heads·d]: mean over the region's tokens
    k_win = kr.detach().mean(3).reshape(B, R, -1)
    return _topk_regions(q_win, k_win, topk, scale)


def _flat_region_indices(idx: torch.Tensor, R: int) -> torch.Tensor:
    """Routing indices ``[B, R, topk]`` → ``[B·R·topk]`` indices into the flattened ``B·R`` regions."""
    B = idx.shape[0]
    return (idx + torch.arange(B, device=idx.device, dtype=idx.dtype).view(B, 1, 1) * R).reshape(-1)


def _gather_regions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x: [B, R, heads, n, c]``, ``idx: [B, R, topk]`` → ``[B·R, heads, topk·n, c]``: the tokens of the
    routed regions of every query region, region by region (index_select on the flattened batch, so the
    backward is an index_add into ``x``'s size, not into a ``R×`` expanded copy)."""
    B, R, h, n, c = x.shape
    topk = idx.shape[-1]
    sel = x.reshape(B * R, h, n, c).index_select(0, _flat_region_indices(idx, R))  # [B·R·topk, h, n, c]
    sel = sel.view(B * R, topk, h, n, c)
    if topk == 1:
        return sel.view(B * R, h, n, c)
    return sel.transpose(1, 2).reshape(B * R, h, topk * n, c)


def _default_scale(q: torch.Tensor, scale: float | None) -> float:
    # The official BRA scales by qk_dim ** -0.5 with qk_dim = heads·d (all heads), not by d ** -0.5.
    return (q.shape[1] * q.shape[-1]) ** -0.5 if scale is None else scale


def _attend_gathered(qr, kr, vr, idx, scale):
    """Attention of every region's queries over the tokens of its routed regions (gather form, plain
    PyTorch)."""
    B, R, h, n, _ = qr.shape
    ks, vs = _gather_regions(kr, idx), _gather_regions(vr, idx)  # [B·R, h, topk·n, c]
    qf = qr.reshape(B * R, h, n, -1)
    out = softmax_probs(qf, ks, scale) @ vs
    return out.view(B, R, h, n, -1)


@register(_OP, "reference")
def routed_attention_reference(q, k, v, num_regions, topk, scale, indices=None):
    qr, kr, vr = to_regions(q, num_regions), to_regions(k, num_regions), to_regions(v, num_regions)
    idx = _route(qr, kr, topk, scale) if indices is None else indices
    out = _attend_gathered(qr, kr, vr, idx, scale)
    return from_regions(out, num_regions, (q.shape[2], q.shape[3]))


# Regions of at most this many tokens run in the mask form on the sdpa path (see the module docstring).
MASK_FORM_MAX_REGION_TOKENS = 15


@register(_OP, "sdpa")
def routed_attention_sdpa(q, k, v, num_regions, topk, scale, indices=None):
    B, h, H, W, _ = q.shape
    R = pair(num_regions)[0] * pair(num_regions)[1]
    if topk == R and indices is None:  # every region: dense attention, no routing to compute
        out = F.scaled_dot_product_attention(
            q.reshape(B, h, H * W, -1), k.reshape(B, h, H * W, -1), v.reshape(B, h, H * W, -1), scale=scale
        )
        return out.view(B, h, H, W, -1)
    if (H * W) // R <= MASK_FORM_MAX_REGION_TOKENS:
        return routed_attention_masked(q, k, v, num_regions, topk, scale, indices)
    # Head-major regions [heads, B·R, n, d]: the routed regions of every query region are gathered along
    # dim 1 straight into the [heads, B·R, topk·n, d] layout attention takes (no transposed copy of the
    # gathered keys/values, which are topk times the map); heads and regions are both batch dims to SDPA.
    qh, kh, vh = (_to_regions_head_major(t, num_regions) for t in (q, k, v))
    if indices is None:
        indices = _route_head_major(qh, kh, B, topk, scale)
    flat = _flat_region_indices(indices, R)
    topk = indices.shape[-1]
    train_cpu = _needs_grad(q, k, v) and q.device.type == "cpu"
    if train_cpu and h * B * R * topk * kh.shape[2] * (kh.shape[3] + vh.shape[3]) >= CHUNKED_MIN_GATHER_ELEMENTS:
        out = _ChunkedRouted.apply(qh, kh, vh, flat.view(B * R, topk), scale)
        return _from_regions_head_major(out, num_regions, B, (H, W))
    ks = kh.index_select(1, flat).view(h, B * R, topk * kh.shape[2], kh.shape[3])
    vs = vh.index_select(1, flat).view(h, B * R, topk * vh.shape[2], vh.shape[3])
    # The fused CPU kernel's backward is slower than autograd through the explicit product for these many
    # small per-region problems (docs/bench_ops.md#routed-train-cpu), so training on CPU takes the explicit
    # product (or, once the gathered keys/values would be large, the chunked form above, which never holds
    # them all).
    if train_cpu:
        out = softmax_probs(qh, ks, scale) @ vs
    else:
        out = F.scaled_dot_product_attention(qh, ks, vs, scale=scale)
    return _from_regions_head_major(out, num_regions, B, (H, W))


# CPU training: the sdpa path runs the chunked form (:class:`_ChunkedRouted`) when the gathered keys and
# values of a call would hold at least this many elements (heads·B·R·topk·n·(d + dv)); below it, autograd
# through the explicit product over the whole gather. Chunks hold about CHUNK_ELEMENTS gathered elements.
# The threshold puts the routed stages of high-resolution (detection-size) BiFormer training on the chunked
# form, where it lowered the peak at the same CPU time, and leaves 224 px training on the whole gather
# (docs/bench_ops.md#routed-chunked).
CHUNKED_MIN_GATHER_ELEMENTS = 1 << 21
CHUNK_ELEMENTS = 1 << 20


def _chunks(qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor, idx: torch.Tensor):
    """Query-region ranges ``(start, stop, flat indices of their routed regions)`` for :class:`_ChunkedRouted`."""
    h, BR, n, _ = kh.shape
    topk = idx.shape[1]
    per_region = h * topk * n * (kh.shape[3] + vh.shape[3] + qh.shape[2])  # gathered k, v and the logits
    step = max(1, CHUNK_ELEMENTS // per_region)
    for s in range(0, BR, step):
        e = min(BR, s + step)
        yield s, e, idx[s:e].reshape(-1)


def _gather_chunk(x: torch.Tensor, sel: torch.Tensor, regions: int) -> torch.Tensor:
    """Head-major ``x: [h, B·R, n, c]`` → ``[h, regions, topk·n, c]``: the routed regions of ``regions`` query
    regions (``sel``: their flat indices, ``regions·topk`` of them)."""
    h, _, n, c = x.shape
    return x.index_select(1, sel).view(h, regions, -1, c)


class _ChunkedRouted(torch.autograd.Function):
    """Routed attention over head-major regions that never materialises the whole gather.

    ``qh, kh: [h, B·R, n, d]``, ``vh: [h, B·R, n, dv]``, ``idx: [B·R, topk]`` (flat region indices) →
    ``[h, B·R, n, dv]``. The forward walks chunks of query regions, gathering only the chunk's routed
    keys/values; it saves q, k, v and the output (each the size of the map). The backward re-gathers per
    chunk, recomputes the chunk's softmax and scatters the key/value gradients back with ``index_add_``
    (``dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O))``, as flash attention's backward).
    """

    @staticmethod
    def forward(ctx, qh, kh, vh, idx, scale):
        out = vh.new_empty(*qh.shape[:3], vh.shape[3])
        for s, e, sel in _chunks(qh, kh, vh, idx):
            p = softmax_probs(qh[:, s:e], _gather_chunk(kh, sel, e - s), scale)
            out[:, s:e] = p @ _gather_chunk(vh, sel, e - s)
        ctx.save_for_backward(qh, kh, vh, idx, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        qh, kh, vh, idx, out = ctx.saved_tensors
        scale = ctx.scale
        h, _, n, d = kh.shape
        dq, dk, dv = torch.empty_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
        for s, e, sel in _chunks(qh, kh, vh, idx):
            ks, vs = _gather_chunk(kh, sel, e - s), _gather_chunk(vh, sel, e - s)
            qs, do = qh[:, s:e], dout[:, s:e]
            p = softmax_probs(qs, ks, scale)  # [h, c, n, topk·n]
            dv.index_add_(1, sel, (p.transpose(-2, -1) @ do).view(h, -1, n, vh.shape[3]))
            ds = softmax_logit_grad(p, vs, out[:, s:e], do)
            dq[:, s:e] = ds @ ks
            dk.index_add_(1, sel, (ds.transpose(-2, -1) @ qs).view(h, -1, n, d), alpha=scale)
        dq.mul_(scale)
        return dq, dk, dv, None, None


def _to_regions_head_major(x: torch.Tensor, num_regions) -> torch.Tensor:
    """``[B, heads, H, W, d]`` → ``[heads, B·R, n, d]`` (regions row-major within each image)."""
    nh, nw = pair(num_regions)
    B, h, H, W, d = x.shape
    x = x.reshape(B, h, nh, H // nh, nw, W // nw, d).permute(1, 0, 2, 4, 3, 5, 6)
    return x.reshape(h, B * nh * nw, (H // nh) * (W // nw), d)


def _from_regions_head_major(x: torch.Tensor, num_regions, B: int, hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_to_regions_head_major`: ``[heads, B·R, n, d]`` → ``[B, heads, H, W, d]``."""
    nh, nw = pair(num_regions)
    H, W = hw
    h, _, _, d = x.shape
    x = x.reshape(h, B, nh, nw, H // nh, W // nw, d).permute(1, 0, 2, 4, 3, 5, 6)
    return x.reshape(B, h, H, W, d)


def _route_head_major(qh: torch.Tensor, kh: torch.Tensor, B: int, topk: int, scale: float) -> torch.Tensor:
    """:func:`_route` on head-major regions: the same region means (over each region's n tokens) and
    logits, so the same top-k indices ``[B, R, topk]``."""
    BR = qh.shape[1]
    q_win = qh.detach().mean(2).permute(1, 0, 2).reshape(B, BR // B, -1)  # [B, R, heads·d]
    k_win = kh.detach().mean(2).permute(1, 0, 2).reshape(B, BR // B, -1)
    return _topk_regions(q_win, k_win, topk, scale)


def _region_keep(idx: torch.Tensor, R: int) -> torch.Tensor:
    """Routing indices ``[B, R, topk]`` → region-level keep table ``[B, R, R]`` (True = routed)."""
    return (idx.unsqueeze(-1) == torch.arange(R, device=idx.device)).any(dim=-2)  # no scatter: exports


def _region_major_tokens(x: torch.Tensor, num_regions) -> torch.Tensor:
    """``[B, heads, H, W, d]`` → ``[B, heads, R·n, d]`` with the tokens of each region contiguous."""
    xr = to_regions(x, num_regions)
    B, R, h, n, d = xr.shape
    return xr.transpose(1, 2).reshape(B, h, R * n, d)


def _from_region_major_tokens(x: torch.Tensor, num_regions, hw: tuple[int, int]) -> torch.Tensor:
    nh, nw = pair(num_regions)
    B, h, N, d = x.shape
    R = nh * nw
    return from_regions(x.view(B, h, R, N // R, d).transpose(1, 2), num_regions, hw)


def routed_attention_masked(q, k, v, num_regions, topk, scale, indices=None):
    """Gather-free form: region-major tokens, bool block mask from the indices, dense SDPA.

    Same arguments as the registered paths. Computes all ``N×N`` logits (``R/topk`` times the gather
    form's arithmetic) but in one dense kernel; the ``sdpa`` path uses it for small regions.
    """
    B, h, H, W, _ = q.shape
    qt, kt, vt = (_region_major_tokens(t, num_regions) for t in (q, k, v))
    R = pair(num_regions)[0] * pair(num_regions)[1]
    n = (H * W) // R
    if indices is None:
        indices = _route(to_regions(q, num_regions), to_regions(k, num_regions), topk, scale)
    keep = _region_keep(indices, R)
    keep = keep.repeat_interleave(n, dim=1).repeat_interleave(n, dim=2).unsqueeze(1)  # [B, 1, N, N]
    out = attention_sdpa(qt, kt, vt, keep, scale)
    return _from_region_major_tokens(out, num_regions, (H, W))


_flex_compiled = None


def _flex_supports(device: torch.device, dtype: torch.dtype, needs_grad: bool = False, **kw) -> list[str]:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return ["torch.nn.attention.flex_attention not importable"]
    if device.type == "cuda":
        return []
    # CPU: eager FlexAttention (forward only; torch has no CPU flex backward). Reached only when forced,
    # since the CPU default order does not list flex.
    if device.type != "cpu":
        return [f"CUDA or CPU only (device {device.type})"]
    return ["no CPU backward in FlexAttention: a gradient is needed"] if needs_grad else []


@register(_OP, "flex", supports=_flex_supports)
def routed_attention_flex(q, k, v, num_regions, topk, scale, indices=None):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    global _flex_compiled
    B, h, H, W, _ = q.shape
    R = pair(num_regions)[0] * pair(num_regions)[1]
    n = (H * W) // R
    if indices is None:
        indices = _route(to_regions(q, num_regions), to_regions(k, num_regions), topk, scale)
    keep = _region_keep(indices, R)

    def mask_mod(b, hh, q_idx, kv_idx):
        return keep[b, q_idx // n, kv_idx // n]

    if q.device.type == "cpu" and not torch.is_grad_enabled():
        # CPU flex refuses inputs that require grad even under no_grad; nothing is differentiated here.
        q, k, v = q.detach(), k.detach(), v.detach()
    qt, kt, vt = (_region_major_tokens(t, num_regions) for t in (q, k, v))
    N = H * W
    on_cuda = q.device.type == "cuda"
    block_mask = create_block_mask(mask_mod, B, None, N, N, device=q.device, _compile=on_cuda)
    if on_cuda and not torch.compiler.is_compiling():
        if _flex_compiled is None:
            _flex_compiled = torch.compile(flex_attention, dynamic=False)
        out = _flex_compiled(qt, kt, vt, block_mask=block_mask, scale=scale)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = flex_attention(qt, kt, vt, block_mask=block_mask, scale=scale)
    return _from_region_major_tokens(out, num_regions, (H, W))


def _triton_supports(device: torch.device, dtype: torch.dtype, dense: bool = False, **kw) -> list[str]:
    why = []
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        why.append(f"float16/bfloat16/float32 only (dtype {dtype})")
    if not _triton.available(device):
        why.append(_triton.unavailable_reason(device))
    # Every region routed (dense attention): SDPA's flash kernels win on CUDA unless triton is forced.
    if not why and dense and device.type == "cuda" and not _triton.forced():
        why.append("every region routed (dense attention): SDPA's flash kernels win (force triton to run it)")
    return why


@register(_OP, "triton", supports=_triton_supports)
def routed_attention_triton(q, k, v, num_regions, topk, scale, indices=None):
    """Indexed-K/V kernel of :mod:`zoo.ops.triton.routed_attention` (no gather, forward and backward)."""
    if indices is None:
        indices = _route(to_regions(q, num_regions), to_regions(k, num_regions), topk, scale)
    return _triton.load("routed_attention").routed_attention(q, k, v, num_regions, indices, scale)


def _sample(device: torch.device, dtype: torch.dtype, backend: str) -> tuple:
    """Self-check input: a 4x6 map of 2 heads (d 16) in 2x3 regions, top-2, routing computed once in fp32 so
    that the path checked and the reference attend to the same regions."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 6, 16, generator=g) for _ in range(3))
    idx = _route(to_regions(q, (2, 3)), to_regions(k, (2, 3)), 2, 0.25).to(device)
    q, k, v = (t.to(device, dtype) for t in (q, k, v))
    return q, k, v, (2, 3), 2, 0.25, idx


register_sample(_OP, _sample)


def _check_indices(op: str, indices: torch.Tensor, B: int, R: int, topk: int) -> None:
    if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.dim() != 3:
        raise ValueError(f"{op}: indices must be an int64 tensor [B, R, topk] (from routing_indices)")
    if tuple(indices.shape) != (B, R, topk):
        raise ValueError(
            f"{op}: indices must have shape [B, R, topk] = {(B, R, topk)} for this call, "
            f"got {tuple(indices.shape)}; recompute them with routing_indices for these inputs"
        )


def _validate(op: str, q, k, v, num_regions, topk):
    check_qkv(op, q, k, v, 5, "[B, heads, H, W, d]")
    if k.shape[:4] != q.shape[:4] or v.shape[:4] != q.shape[:4]:
        raise ValueError(
            f"{op}: q, k, v must share [B, heads, H, W] (self-attention over one map), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    H, W = q.shape[2], q.shape[3]
    nh, nw = _check_regions(op, H, W, num_regions)
    return (nh, nw), _effective_topk(op, topk, nh * nw)


def routing_indices(
    q: torch.Tensor,
    k: torch.Tensor,
    num_regions: int | tuple[int, int],
    topk: int,
    scale: float | None = None,
) -> torch.Tensor:
    """The regions each query region routes to: ``[B, R, topk]`` int64, highest affinity first.

    ``q, k: [B, heads, H, W, d]``; affinity ``(mean_region(q)·scale) mean_region(k)ᵀ`` over all heads'
    channels together; no gradient. ``topk=-1`` or ``topk > R`` means every region.
    """
    op = "routing_indices"
    check_qkv(op, q, k, k, 5, "[B, heads, H, W, d]")
    if k.shape[:4] != q.shape[:4]:
        raise ValueError(f"{op}: q and k must share [B, heads, H, W], got {tuple(q.shape)}, {tuple(k.shape)}")
    nh, nw = _check_regions(op, q.shape[2], q.shape[3], num_regions)
    topk = _effective_topk(op, topk, nh * nw)
    return _route(to_regions(q, (nh, nw)), to_regions(k, (nh, nw)), topk, _default_scale(q, scale))


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_regions: int | tuple[int, int],
    topk: int,
    scale: float | None = None,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bi-level routing attention (BiFormer BRA, hard routing).

    Args:
        q, k: ``[B, heads, H, W, d]``; v: ``[B, heads, H, W, dv]``. ``H``, ``W`` divisible by the grid.
        num_regions: regions per side, int or ``(nh, nw)`` (BiFormer's ``n_win``; region size ``H/nh``).
        topk: regions each query region attends to; ``-1`` or ``≥ nh·nw`` means all (dense attention).
        scale: logit scale for routing and attention; default ``(heads·d) ** -0.5`` — the official BRA
            scale (``qk_dim`` of all heads), not the per-head ``d ** -0.5``.
        indices: optional routing indices ``[B, R, topk]`` from :func:`routing_indices` (reused instead
            of routing again; no gradient flows through routing either way).
    Returns:
        ``[B, heads, H, W, dv]``.
    """
    (nh, nw), topk = _validate("routed_attention", q, k, v, num_regions, topk)
    if indices is not None:
        _check_indices("routed_attention", indices, q.shape[0], nh * nw, topk)
    empty = empty_batch_output((*q.shape[:-1], v.shape[-1]), q, k, v)
    if empty is not None:
        return empty
    needs_grad = _needs_grad(q, k, v)
    dense = topk == nh * nw and indices is None
    impl = select(_OP, q.device, q.dtype, needs_grad=needs_grad, dense=dense)
    out = impl.fn(q, k, v, (nh, nw), topk, _default_scale(q, scale), indices)
    return checked_output("routed_attention", out, q=q, k=k, v=v)
