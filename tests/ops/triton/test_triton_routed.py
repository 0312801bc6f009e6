"""The triton path of zoo.ops.routed_attention (indexed-K/V kernel) against the reference."""

import pytest
import torch

import zoo.ops as ops
from zoo.ops.routed import routed_attention_reference

OP = "routed_attention"


def _qkv(B, h, H, W, d, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, H, W, c, generator=g).to(dtype).requires_grad_() for c in (d, d, dv)]


def _run(backend, q, k, v, regions, topk, indices=None):
    with ops.use_backend(backend):
        out = ops.routed_attention(q, k, v, regions, topk, indices=indices)
    assert ops.last_path(OP) == backend
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return out, torch.autograd.grad((out * w).sum(), (q, k, v))


# (B, heads, H, W, regions, topk, d, dv): 4x4 regions of 2x2 tokens topk 2 (several regions per key tile);
# 2x3 regions of 3x2 tokens (odd region size, non-square grid); 2x2 regions of 4x4 tokens, every region;
# 1x2 regions of 6x5 tokens topk 1 (one region of 30 tokens: two key tiles).
CASES = [
    (1, 2, 8, 8, 4, 2, 4, 4),
    (2, 1, 6, 6, (2, 3), 3, 3, 5),
    (1, 2, 8, 8, 2, 4, 4, 4),
    (1, 1, 6, 10, (1, 2), 1, 4, 3),
]


@pytest.mark.parametrize("B,h,H,W,regions,topk,d,dv", CASES)
def test_forward_backward_match_reference_fp32(B, h, H, W, regions, topk, d, dv):
    q, k, v = _qkv(B, h, H, W, d, dv)
    out_r, g_r = _run("reference", q, k, v, regions, topk)
    out_t, g_t = _run("triton", q, k, v, regions, topk)
    assert out_t.shape == out_r.shape == (B, h, H, W, dv)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_t, g_r):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_given_indices_and_strided_inputs():
    """Indices passed in (a region routed by several queries: scattered dk/dv adds), q/k/v as the permuted
    views BiLevelRoutingAttention makes, and the output's [B, H, W, heads, dv] memory layout."""
    B, h, H, W, d = 1, 2, 4, 4, 4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, H, W, 3 * h * d, generator=g)
    q, k, v = (t.unflatten(-1, (h, -1)).permute(0, 3, 1, 2, 4).detach().requires_grad_() for t in x.split(h * d, -1))
    assert not q.is_contiguous()
    idx = torch.tensor([[[1, 0], [1, 3], [1, 2], [3, 1]]])  # region 1 routed by every query region
    out_r, g_r = _run("reference", q, k, v, 2, 2, idx)
    out_t, g_t = _run("triton", q, k, v, 2, 2, idx)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_t, g_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert out_t.permute(0, 2, 3, 1, 4).is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_forward_matches_fp32_reference(dtype):
    q, k, v = _qkv(1, 2, 8, 8, 8, 8, dtype=dtype)
    idx = ops.routing_indices(q.float(), k.float(), 4, 2)
    with torch.no_grad():
        with ops.use_backend("triton"):
            out = ops.routed_attention(q, k, v, 4, 2, indices=idx)
        assert ops.last_path(OP) == "triton"
        ref = routed_attention_reference(q.float(), k.float(), v.float(), (4, 4), 2, 16**-0.5, idx)
    assert out.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_cpu_default_unchanged():
    q, k, v = _qkv(1, 1, 4, 4, 4, 4)
    with torch.no_grad():
        ops.routed_attention(q, k, v, 2, 2)
    assert ops.last_path(OP) == "sdpa"
