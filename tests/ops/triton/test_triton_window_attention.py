"""The triton path of zoo.ops.attention (windowed attention with a bias) against the reference."""

import pytest
import torch

import zoo.ops as ops
from zoo.ops import triton as zt
from zoo.ops.attention import attention_reference


def _grads(backend, q, k, v, bias, scale=None):
    inputs = [t for t in (q, k, v, bias) if t is not None and t.requires_grad]
    with ops.use_backend(backend):
        out = ops.attention(q, k, v, bias, scale)
    assert ops.last_path("attention") == backend
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return out, torch.autograd.grad((out * w).sum(), inputs)


def _qkv(G, h, nq, nk, d, dv, dtype=torch.float32, seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    if strided:  # the layout qkv(...).unbind gives: [3, G, h, N, d] views of a [G, N, 3, h, d] buffer
        buf = torch.randn(G, nq, 3, h, d, generator=g).to(dtype).permute(2, 0, 3, 1, 4)
        return [t.detach().requires_grad_() for t in buf.unbind(0)]
    q = torch.randn(G, h, nq, d, generator=g).to(dtype).requires_grad_()
    k = torch.randn(G, h, nk, d, generator=g).to(dtype).requires_grad_()
    v = torch.randn(G, h, nk, dv, generator=g).to(dtype).requires_grad_()
    return q, k, v


# (G, heads, Nq, Nk, d, dv, bias shape): shared learnable table, 3-D table, per-group mask + heads,
# odd sizes (Nq != Nk, d != dv, several key/query tiles), no bias.
CASES = [
    (6, 2, 9, 9, 8, 8, (1, 2, 9, 9)),
    (3, 2, 7, 7, 5, 6, (2, 7, 7)),
    (4, 2, 9, 9, 4, 4, (4, 2, 9, 9)),
    (2, 1, 70, 67, 3, 5, (1, 1, 70, 67)),
    (3, 2, 5, 6, 4, 4, None),
]


@pytest.mark.parametrize("G,h,nq,nk,d,dv,bshape", CASES)
def test_forward_backward_match_reference_fp32(G, h, nq, nk, d, dv, bshape):
    q, k, v = _qkv(G, h, nq, nk, d, dv)
    bias = None if bshape is None else torch.randn(bshape, generator=torch.Generator().manual_seed(1)).requires_grad_()
    out_r, g_r = _grads("reference", q, k, v, bias)
    out_t, g_t = _grads("triton", q, k, v, bias)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    assert len(g_t) == len(g_r) == (3 if bias is None else 4)
    for a, b in zip(g_t, g_r):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_shared_bias_gradient(monkeypatch):
    """Several groups per backward program (the chunked bias-gradient sum) with strided qkv views."""
    wa = zt.load("window_attention")
    monkeypatch.setattr(wa, "num_programs_target", lambda device: 4)  # 4 programs // 2 heads: 5 groups each
    q, k, v = _qkv(10, 2, 9, 9, 4, 4, strided=True)
    assert not q.is_contiguous()
    bias = torch.randn(1, 2, 9, 9).requires_grad_()
    out_r, g_r = _grads("reference", q, k, v, bias)
    out_t, g_t = _grads("triton", q, k, v, bias)
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_t, g_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_table_plus_padding_mask_like_partition_attention():
    """rpb [1, h, N, N] + mask [G, 1, N, N] (-1e4 on padded keys), as PartitionAttention builds it (a
    per-group bias that needs a gradient), and a bool keep-mask."""
    G, h, n = 4, 2, 9
    q, k, v = _qkv(G, h, n, n, 4, 4)
    table = torch.randn(1, h, n, n).requires_grad_()
    keep = torch.ones(G, 1, n, n, dtype=torch.bool)
    keep[1:, ..., 6:] = False
    mask = torch.zeros(G, 1, n, n).masked_fill(~keep, -1e4)
    res = {}
    for backend in ("reference", "triton"):
        res[backend] = _grads(backend, q, k, v, table + mask)
    torch.testing.assert_close(res["triton"][0], res["reference"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(res["triton"][1], res["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad(), ops.use_backend("triton"):
        out_bool = ops.attention(q, k, v, keep)
    with torch.no_grad(), ops.use_backend("reference"):
        out_ref = ops.attention(q, k, v, keep)
    torch.testing.assert_close(out_bool, out_ref, rtol=1e-5, atol=1e-5)


def test_table_gradient_through_sum_matches_reference():
    G, h, n = 3, 2, 9
    q, k, v = _qkv(G, h, n, n, 4, 4)
    grads = {}
    for backend in ("reference", "triton"):
        table = torch.randn(1, h, n, n, generator=torch.Generator().manual_seed(3)).requires_grad_()
        mask = torch.zeros(G, 1, n, n)
        mask[..., 7:] = -1e4
        with ops.use_backend(backend):
            out = ops.attention(q, k, v, table + mask, 0.3)
        out.square().sum().backward()
        grads[backend] = table.grad
    torch.testing.assert_close(grads["triton"], grads["reference"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_forward_matches_fp32_reference(dtype):
    q, k, v = _qkv(4, 2, 9, 9, 8, 8, dtype=dtype)
    bias = torch.randn(1, 2, 9, 9)
    with torch.no_grad():
        with ops.use_backend("triton"):
            out = ops.attention(q, k, v, bias.to(dtype))
        assert ops.last_path("attention") == "triton"
        ref = attention_reference(q.float(), k.float(), v.float(), bias)
    assert out.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)


def test_half_backward_close_to_fp32_reference():
    q, k, v = _qkv(2, 2, 9, 9, 8, 8, dtype=torch.float16)
    bias = torch.randn(1, 2, 9, 9).half().requires_grad_()
    _, g_t = _grads("triton", q, k, v, bias)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v, bias)]
    _, g_r = _grads("reference", *ref_in)
    for a, b in zip(g_t, g_r):
        assert a.dtype == torch.float16
        torch.testing.assert_close(a.float(), b, rtol=1e-2, atol=1e-2)


def test_dispatch_rules_on_cpu():
    """CPU auto order is unchanged (sdpa); triton runs only when forced, and only for 4-D inputs."""
    q = k = v = torch.randn(2, 1, 4, 8)
    ops.attention(q, k, v, torch.zeros(1, 1, 4, 4))
    assert ops.last_path("attention") == "sdpa"
    with ops.use_backend("triton"):
        ops.attention(q, k, v)
        assert ops.last_path("attention") == "triton"
        ops.attention(q[0], k[0], v[0])  # 3-D: not supported by the kernel, falls back
        assert ops.last_path("attention") == "sdpa"
