import warnings

import pytest
import torch

import zoo.ops as ops
from zoo.ops import neighborhood as nb

OP2, OP1 = "neighborhood_attention2d", "neighborhood_attention1d"
CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


# ---------------------------------------------------------------------------------------------------------
# brute force: explicit python loops over the clamped, dilated window (legacy NATTEN semantics)


def _window(i: int, length: int, k: int, d: int) -> list[tuple[int, int]]:
    """(key position, rpb index) of the k neighbours of position i along one axis."""
    group = [p for p in range(length) if p % d == i % d]
    j = group.index(i)
    s = min(max(j - k // 2, 0), len(group) - k)
    return [(p, (p - i) // d + k - 1) for p in group[s : s + k]]


def _brute2d(q, k, v, ks, dil, rpb, scale=None):
    B, h, H, W, d = q.shape
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(B, h, H, W, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for hh in range(h):
            for y in range(H):
                for x in range(W):
                    logits, vals = [], []
                    for ky, ry in _window(y, H, ks, dil):
                        for kx, rx in _window(x, W, ks, dil):
                            s = (q[b, hh, y, x] * k[b, hh, ky, kx]).sum() * scale
                            if rpb is not None:
                                s = s + rpb[hh, ry, rx]
                            logits.append(s)
                            vals.append(v[b, hh, ky, kx])
                    p = torch.softmax(torch.stack(logits), 0)
                    out[b, hh, y, x] = (p[:, None] * torch.stack(vals)).sum(0)
    return out


def _brute1d(q, k, v, ks, dil, rpb):
    B, h, L, d = q.shape
    out = torch.zeros(B, h, L, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for hh in range(h):
            for i in range(L):
                win = _window(i, L, ks, dil)
                logits = torch.stack([(q[b, hh, i] * k[b, hh, p]).sum() * d**-0.5 for p, _ in win])
                if rpb is not None:
                    logits = logits + torch.stack([rpb[hh, r] for _, r in win])
                p = torch.softmax(logits, 0)
                out[b, hh, i] = (p[:, None] * torch.stack([v[b, hh, p_] for p_, _ in win])).sum(0)
    return out


def _inputs(shape, heads=2, d=4, dv=None, ks=3, rpb=True, dtype=torch.float64, grad=False, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv
    q = torch.randn(batch, heads, *shape, d, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, *shape, d, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, *shape, dv, generator=g, dtype=dtype)
    r = torch.randn(heads, *(2 * ks - 1,) * len(shape), generator=g, dtype=dtype) if rpb else None
    ts = [q, k, v] + ([r] if rpb else [])
    for t in ts:
        t.requires_grad_(grad)
    return q, k, v, r


# ---------------------------------------------------------------------------------------------------------


def test_window_helper_values():
    # L=7, k=3, d=2: groups [0,2,4,6] and [1,3,5]; windows clamped inside the group
    keys, rel = nb.neighborhood_window(7, 3, 2)
    assert keys.tolist() == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5], [2, 4, 6]]
    assert rel.tolist()[0] == [2, 3, 4]  # first query: keys at +0, +1, +2 dilated steps
    assert rel.tolist()[4] == [1, 2, 3]  # centred
    assert rel.tolist()[6] == [0, 1, 2]  # last query: keys at -2, -1, 0
    keys, rel = nb.neighborhood_window(5, 3, 1)
    assert keys[:, 0].tolist() == [0, 0, 1, 2, 2]
    for L, k, d in [(7, 3, 2), (10, 3, 3), (9, 5, 1), (23, 7, 3)]:
        keys, rel = nb.neighborhood_window(L, k, d)
        for i in range(L):
            assert list(zip(keys[i].tolist(), rel[i].tolist())) == _window(i, L, k, d)


@pytest.mark.parametrize(
    "shape,ks,dil,batch",
    [((5, 6), 3, 1, 2), ((7, 9), 3, 2, 1), ((10, 11), 3, 3, 1), ((5, 7), 5, 1, 1)],
)
def test_paths_match_brute_force_2d(shape, ks, dil, batch):
    q, k, v, rpb = _inputs(shape, ks=ks, dv=3, batch=batch)
    expect = _brute2d(q, k, v, ks, dil, rpb)
    for backend in ("reference", "sdpa", "flex"):
        with ops.use_backend(backend):
            out = ops.neighborhood_attention2d(q, k, v, ks, dil, rpb)
        assert ops.last_path(OP2) == backend
        assert out.shape == expect.shape
        torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)
    # no rpb
    expect = _brute2d(q, k, v, ks, dil, None)
    with ops.use_backend("reference"):
        torch.testing.assert_close(ops.neighborhood_attention2d(q, k, v, ks, dil), expect)


@pytest.mark.parametrize("L,ks,dil", [(9, 3, 2), (8, 5, 1), (13, 3, 4)])
def test_paths_match_brute_force_1d(L, ks, dil):
    q, k, v, rpb = _inputs((L,), ks=ks)
    expect = _brute1d(q, k, v, ks, dil, rpb)
    for backend in ("reference", "sdpa", "flex"):
        with ops.use_backend(backend):
            out = ops.neighborhood_attention1d(q, k, v, ks, dil, rpb)
        assert ops.last_path(OP1) == backend
        torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)


def _fwd_bwd(fn, tensors, backend):
    with ops.use_backend(backend):
        out = fn(*tensors)
    path = ops.last_path(OP2 if out.dim() == 5 else OP1)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    grads = torch.autograd.grad((out * w).sum(), [t for t in tensors if t is not None])
    return out, grads, path


@pytest.mark.parametrize("use_rpb", [True, False])
@pytest.mark.parametrize("shape,dil", [((9, 11), 2), ((7, 8), 1), ((13,), 3)])
def test_sdpa_matches_reference_forward_and_backward(shape, dil, use_rpb):
    q, k, v, rpb = _inputs(shape, heads=3, d=8, dv=5, rpb=use_rpb, dtype=torch.float32, grad=True)
    op = ops.neighborhood_attention2d if len(shape) == 2 else ops.neighborhood_attention1d
    fn = lambda q, k, v, r: op(q, k, v, 3, dil, r)
    ref, gref, p_ref = _fwd_bwd(fn, (q, k, v, rpb), "reference")
    out, gout, p_out = _fwd_bwd(fn, (q, k, v, rpb), "sdpa")
    assert (p_ref, p_out) == ("reference", "sdpa")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len(gout) == (4 if use_rpb else 3)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_flex_on_cpu_is_forward_only_and_falls_back_with_grad():
    q, k, v, rpb = _inputs((7, 9), dtype=torch.float32, grad=True)
    with ops.use_backend("reference"):
        ref = ops.neighborhood_attention2d(q, k, v, 3, 2, rpb)
    with torch.no_grad(), ops.use_backend("flex"):
        out = ops.neighborhood_attention2d(q, k, v, 3, 2, rpb)
    assert ops.last_path(OP2) == "flex"
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with ops.use_backend("flex"):  # FlexAttention has no CPU backward: the dispatcher must not pick it
        ops.neighborhood_attention2d(q, k, v, 3, 2, rpb)
    assert ops.last_path(OP2) != "flex"


@pytest.mark.skipif(not CUDA, reason="flex backward and natten need CUDA")
@pytest.mark.parametrize("backend", ["flex", "natten"])
def test_cuda_paths_match_reference_forward_and_backward(backend):
    use_rpb = backend == "flex"
    q, k, v, rpb = _inputs((20, 23), heads=2, d=32, ks=7, rpb=use_rpb, dtype=torch.float32)
    q, k, v = (t.cuda().requires_grad_() for t in (q, k, v))
    rpb = rpb.cuda().requires_grad_() if use_rpb else None
    fn = lambda q, k, v, r: ops.neighborhood_attention2d(q, k, v, 7, 2, r)
    ref, gref, _ = _fwd_bwd(fn, (q, k, v, rpb), "reference")
    out, gout, path = _fwd_bwd(fn, (q, k, v, rpb), backend)
    if backend == "natten" and path != "natten":
        pytest.skip("natten not installed")
    assert path == backend
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_gradcheck_float64(backend):
    na2 = lambda q, k, v, r: ops.neighborhood_attention2d(q, k, v, 3, 1, r)
    na1 = lambda q, k, v, r: ops.neighborhood_attention1d(q, k, v, 3, 2, r)
    with ops.use_backend(backend):
        assert torch.autograd.gradcheck(na2, _inputs((3, 4), heads=1, d=2, grad=True))
        assert ops.last_path(OP2) == backend
        assert torch.autograd.gradcheck(na1, _inputs((6,), heads=1, d=2, grad=True))
        assert ops.last_path(OP1) == backend


def test_auto_dispatch_on_cpu():
    q, k, v, rpb = _inputs((7, 7), heads=1, d=2, dtype=torch.float32)
    ops.neighborhood_attention2d(q, k, v, 3, 1, rpb)
    assert ops.last_path(OP2) == "sdpa"  # small map: dense mask + fused SDPA
    side = int(nb.TILED_MIN_TOKENS**0.5) + 1
    q, k, v, rpb = _inputs((side, side), heads=1, d=2, dtype=torch.float32)
    ops.neighborhood_attention2d(q, k, v, 3, 1, rpb)
    assert ops.last_path(OP2) == "sdpa"  # large map: tiles (no dense N x N mask, no gather)
    rpb.requires_grad_(True)
    ops.neighborhood_attention2d(q, k, v, 3, 1, rpb)
    assert ops.last_path(OP2) == "sdpa"
    with ops.use_backend("sdpa"):
        ops.neighborhood_attention2d(q, k, v, 3, 1, rpb, attn_drop=0.1)
    assert ops.last_path(OP2) == "reference"  # attention dropout: only the reference path has it


def test_scale_and_dropout():
    q, k, v, rpb = _inputs((5, 6), dtype=torch.float32)
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            a = ops.neighborhood_attention2d(q * 2, k, v, 3, 1, rpb, scale=0.25)
            b = ops.neighborhood_attention2d(q, k, v, 3, 1, rpb, scale=0.5)
        torch.testing.assert_close(a, b)
    with ops.use_backend("sdpa"):
        torch.manual_seed(0)
        dropped = ops.neighborhood_attention2d(q, k, v, 3, 1, rpb, attn_drop=0.5)
    assert ops.last_path(OP2) == "reference"  # only the reference path has attention dropout
    assert not torch.allclose(dropped, b)


def test_bad_arguments_raise_clear_errors():
    q, k, v, rpb = _inputs((5, 6), dtype=torch.float32)
    f = ops.neighborhood_attention2d
    with pytest.raises(ValueError, match="odd int > 1"):
        f(q, k, v, 4)
    with pytest.raises(ValueError, match="odd int > 1"):
        f(q, k, v, 1)
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        f(q, k, v, 3, 0)
    with pytest.raises(ValueError, match="smaller than kernel_size\\*dilation.*pad the map"):
        f(q, k, v, 7)
    with pytest.raises(ValueError, match="smaller than kernel_size\\*dilation"):
        f(q, k, v, 3, 2)  # 5 < 3*2: a dilation group would hold only 2 positions
    with pytest.raises(ValueError, match=r"q must be \[B, heads, H, W, d\]"):
        f(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match="must share"):
        f(q, k[:, :, :4], v, 3)
    with pytest.raises(ValueError, match="rpb must have shape"):
        f(q, k, v, 3, 1, rpb[:, :3])
    bad = q.clone()
    bad[0, 0, 1, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        f(bad, k, v, 3)
    with pytest.raises(ValueError, match=r"q must be \[B, heads, L, d\]"):
        ops.neighborhood_attention1d(q, k, v, 3)


@pytest.mark.parametrize("dense", [True, False])
def test_onnx_export_runs_in_onnxruntime(tmp_path, monkeypatch, dense):
    ort = pytest.importorskip("onnxruntime")
    if not dense:  # export takes the sdpa path where it supports the call; make it refuse so gather exports
        monkeypatch.setattr(nb, "DENSE_MAX_TOKENS", 0)
    q, k, v, rpb = _inputs((9, 10), heads=2, d=4, dtype=torch.float32)

    class M(torch.nn.Module):
        def forward(self, q, k, v, rpb):
            return ops.neighborhood_attention2d(q, k, v, 3, 2, rpb)

    with ops.use_backend("reference"):
        expect = M()(q, k, v, rpb)
    path = tmp_path / "na.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(M(), (q, k, v, rpb), str(path), dynamo=False, input_names=["q", "k", "v", "rpb"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {n: t.numpy() for n, t in zip(["q", "k", "v", "rpb"], (q, k, v, rpb))})
    torch.testing.assert_close(torch.from_numpy(got), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", [3, 4, 8])
@pytest.mark.parametrize(
    "H,W,ks,dil",
    [(7, 7, 3, 1), (9, 11, 3, 1), (10, 13, 5, 1), (15, 9, 7, 1), (12, 12, 3, 2), (13, 17, 3, 3), (14, 15, 5, 2),
     (28, 28, 7, 4)],
)
def test_tiled_sdpa_path_matches_reference(monkeypatch, tile, H, W, ks, dil):
    """The tiled 2-D path (query tiles attending densely to the union of their windows; dilation through the
    dilation groups) against the gather reference: outputs and gradients of q, k, v and the RPB, in float64,
    with tiles that do not divide the map and windows clamped at every border."""
    import zoo.ops.neighborhood as na

    monkeypatch.setattr(na, "TILE", tile)
    monkeypatch.setattr(na, "TILED_MIN_TOKENS", 0)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, H, W, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(3, 2 * ks - 1, 2 * ks - 1, dtype=torch.float64, requires_grad=True)
    for bias in (rpb, None):
        inputs = [q, k, v] + ([rpb] if bias is not None else [])
        results = []
        for backend in ("reference", "sdpa"):
            with ops.use_backend(backend):
                out = ops.neighborhood_attention2d(q, k, v, ks, dil, rpb=bias)
                assert ops.last_path("neighborhood_attention2d") == backend
            w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
            results.append((out, torch.autograd.grad((out * w).sum(), inputs)))
        (ref, ref_g), (got, got_g) = results
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
        for a, b in zip(got_g, ref_g):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_tiled_path_on_the_meta_device():
    """Regression: the tile tables used boolean indexing, which has no meta kernel (timm's config checks and
    zoo.profile build models on the meta device)."""
    q, k, v = (torch.empty(1, 2, 20, 23, 8, device="meta") for _ in range(3))
    rpb = torch.empty(2, 5, 5, device="meta")
    with ops.use_backend("sdpa"):
        out = ops.neighborhood_attention2d(q, k, v, 3, 2, rpb)
    assert out.shape == (1, 2, 20, 23, 8) and out.device.type == "meta"


def test_tiled_path_attends_in_4d_so_sdpa_takes_its_fused_kernel(monkeypatch):
    """Regression (performance): the tiled path handed SDPA 5-D tiles ``[B, heads, T, P, d]``, which CPU SDPA runs
    on its math path; the tiles are folded into the head axis so it gets 4-D inputs and a 4-D bias."""
    import zoo.ops.neighborhood as na

    seen = []
    real = na.dispatch_attention
    monkeypatch.setattr(na, "dispatch_attention", lambda q, k, v, bias, scale: seen.append((q, k, v, bias))
                        or real(q, k, v, bias, scale))
    q, k, v = (torch.randn(2, 3, 21, 20, 8) for _ in range(3))
    rpb = torch.randn(3, 13, 13)
    with ops.use_backend("sdpa"), torch.no_grad():
        out = ops.neighborhood_attention2d(q, k, v, 7, 1, rpb)
    with ops.use_backend("reference"), torch.no_grad():
        ref = ops.neighborhood_attention2d(q, k, v, 7, 1, rpb)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert len(seen) == 1 and all(t.dim() == 4 for t in seen[0]), [t.shape for t in seen[0]]
    tiles = -(-21 // na.TILE) * -(-20 // na.TILE)
    assert seen[0][0].shape == (2, 3 * tiles, na.TILE * na.TILE, 8) and seen[0][3].shape[:2] == (1, 3 * tiles)
