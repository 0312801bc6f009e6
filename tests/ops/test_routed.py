import math

import pytest
import torch

import zoo.ops as ops
from zoo.ops import routed as R

# (H, W, num_regions, topk): regions of 2x2, 2x3 and 2x2 tokens; R = 9, 4, 6.
CASES = [(6, 6, 3, 2), (4, 6, 2, 3), (4, 6, (2, 3), 4)]


def _qkv(B=2, h=2, H=6, W=6, d=3, dv=4, dtype=torch.float32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, h, H, W, d, generator=g, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, h, H, W, d, generator=g, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, h, H, W, dv, generator=g, dtype=dtype, requires_grad=grad)
    return q, k, v


def _pair(x):
    return (x, x) if isinstance(x, int) else x


def _region_tokens(H, W, nh, nw):
    rh, rw = H // nh, W // nw
    return [
        [(y, x) for y in range(i * rh, (i + 1) * rh) for x in range(j * rw, (j + 1) * rw)]
        for i in range(nh)
        for j in range(nw)
    ]


def _brute_routing(q, k, num_regions, topk, scale):
    """Python loops: region means of all heads' channels, affinities, the topk regions (as sets)."""
    B, h, H, W, d = q.shape
    regions = _region_tokens(H, W, *_pair(num_regions))
    chosen = []
    for b in range(B):
        qm = [torch.stack([q[b, :, y, x].reshape(-1) for y, x in toks]).mean(0) for toks in regions]
        km = [torch.stack([k[b, :, y, x].reshape(-1) for y, x in toks]).mean(0) for toks in regions]
        per_b = []
        for r in range(len(regions)):
            aff = [float((qm[r] * scale * km[s]).sum()) for s in range(len(regions))]
            per_b.append(sorted(range(len(regions)), key=lambda s: -aff[s])[:topk])
        chosen.append(per_b)
    return chosen


