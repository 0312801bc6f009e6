"""The triton path of zoo.ops.neighborhood_attention2d (RPB, dilation) against the reference."""

import pytest
import torch

import zoo.ops as ops
from zoo.ops.neighborhood import _na_gather

OP = "neighborhood_attention2d"


def _inputs(B, h, H, W, d, dv, ks, rpb=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, H, W, c, generator=g).to(dtype).requires_grad_() for c in (d, d, dv))
    r = torch.randn(h, 2 * ks - 1, 2 * ks - 1, generator=g).to(dtype).requires_grad_() if rpb else None
    return q, k, v, r


def _run(backend, q, k, v, ks, dil, rpb):
    with ops.use_backend(backend):
        out = ops.neighborhood_attention2d(q, k, v, ks, dil, rpb)
    assert ops.last_path(OP) == backend
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    inputs = [t for t in (q, k, v, rpb) if t is not None]
    return out, torch.autograd.grad((out * w).sum(), inputs)


# (B, heads, H, W, d, dv, kernel, dilation, rpb): odd sizes, dilation with unequal group lengths
# (W=9, dil 2: groups of 5 and 4; W=10, dil 3: 4, 3, 3), a row longer than one query tile (W=19), no RPB.
CASES = [
    (1, 2, 5, 6, 4, 4, 3, 1, True),
    (1, 1, 7, 9, 3, 5, 3, 2, True),
    (1, 1, 5, 19, 4, 4, 5, 1, True),
    (1, 1, 9, 10, 4, 4, 3, 3, True),
    (1, 2, 7, 7, 4, 4, 7, 1, False),
]


@pytest.mark.parametrize("B,h,H,W,d,dv,ks,dil,rpb", CASES)
def test_forward_backward_match_reference_fp32(B, h, H, W, d, dv, ks, dil, rpb):
    q, k, v, r = _inputs(B, h, H, W, d, dv, ks, rpb)
    out_r, g_r = _run("reference", q, k, v, ks, dil, r)
    out_t, g_t = _run("triton", q, k, v, ks, dil, r)
    assert out_t.shape == out_r.shape == (B, h, H, W, dv)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    assert len(g_t) == len(g_r) == (4 if rpb else 3)
    for a, b in zip(g_t, g_r):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_forward_matches_fp32_reference(dtype):
    q, k, v, r = _inputs(1, 2, 6, 7, 8, 8, 3, dtype=dtype)
    with torch.no_grad():
        with ops.use_backend("triton"):
            out = ops.neighborhood_attention2d(q, k, v, 3, 2, r)
        assert ops.last_path(OP) == "triton"
        flat = [t.float().reshape(1, 2, 42, -1) for t in (q, k, v)]
        ref = _na_gather(*flat, (6, 7), 3, 2, r.float().reshape(2, -1), None, 0.0).view(1, 2, 6, 7, 8)
    assert out.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_dispatch_rules_on_cpu():
    q, k, v, r = _inputs(1, 1, 6, 6, 4, 4, 3)
    with torch.no_grad():
        ops.neighborhood_attention2d(q, k, v, 3, 1, r)
        assert ops.last_path(OP) == "sdpa"  # CPU default unchanged
        with ops.use_backend("triton"):
            ops.neighborhood_attention2d(q, k, v, 3, 1, r, attn_drop=0.5)  # dropout: reference only
            assert ops.last_path(OP) == "reference"
            ops.neighborhood_attention1d(q[:, :, 0], k[:, :, 0], v[:, :, 0], 3)  # no 1-D kernel
            assert ops.last_path("neighborhood_attention1d") == "sdpa"
