"""Neighborhood attention (NAT) and dilated neighborhood attention (DiNAT), legacy NATTEN semantics.

Each query attends to a ``k x k`` window of keys (``k`` along a 1-D sequence) around it. Semantics are those
of the legacy NATTEN kernels (<= 0.17, ``natten2dqkrpb``/``natten2dav``; window and bias start per position as
in v0.14.6 ``csrc/cpu/natten_cpu_commons.h``), which the official NAT/DiNAT weights were trained with:

- Window clamped, not padded: along an axis of length ``L`` the window of position ``i`` is shifted to stay
  inside the axis, so every query sees exactly ``k`` keys per axis (near the border the query is off-centre).
- Dilation ``d``: positions ``i`` with equal ``i % d`` form a group (length ``ceil((L - i % d) / d)``); the
  window takes every ``d``-th position and is clamped inside the query's group. In group coordinates
  ``j = i // d``, the window starts at ``clamp(j - k // 2, 0, len(group) - k)``.
- Relative position bias ``rpb: [heads, 2k-1, 2k-1]`` (``[heads, 2k-1]`` in 1-D) is indexed by the
  key-minus-query offset in dilated steps, ``rpb[h, (ky - qy) / d + k - 1, (kx - qx) / d + k - 1]``
  (first table axis = height).
- logits = ``q . k * scale + rpb``, softmax over the ``k·k`` window, weighted sum of ``v``.

Every group must hold at least ``k`` positions, i.e. each axis must be ``>= kernel_size * dilation``
(the smallest group has ``L // d`` positions); NATTEN raises there and so do these ops. The legacy NATTEN
module (``NeighborhoodAttention2D`` <= 0.14) zero-pads smaller maps at the bottom/right *before* its qkv
projection and crops after; :class:`zoo.layers.NeighborhoodAttention2D` does the same.

Paths (``zoo.ops.use_backend`` forces one; each matches ``reference`` forward and backward where it runs):

- ``reference``: gathers the ``k·k`` neighbours of every query (one index gather on K and V), then a
  per-query softmax. Memory ``O(N·k²·d)``, no ``O(N²)`` term. Plain PyTorch, ONNX-exportable.
- ``sdpa``: the window as a dense additive mask (``-inf`` outside, RPB inside) over all ``N x N`` pairs,
  run through :func:`zoo.ops.attention` (fused SDPA; ONNX-exportable too). ``O(N²)``, but fastest on CPU
  for small maps; auto-selected while ``N = H·W <= DENSE_MAX_TOKENS`` (``DENSE_MAX_TOKENS_TRAIN`` when
  gradients are needed; measured CPU crossovers), else the dispatcher falls to ``reference``.
- ``flex``: ``torch.nn.attention.flex_attention`` with a neighbourhood ``mask_mod`` (block-sparse) and a
  ``score_mod`` adding the RPB. On CUDA (compiled there) opt-in until validated. On CPU it runs eagerly
  when forced, forward only (FlexAttention has no CPU backward): with gradients it falls back.
- ``natten``: NATTEN >= 0.21 fused kernels (``natten.na2d``/``na1d``, heads-last layout); CUDA only,
  ``rpb is None`` only (NATTEN >= 0.20 dropped RPB) and no attention dropout. Opt-in until validated.

- ``triton`` (2-D only): the fused kernel of :mod:`zoo.ops.triton.neighborhood`, forward and backward with
  the RPB gradient. Once validated, chosen on CUDA when there is an RPB (or NATTEN is missing); on CPU only
  when forced with ``TRITON_INTERPRET=1`` (tests).

``flex``, ``natten`` and ``triton`` run by default only where the validation record ``zoo/ops/validated.json``
lists them for the GPU architecture and dtype (none yet); forced, they first check themselves against the
reference on a small input (docs/dispatch.md).

Only the ``reference`` path supports attention-weight dropout (``attn_drop > 0``); the others fall back to
it when dropout is requested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import triton as _triton
from ._checks import check_qkv, checked_output, empty_batch_output
from ._dispatch import has_module, register, register_sample, select
from ._dispatch import needs_grad as _needs_grad
from .attention import default_scale, dispatch_attention
from .sizes import is_capturing, is_tracing

__all__ = ["neighborhood_attention1d", "neighborhood_attention2d", "neighborhood_window"]

# The SDPA path uses one dense [N, N] mask for maps of at most this many tokens (N = H·W): up to there the dense
# mask beats the gather on CPU (forward; forward+backward up to the larger _TRAIN size). Measured in
# docs/bench_ops.md#neighborhood-dense.
DENSE_MAX_TOKENS = 400
DENSE_MAX_TOKENS_TRAIN = 1024
# 2-D maps of more than TILED_MIN_TOKENS tokens take the tiled path of the same backend: TILE x TILE query
# tiles attend densely (SDPA with the RPB as a bias and -inf outside each query's window) to the union of their
# windows, so neither an [N, N] mask nor an [N, k*k, d] gather of keys and values is materialised; dilation
# runs it on each dilation group's sub-grid. Small maps are faster dense, larger ones tiled, and a tile of 7
# was as fast as 8 and faster than 14 (docs/bench_ops.md#neighborhood-tiled).
# (DENSE_MAX_TOKENS* above still decide the 1-D op and the traced export graph.)
TILED_MIN_TOKENS = 256
TILE = 7

_OP2 = "neighborhood_attention2d"
_OP1 = "neighborhood_attention1d"


# --------------------------------------------------------------------------------------------------------
# index helpers (torch ops on the sizes; cached per size and device outside tracing/compilation)

_CACHE: dict[tuple, object] = {}
_CACHE_MAX = 64


def _cached(key: tuple, build):
    if is_capturing():
        return build()
    out = _CACHE.get(key)
    if out is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        # built outside inference mode: a cached index made under torch.inference_mode() would be an
        # inference tensor, and a later training step that indexes with it fails to save it for backward
        with torch.inference_mode(False):
            out = _CACHE[key] = build()
    return out


def neighborhood_window(
    length: int, kernel_size: int, dilation: int = 1, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window of every position along one axis (legacy NATTEN clamping).

    Returns ``(keys, rel)``, both ``[length, kernel_size]`` int64: ``keys[i, t]`` is the position of the
    ``t``-th neighbour of ``i``, and ``rel[i, t]`` its RPB index, ``(keys[i, t] - i) / dilation + k - 1``
    (in ``[0, 2k-2]``).
    """
    i = torch.arange(length, device=device)
    group = i % dilation
    j = i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((j - kernel_size // 2).clamp(min=0), group_len - kernel_size)
    t = torch.arange(kernel_size, device=device)
    key_j = start[:, None] + t[None, :]  # neighbour index inside the group
    keys = group[:, None] + key_j * dilation
    rel = key_j - j[:, None] + (kernel_size - 1)
    return keys, rel


def _window_tables(shape: tuple[int, ...], ks: int, dil: int, device: torch.device):
    """Flat neighbour index ``[N, k^n]`` into the ``N = prod(shape)`` tokens, flat RPB index ``[N, k^n]``."""

    def build():
        if len(shape) == 1:
            return neighborhood_window(shape[0], ks, dil, device)
        H, W = shape
        kh, rh = neighborhood_window(H, ks, dil, device)
        kw, rw = neighborhood_window(W, ks, dil, device)
        idx = kh[:, None, :, None] * W + kw[None, :, None, :]  # [H, W, k, k]
        rel = rh[:, None, :, None] * (2 * ks - 1) + rw[None, :, None, :]
        return idx.reshape(H * W, ks * ks), rel.reshape(H * W, ks * ks)

    return _cached(("win", shape, ks, dil, str(device)), build)


def _dense_tables(shape: tuple[int, ...], ks: int, dil: int, device: torch.device):
    """Dense ``[N, N]`` keep-mask and flat RPB index (clamped to 0 outside the window)."""

    def build():
        n = 1
        for s in shape:
            n *= s
        idx, rel = _window_tables(shape, ks, dil, device)
        rows = torch.arange(n, device=device)[:, None].expand_as(idx)
        keep = torch.zeros(n, n, dtype=torch.bool, device=device)
        keep = keep.index_put((rows, idx), torch.ones((), dtype=torch.bool, device=device))
        rel_full = torch.zeros(n, n, dtype=torch.long, device=device)
        rel_full = rel_full.index_put((rows, idx), rel)
        return keep, rel_full

    return _cached(("dense", shape, ks, dil, str(device)), build)


# --------------------------------------------------------------------------------------------------------
# paths; all take flattened maps q/k/v [B, heads, N, d], the map shape, and rpb flattened to [heads, R]


def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``table[:, idx]`` for ``table: [heads, R]`` and an int64 ``idx`` of any shape → ``[heads, *idx.shape]``,
    as one ``torch.gather`` over a broadcast index: the same values and gradient as the advanced index, which
    on CPU is several times slower for these tables (docs/bench_ops.md#neighborhood-tiled-layout)."""
    flat = idx.reshape(1, -1).expand(table.shape[0], -1)
    return torch.gather(table, 1, flat).reshape(table.shape[0], *idx.shape)


def _na_gather(q, k, v, shape, ks, dil, rpb, scale, attn_drop):
    idx, rel = _window_tables(shape, ks, dil, q.device)
    kg = k[:, :, idx]  # [B, h, N, K, d]
    vg = v[:, :, idx]  # [B, h, N, K, dv]
    logits = ((q * default_scale(q, scale)).unsqueeze(-2) @ kg.transpose(-2, -1)).squeeze(-2)  # [B, h, N, K]
    if rpb is not None:
        logits = logits + _lookup(rpb, rel)  # [h, N, K]
    attn = logits.softmax(dim=-1)
    if attn_drop > 0.0:
        attn = F.dropout(attn, attn_drop, training=True)
    return (attn.unsqueeze(-2) @ vg).squeeze(-2)


def _na_dense(q, k, v, shape, ks, dil, rpb, scale, attn_drop):
    keep, rel = _dense_tables(shape, ks, dil, q.device)
    if rpb is None:
        bias = keep
    else:
        bias = _lookup(rpb, rel).masked_fill(~keep, float("-inf")).unsqueeze(0)  # [1, h, N, N]
    return dispatch_attention(q, k, v, bias, scale=default_scale(q, scale))


def _tile_tables(shape: tuple[int, int], ks: int, tile: int, device: torch.device):
    """Tables of the tiled path for an ``H x W`` map, kernel ``ks``, dilation 1.

    Returns ``(qidx [T, P], kidx [T, L], bias_idx [T, P, L], inverse [N], R)``: for each of the ``T`` tiles
    the flat index of its ``P`` query slots (slots past the map edge repeat a valid pixel), of the ``L`` keys
    of its halo (the union of its queries' windows), the index of each (query, key) pair into the extended
    RPB row ``[rpb (R values), 0, -inf]`` (``R``: a padded query slot, ``R + 1``: a key outside the window),
    and where each pixel's output sits in the flattened ``[T·P]`` tile outputs.
    """

    def build():
        # built on the CPU (boolean indexing has no meta-device kernel), then moved
        tables = _build_tile_tables(shape, ks, tile, torch.device("cpu"))
        return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in tables)

    return _cached(("tile", shape, ks, tile, str(device)), build)


def _build_tile_tables(shape: tuple[int, int], ks: int, tile: int, device: torch.device):
    H, W = shape
    th, tw = min(tile, H), min(tile, W)
    lh, lw = min(th + ks - 1, H), min(tw + ks - 1, W)
    nh, nw = -(-H // th), -(-W // tw)

    def axis(length, t, lt, n):
        pos = torch.arange(n, device=device)[:, None] * t + torch.arange(t, device=device)[None, :]
        first = (pos[:, 0] - ks // 2).clamp(min=0, max=length - ks)  # window start of the tile's 1st query
        start = first.clamp(max=length - lt)  # halo start; the halo holds every window of the tile
        return pos, start

    rows, hr = axis(H, th, lh, nh)
    cols, hc = axis(W, tw, lw, nw)
    qvalid = ((rows < H)[:, None, :, None] & (cols < W)[None, :, None, :]).reshape(nh * nw, th * tw)
    qidx = (rows.clamp(max=H - 1)[:, None, :, None] * W + cols.clamp(max=W - 1)[None, :, None, :])
    qidx = qidx.reshape(nh * nw, th * tw)
    krow = hr[:, None] + torch.arange(lh, device=device)[None, :]
    kcol = hc[:, None] + torch.arange(lw, device=device)[None, :]
    kidx = (krow[:, None, :, None] * W + kcol[None, :, None, :]).reshape(nh * nw, lh * lw)

    idx, rel = _window_tables((H, W), ks, 1, device)  # [N, K]
    tile_r = torch.arange(nh, device=device).repeat_interleave(nw)
    tile_c = torch.arange(nw, device=device).repeat(nh)
    keys = idx[qidx]  # [T, P, K]
    loc = (keys // W - hr[tile_r][:, None, None]) * lw + (keys % W - hc[tile_c][:, None, None])
    R = (2 * ks - 1) ** 2
    bias_idx = torch.full((nh * nw, th * tw, lh * lw), R + 1, dtype=torch.long, device=device)
    bias_idx.scatter_(2, loc, rel[qidx])
    # no boolean-mask indexing below (its data-dependent shape would break a torch.compile graph): padded
    # query slots get bias row R; each real query's slot is scattered to its map position, the padded slots
    # (clamped duplicates of real positions) to a spare last entry that is dropped
    bias_idx = torch.where(qvalid[:, :, None], bias_idx, R)
    flat_valid = qvalid.reshape(-1)
    target = torch.where(flat_valid, qidx.reshape(-1), H * W)
    inverse = torch.zeros(H * W + 1, dtype=torch.long, device=device)
    inverse = inverse.scatter(0, target, torch.arange(flat_valid.numel(), device=device))[: H * W]
    return qidx, kidx, bias_idx, inverse, R


def _na_tiled(q, k, v, shape, ks, rpb, scale):
    """Dilation-1 neighborhood attention on a flattened ``H x W`` map as dense attention of query tiles to
    their halos (see :func:`_tile_tables`); ``rpb`` flat ``[heads, (2k-1)^2]`` or None."""
    qidx, kidx, bias_idx, inverse, R = _tile_tables(tuple(shape), ks, TILE, q.device)
    B, h = q.shape[:2]
    (T, P), L = qidx.shape, kidx.shape[1]
    table = q.new_zeros(h, R) if rpb is None else rpb
    ext = torch.cat([table, q.new_zeros(h, 1), q.new_full((h, 1), float("-inf"))], dim=1)
    bias = _lookup(ext, bias_idx).reshape(1, h * T, P, L)
    # the tiles as heads ([B, h·T, P, d]): 4-D inputs take SDPA's fused CPU kernel, 5-D ones its math path
    qt, kt, vt = (t[:, :, i].reshape(B, h * T, i.shape[1], t.shape[-1]) for t, i in ((q, qidx), (k, kidx), (v, kidx)))
    out = dispatch_attention(qt, kt, vt, bias, scale=default_scale(q, scale))
    return out.reshape(B, h, T * P, out.shape[-1])[:, :, inverse]


def _na_sdpa2d(q, k, v, shape, ks, dil, rpb, scale, attn_drop):
    """2-D SDPA path: dense mask for small maps, tiles for large ones; dilation ``d`` runs dilation 1 on the
    ``d x d`` dilation groups (pixels with the same ``(row mod d, col mod d)``), which is what dilated
    neighborhood attention is (legacy NATTEN semantics, the same RPB indices). While tracing for export,
    the whole map takes the dense mask (the tiled tables are Python-size dependent)."""
    if is_tracing():
        return _na_dense(q, k, v, shape, ks, dil, rpb, scale, attn_drop)
    H, W = shape
    if dil == 1:
        if H * W <= TILED_MIN_TOKENS:
            return _na_dense(q, k, v, shape, ks, 1, rpb, scale, attn_drop)
        return _na_tiled(q, k, v, shape, ks, rpb, scale)
    B, h = q.shape[:2]
    maps = [t.reshape(B, h, H, W, t.shape[-1]) for t in (q, k, v)]
    out = q.new_empty(B, h, H, W, v.shape[-1])
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a in range(dil):
        for b in range(dil):
            groups.setdefault((-(-(H - a) // dil), -(-(W - b) // dil)), []).append((a, b))
    for (gh, gw), residues in groups.items():
        sub = [torch.cat([m[:, :, a::dil, b::dil] for a, b in residues], dim=0).reshape(-1, h, gh * gw, m.shape[-1])
               for m in maps]
        res = _na_sdpa2d(*sub, (gh, gw), ks, 1, rpb, scale, attn_drop).reshape(len(residues), B, h, gh, gw, -1)
        for i, (a, b) in enumerate(residues):
            out[:, :, a::dil, b::dil] = res[i]
    return out.reshape(B, h, H * W, v.shape[-1])


_flex_compiled = None


def _flex_fn(device: torch.device):
    from torch.nn.attention.flex_attention import flex_attention

    global _flex_compiled
    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled


def _flex_block_mask(shape, ks, dil, device):
    from torch.nn.attention.flex_attention import create_block_mask

    W = shape[-1]
    n = 1
    for s in shape:
        n *= s
    starts = [neighborhood_window(s, ks, dil, device)[0][:, 0] for s in shape]  # first neighbour per axis
    span = (ks - 1) * dil

    def inside(qpos, kpos, start):
        s = start[qpos]
        return ((kpos - qpos) % dil == 0) & (kpos >= s) & (kpos <= s + span)

    if len(shape) == 1:

        def mask_mod(b, h, q_idx, kv_idx):
            return inside(q_idx, kv_idx, starts[0])

    else:

        def mask_mod(b, h, q_idx, kv_idx):
            ok_y = inside(q_idx // W, kv_idx // W, starts[0])
            return ok_y & inside(q_idx % W, kv_idx % W, starts[1])

    def build():
        return create_block_mask(mask_mod, None, None, n, n, device=device)

    return _cached(("flex", shape, ks, dil, str(device)), build)


def _na_flex(q, k, v, shape, ks, dil, rpb, scale, attn_drop):
    if q.device.type != "cuda":  # forward only there (see _flex_ok); flex refuses inputs that require grad
        q, k, v = q.detach(), k.detach(), v.detach()
        rpb = None if rpb is None else rpb.detach()
    block_mask = _flex_block_mask(shape, ks, dil, q.device)
    score_mod = None
    if rpb is not None:
        W = shape[-1]
        side = 2 * ks - 1

        def rel(qpos, kpos):
            return (torch.div(kpos - qpos, dil, rounding_mode="floor") + (ks - 1)).clamp(0, side - 1)

        if len(shape) == 1:

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + rpb[h, rel(q_idx, kv_idx)]

        else:

            def score_mod(score, b, h, q_idx, kv_idx):
                r = rel(q_idx // W, kv_idx // W) * side + rel(q_idx % W, kv_idx % W)
                return score + rpb[h, r]

    return _flex_fn(q.device)(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=default_scale(q, scale))


def _na_natten(q, k, v, shape, ks, dil, rpb, scale, attn_drop):
    import natten

    B, h, _, d = q.shape
    fn = natten.na1d if len(shape) == 1 else natten.na2d

    def heads_last(t):
        return t.reshape(B, h, *shape, t.shape[-1]).movedim(1, -2)

    out = fn(
        heads_last(q), heads_last(k), heads_last(v), kernel_size=ks, dilation=dil, scale=default_scale(q, scale)
    )
    return out.movedim(-2, 1).reshape(B, h, -1, out.shape[-1])


_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _dense_ok(device, dtype, tokens=0, dropout=False, needs_grad=False, **kw) -> list[str]:
    why = ["attention dropout: only the reference has it"] if dropout else []
    limit = DENSE_MAX_TOKENS_TRAIN if needs_grad else DENSE_MAX_TOKENS
    name = "DENSE_MAX_TOKENS_TRAIN" if needs_grad else "DENSE_MAX_TOKENS"
    if tokens > limit:
        why.append(f"{tokens} tokens > {name}={limit}: the dense N x N mask loses to the gather there")
    return why


def _flex_ok(device, dtype, dropout=False, needs_grad=False, **kw) -> list[str]:
    why = ["attention dropout: only the reference has it"] if dropout else []
    if needs_grad and device.type != "cuda":
        why.append("no CPU backward in FlexAttention: a gradient is needed")
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        why.append("torch.nn.attention.flex_attention not importable")
    return why


def _natten_ok(device, dtype, has_rpb=False, dropout=False, **kw) -> list[str]:
    why = [f"CUDA only (device {device.type})"] if device.type != "cuda" else []
    if has_rpb:
        why.append("relative position bias: NATTEN >= 0.20 has none")
    if dropout:
        why.append("attention dropout: only the reference has it")
    if dtype not in _FLOATS:
        why.append(f"float16/bfloat16/float32 only (dtype {dtype})")
    if not has_module("natten"):
        why.append("natten not installed")
    return why


def _triton_ok(device, dtype, has_rpb=False, dropout=False, **kw) -> list[str]:
    why = ["attention dropout: only the reference has it"] if dropout else []
    if dtype not in _FLOATS:
        why.append(f"float16/bfloat16/float32 only (dtype {dtype})")
    if not _triton.available(device):
        why.append(_triton.unavailable_reason(device))
    # CUDA auto: with RPB always (NATTEN's fused kernels have none); without, NATTEN's kernels go first.
    if not why and device.type == "cuda" and not _triton.forced() and not has_rpb and has_module("natten"):
        why.append("no RPB and natten installed: NATTEN's kernels go first (force triton to run it)")
    return why


def _na_triton(q, k, v, shape, ks, dil, rpb, scale, attn_drop):
    mod = _triton.load("neighborhood")
    return mod.neighborhood_attention2d(q, k, v, shape, ks, dil, rpb, default_scale(q, scale))


def _sdpa2d_ok(device, dtype, tokens=0, dropout=False, needs_grad=False, **kw) -> list[str]:
    if is_tracing():  # export: the dense mask for small maps, else the gather (both trace with dynamic H/W)
        return _dense_ok(device, dtype, tokens=tokens, dropout=dropout, needs_grad=needs_grad)
    return ["attention dropout: only the reference has it"] if dropout else []


for _op in (_OP1, _OP2):
    register(_op, "reference")(_na_gather)
    if _op == _OP1:
        register(_op, "sdpa", supports=_dense_ok)(_na_dense)
    else:
        register(_op, "sdpa", supports=_sdpa2d_ok)(_na_sdpa2d)
    register(_op, "flex", supports=_flex_ok)(_na_flex)
    register(_op, "natten", supports=_natten_ok)(_na_natten)
register(_OP2, "triton", supports=_triton_ok)(_na_triton)


def _sample(shape: tuple[int, ...], ks: int, dil: int):
    def sample(device: torch.device, dtype: torch.dtype, backend: str) -> tuple:
        """Self-check input: flattened q/k/v of 2 heads (d 16) on a small map, dilated, with an RPB (none for
        NATTEN, which has no RPB); the registered paths' argument order."""
        g = torch.Generator().manual_seed(0)
        n = 1
        for s in shape:
            n *= s
        q, k, v = (torch.randn(1, 2, n, 16, generator=g).to(device, dtype) for _ in range(3))
        rpb = torch.randn(2, (2 * ks - 1) ** len(shape), generator=g).to(device, dtype)
        return q, k, v, shape, ks, dil, None if backend == "natten" else rpb, None, 0.0

    return sample


register_sample(_OP1, _sample((13,), 3, 2))
register_sample(_OP2, _sample((7, 8), 3, 2))


# --------------------------------------------------------------------------------------------------------
# public ops


def _check_args(op: str, spatial: tuple[int, ...], heads: int, kernel_size, dilation, rpb) -> None:
    odd_int = isinstance(kernel_size, int) and not isinstance(kernel_size, bool) and kernel_size % 2 == 1
    if not odd_int or kernel_size < 3:
        raise ValueError(f"{op}: kernel_size must be an odd int > 1 (3, 5, 7, ...), got {kernel_size!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"{op}: dilation must be an int >= 1, got {dilation!r}")
    need = kernel_size * dilation
    if any(s < need for s in spatial):
        raise ValueError(
            f"{op}: map {'x'.join(map(str, spatial))} is smaller than kernel_size*dilation = "
            f"{kernel_size}*{dilation} = {need} along some axis, so a dilation group would hold fewer than "
            f"kernel_size positions; zero-pad the map to at least {need} (NeighborhoodAttention2D/1D do, "
            "like legacy NATTEN) or use a smaller kernel/dilation"
        )
    if rpb is not None:
        want = (heads,) + (2 * kernel_size - 1,) * len(spatial)
        if tuple(rpb.shape) != want:
            raise ValueError(
                f"{op}: rpb must have shape {list(want)} ([heads, 2k-1, ...]), got {list(rpb.shape)}"
            )


def _run(op, q, k, v, spatial, kernel_size, dilation, rpb, scale, attn_drop):
    empty = empty_batch_output((*q.shape[:-1], v.shape[-1]), q, k, v, rpb)
    if empty is not None:
        return empty
    B, h = q.shape[:2]
    n = 1
    for s in spatial:
        n *= s
    needs_grad = _needs_grad(q, k, v, rpb)
    kw = {"tokens": n, "has_rpb": rpb is not None, "dropout": attn_drop > 0.0, "needs_grad": needs_grad}
    impl = select(op, q.device, q.dtype, **kw)
    flat = [t.reshape(B, h, n, t.shape[-1]) for t in (q, k, v)]
    rpb_flat = None if rpb is None else rpb.reshape(h, -1).to(q.dtype)
    out = impl.fn(*flat, tuple(spatial), kernel_size, dilation, rpb_flat, scale, attn_drop)
    return checked_output(op, out.reshape(*q.shape[:-1], v.shape[-1]), q=q, k=k, v=v, rpb=rpb)


def _validate(op, q, k, v, ndim, layout, rpb):
    check_qkv(op, q, k, v, ndim, layout)
    if k.shape[:-1] != q.shape[:-1] or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"{op}: q, k, v must share {layout} except v's last dim, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )


def neighborhood_attention2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    attn_drop: float = 0.0,
) -> torch.Tensor:
    """2-D (dilated) neighborhood attention with legacy NATTEN semantics (see the module docstring).

    Args:
        q, k: ``[B, heads, H, W, d]``; v: ``[B, heads, H, W, dv]``.
        kernel_size: odd window side ``k > 1``; dilation: ``d >= 1``. ``H, W >= k·d`` is required.
        rpb: optional relative position bias ``[heads, 2k-1, 2k-1]``.
        scale: logit scale, default ``d ** -0.5``.
        attn_drop: dropout on the attention weights (applied whenever > 0; pass 0 in eval).
    Returns:
        ``[B, heads, H, W, dv]``.
    """
    _validate(_OP2, q, k, v, 5, "[B, heads, H, W, d]", rpb)
    _check_args(_OP2, tuple(q.shape[2:4]), q.shape[1], kernel_size, dilation, rpb)
    return _run(_OP2, q, k, v, tuple(q.shape[2:4]), kernel_size, dilation, rpb, scale, attn_drop)


def neighborhood_attention1d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    attn_drop: float = 0.0,
) -> torch.Tensor:
    """1-D (dilated) neighborhood attention: q, k ``[B, heads, L, d]``, v ``[B, heads, L, dv]``,
    rpb ``[heads, 2k-1]``; ``L >= k·d``. Returns ``[B, heads, L, dv]``. Semantics as
    :func:`neighborhood_attention2d` along one axis."""
    _validate(_OP1, q, k, v, 4, "[B, heads, L, d]", rpb)
    _check_args(_OP1, (q.shape[2],), q.shape[1], kernel_size, dilation, rpb)
    return _run(_OP1, q, k, v, (q.shape[2],), kernel_size, dilation, rpb, scale, attn_drop)