def _brute_attention(q, k, v, num_regions, chosen, scale):
    """Python loops: every query token softmax-attends to the tokens of its region's chosen regions."""
    B, h, H, W, d = q.shape
    regions = _region_tokens(H, W, *_pair(num_regions))
    out = torch.zeros(B, h, H, W, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for r, toks in enumerate(regions):
            keys = [t for s in chosen[b][r] for t in regions[s]]
            for hh in range(h):
                for y, x in toks:
                    qi = q[b, hh, y, x]
                    logits = torch.stack([(qi * k[b, hh, yy, xx]).sum() for yy, xx in keys]) * scale
                    p = torch.exp(logits - logits.max())
                    p = p / p.sum()
                    out[b, hh, y, x] = sum(p[i] * v[b, hh, yy, xx] for i, (yy, xx) in enumerate(keys))
    return out


@pytest.mark.parametrize("H,W,regions,topk", CASES)
def test_reference_matches_brute_force_loops(H, W, regions, topk):
    q, k, v = _qkv(H=H, W=W)
    scale = (2 * 3) ** -0.5  # the official scale: qk_dim of all heads
    with ops.use_backend("reference"), torch.no_grad():
        out = ops.routed_attention(q, k, v, regions, topk)
        idx = ops.routing_indices(q, k, regions, topk)
    assert ops.last_path("routed_attention") == "reference"
    chosen = _brute_routing(q, k, regions, topk, scale)
    assert [[sorted(r) for r in b] for b in idx.tolist()] == [[sorted(r) for r in b] for b in chosen]
    expect = _brute_attention(q, k, v, regions, chosen, scale)
    assert out.shape == (2, 2, H, W, 4)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


def test_routing_indices_are_sorted_int64_and_take_no_gradient():
    q, k, _ = _qkv(grad=True)
    idx = ops.routing_indices(q, k, 3, 4)
    assert idx.dtype == torch.int64 and idx.shape == (2, 9, 4) and not idx.requires_grad
    # highest affinity first; the scale does not change the choice
    torch.testing.assert_close(idx, ops.routing_indices(q, k, 3, 4, scale=10.0))
    qm = R.to_regions(q, 3).mean(3).flatten(2)
    km = R.to_regions(k, 3).mean(3).flatten(2)
    aff = qm @ km.transpose(1, 2)
    picked = aff.gather(2, idx)
    assert bool((picked[..., :-1] >= picked[..., 1:]).all())


def test_region_layout_round_trip():
    q, _, _ = _qkv(H=4, W=6)
    r = R.to_regions(q, (2, 3))  # [B, R, heads, n, d]
    assert r.shape == (2, 6, 2, 4, 3)
    torch.testing.assert_close(r[1, 4, 0, 3], q[1, 0, 3, 3])  # region (1, 1), token (1, 1) -> pixel (3, 3)
    torch.testing.assert_close(R.from_regions(r, (2, 3), (4, 6)), q)


def _out_and_grads(backend, q, k, v, regions, topk, idx):
    with ops.use_backend(backend):
        out = ops.routed_attention(q, k, v, regions, topk, indices=idx)
    path = ops.last_path("routed_attention")
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return out, torch.autograd.grad((out * w).sum(), (q, k, v)), path


def _use_form(monkeypatch, form):
    """Pin the sdpa path's form: the mask form, the whole gather, or the chunked gather (CPU training)."""
    monkeypatch.setattr(R, "MASK_FORM_MAX_REGION_TOKENS", 10**9 if form == "mask" else 0)
    monkeypatch.setattr(R, "CHUNKED_MIN_GATHER_ELEMENTS", 0 if form == "chunked" else 10**18)


def _ran_chunked(out):
    """Whether the autograd graph of ``out`` holds the chunked form's node."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "_ChunkedRoutedBackward":
            return True
        todo += [f for f, _ in fn.next_functions]
    return False


@pytest.mark.parametrize("form", ["mask", "gather", "chunked"])
@pytest.mark.parametrize("H,W,regions,topk", CASES)
def test_sdpa_matches_reference_forward_and_backward(H, W, regions, topk, form, monkeypatch):
    _use_form(monkeypatch, form)
    q, k, v = _qkv(H=H, W=W, grad=True)
    idx = ops.routing_indices(q, k, regions, topk)
    ref, ref_g, path = _out_and_grads("reference", q, k, v, regions, topk, idx)
    assert path == "reference"
    out, g, path = _out_and_grads("sdpa", q, k, v, regions, topk, idx)
    assert path == "sdpa"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # without gradients the gather form runs the fused kernel: same values
    with torch.no_grad(), ops.use_backend("sdpa"):
        torch.testing.assert_close(ops.routed_attention(q, k, v, regions, topk), ref, rtol=1e-5, atol=1e-5)


def test_routing_inside_the_op_equals_given_indices_and_is_not_differentiated():
    q, k, v = _qkv(grad=True)
    idx = ops.routing_indices(q, k, 3, 2)
    for backend in ("reference", "sdpa"):
        a, ga, _ = _out_and_grads(backend, q, k, v, 3, 2, idx)
        b, gb, _ = _out_and_grads(backend, q, k, v, 3, 2, None)
        torch.testing.assert_close(a, b)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y)
    # other indices give another result (the op really uses them)
    with ops.use_backend("reference"):
        other = ops.routed_attention(q, k, v, 3, 2, indices=idx.flip(-1).roll(1, dims=1))
    assert not torch.allclose(other, a)


@pytest.mark.parametrize("H,W,regions,topk", CASES[:2])
def test_flex_forced_on_cpu_matches_reference_forward(H, W, regions, topk):
    q, k, v = _qkv(H=H, W=W)
    with torch.no_grad():
        with ops.use_backend("reference"):
            ref = ops.routed_attention(q, k, v, regions, topk)
        with ops.use_backend("flex"):
            out = ops.routed_attention(q, k, v, regions, topk)
    assert ops.last_path("routed_attention") == "flex"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_flex_with_gradients_on_cpu_falls_back_to_sdpa():
    q, k, v = _qkv(grad=True)
    with torch.no_grad(), ops.use_backend("flex"):  # inputs that require grad, but no grad mode: flex runs
        ops.routed_attention(q, k, v, 3, 2)
    assert ops.last_path("routed_attention") == "flex"
    with ops.use_backend("flex"):
        out = ops.routed_attention(q, k, v, 3, 2)
    assert ops.last_path("routed_attention") == "sdpa"
    out.sum().backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None


@pytest.mark.parametrize("backend,form", [("reference", None), ("sdpa", "mask"), ("sdpa", "gather"),
                                          ("sdpa", "chunked")])
def test_gradcheck_float64(backend, form, monkeypatch):
    if form is not None:
        _use_form(monkeypatch, form)
        monkeypatch.setattr(R, "CHUNK_ELEMENTS", 1)  # one query region per chunk
    q, k, v = _qkv(B=1, h=2, H=4, W=4, d=2, dv=2, dtype=torch.float64, grad=True)
    idx = ops.routing_indices(q, k, 2, 2)
    with ops.use_backend(backend):
        fn = lambda a, b, c: ops.routed_attention(a, b, c, 2, 2, indices=idx)
        assert torch.autograd.gradcheck(fn, (q, k, v))
    assert ops.last_path("routed_attention") == backend


@pytest.mark.parametrize("topk", [-1, 9, 20])
@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
def test_topk_all_regions_equals_dense_attention(topk, backend):
    q, k, v = _qkv()
    B, h, H, W, _ = q.shape
    scale = 0.37
    flat = [t.reshape(B, h, H * W, -1) for t in (q, k, v)]
    with torch.no_grad():
        with ops.use_backend("reference"):
            dense = ops.attention(*flat, scale=scale).view(B, h, H, W, -1)
        with ops.use_backend(backend):
            out = ops.routed_attention(q, k, v, 3, topk, scale=scale)
    assert ops.last_path("routed_attention") == backend
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_default_scale_is_official_all_heads_qk_dim():
    q, k, v = _qkv(h=3, d=4)
    with ops.use_backend("reference"):
        a = ops.routed_attention(q, k, v, 3, 2)
        b = ops.routed_attention(q, k, v, 3, 2, scale=1 / math.sqrt(12))
        c = ops.routed_attention(q, k, v, 3, 2, scale=0.5)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_bad_arguments_raise_one_clear_error_each():
    q, k, v = _qkv()
    idx = ops.routing_indices(q, k, 3, 2)
    bad = [
        ((q[0], k[0], v[0], 3, 2), {}, r"must be \[B, heads, H, W, d\]"),
        ((q, k[..., :2], v, 3, 2), {}, "same head dim"),
        ((q, k[:, :, :3], v, 3, 2), {}, "must share"),
        ((q, k, v.double(), 3, 2), {}, "one dtype"),
        ((q, k, v, 4, 2), {}, "not divisible into 4x4 regions"),
        ((q, k, v, 0, 2), {}, "num_regions must be positive"),
        ((q, k, v, 2.5, 2), {}, "num_regions must be an int"),
        ((q, k, v, 3, 0), {}, "topk must be a positive int"),
        ((q, k, v, 3, -2), {}, "topk must be a positive int"),
        ((q, k, v, 3, 3), {"indices": idx}, r"indices must have shape \[B, R, topk\]"),
        ((q, k, v, 3, 2), {"indices": idx.int()}, "indices must be an int64 tensor"),
    ]
    for args, kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            ops.routed_attention(*args, **kw)
    nan = q.clone()
    nan[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'q'.*1 NaN"):
        ops.routed_attention(nan, k, v, 3, 2)
    with pytest.raises(ValueError, match="not divisible"):
        ops.routing_indices(q, k, 5, 2)


@pytest.mark.parametrize("chunk", [1, 700, 10**9])  # one query region per chunk, a few, all in one
@pytest.mark.parametrize("B,h,H,W,regions,topk,d,dv", [(2, 3, 10, 15, (2, 3), 4, 5, 7), (1, 2, 9, 7, (3, 1), 1, 3, 2),
                                                      (3, 1, 6, 6, 3, 9, 4, 4)])
def test_chunked_form_matches_reference_at_odd_sizes(B, h, H, W, regions, topk, d, dv, chunk, monkeypatch):
    """The chunked CPU training form (gathers only a chunk's routed regions, re-gathers in the backward) equals
    the reference's gather, forward and gradients, for any chunking, odd head dims and maps, topk 1 and all."""
    _use_form(monkeypatch, "chunked")
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, h, H, W, c, generator=g, requires_grad=True) for c in (d, d, dv))
    idx = ops.routing_indices(q, k, regions, topk)
    ref, ref_g, _ = _out_and_grads("reference", q, k, v, regions, topk, idx)
    out, grads, path = _out_and_grads("sdpa", q, k, v, regions, topk, idx)
    assert path == "sdpa" and _ran_chunked(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_form_is_chosen_by_size_on_cpu_training_only(monkeypatch):
    monkeypatch.setattr(R, "MASK_FORM_MAX_REGION_TOKENS", 0)
    q, k, v = _qkv(grad=True)  # 2 batches, 2 heads, 9 regions of 4 tokens, topk 2, d 3, dv 4
    gathered = 2 * 2 * 9 * 2 * 4 * (3 + 4)
    with ops.use_backend("sdpa"):
        monkeypatch.setattr(R, "CHUNKED_MIN_GATHER_ELEMENTS", gathered)
        assert _ran_chunked(ops.routed_attention(q, k, v, 3, 2))
        monkeypatch.setattr(R, "CHUNKED_MIN_GATHER_ELEMENTS", gathered + 1)
        assert not _ran_chunked(ops.routed_attention(q, k, v, 3, 2))


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_chunked_form_saves_no_gathered_keys_or_values(monkeypatch):
    """What autograd keeps for the backward: the whole gather (keys, values, attention) on the gather form;
    only q, k, v and the output (each the size of the map) and the indices on the chunked form."""
    monkeypatch.setattr(R, "MASK_FORM_MAX_REGION_TOKENS", 0)
    B, h, H, W, d, topk = 1, 2, 16, 16, 8, 4
    q, k, v = (torch.randn(B, h, H, W, d, requires_grad=True) for _ in range(3))
    idx = ops.routing_indices(q, k, 4, topk)
    map_bytes = q.numel() * 4
    with ops.use_backend("sdpa"):
        monkeypatch.setattr(R, "CHUNKED_MIN_GATHER_ELEMENTS", 10**18)
        _, gather = _saved_bytes(lambda: ops.routed_attention(q, k, v, 4, topk, indices=idx))
        monkeypatch.setattr(R, "CHUNKED_MIN_GATHER_ELEMENTS", 0)
        out, chunked = _saved_bytes(lambda: ops.routed_attention(q, k, v, 4, topk, indices=idx))
    assert _ran_chunked(out)
    assert gather >= 2 * topk * map_bytes  # gathered keys and values: topk times the map each
    assert chunked < 5 * map_bytes, (chunked, map_bytes)  # q, k, v, output; the indices are small


def test_layer_pads_odd_maps_and_matches_reference_on_the_chunked_form(monkeypatch):
    """BiLevelRoutingAttention on a map that needs padding (13x10 into 3x3 regions): the chunked form
    gives the reference's output and parameter/input gradients."""
    from zoo.layers import BiLevelRoutingAttention

    _use_form(monkeypatch, "chunked")
    monkeypatch.setattr(R, "CHUNK_ELEMENTS", 500)
    torch.manual_seed(0)
    layer = BiLevelRoutingAttention(24, num_heads=3, n_win=3, topk=2)
    x = torch.randn(2, 13, 10, 24, requires_grad=True)
    results = []
    for backend in ("reference", "sdpa"):
        layer.zero_grad()
        with ops.use_backend(backend):
            out = layer(x)
        if backend == "sdpa":
            assert _ran_chunked(out)
        gx, = torch.autograd.grad(out.square().sum(), x, retain_graph=True)
        out.square().sum().backward()
        results.append((out, gx, [p.grad.clone() for p in layer.parameters()]))
    (a, ga, pa), (b, gb, pb) = results
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)
    for u, w in zip(pb, pa):
        torch.testing.assert_close(u, w, rtol=1e-4, atol=1e-4)
