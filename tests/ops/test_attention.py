import pytest
import torch

import zoo.ops as ops


def _qkv(B=2, h=3, n=10, m=12, d=8, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, h, n, d, generator=g, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, h, m, d, generator=g, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, h, m, d + 2, generator=g, dtype=dtype, requires_grad=grad)
    return q, k, v


def test_reference_matches_explicit_formula():
    q, k, v = _qkv()
    bias = torch.randn(3, 10, 12)
    with ops.use_backend("reference"):
        out = ops.attention(q, k, v, bias)
    assert ops.last_path("attention") == "reference"
    # explicit per-row softmax with python loops over one batch/head
    b, h = 1, 2
    for i in range(10):
        logits = torch.stack([(q[b, h, i] * k[b, h, j]).sum() * 8**-0.5 + bias[h, i, j] for j in range(12)])
        p = torch.exp(logits - logits.max())
        p = p / p.sum()
        expect = (p[:, None] * v[b, h]).sum(0)
        torch.testing.assert_close(out[b, h, i], expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias_shape", [None, (10, 12), (3, 10, 12), (2, 3, 10, 12), (2, 1, 10, 12)])
def test_sdpa_matches_reference_forward_and_backward(bias_shape):
    q, k, v = _qkv(grad=True)
    bias = None if bias_shape is None else torch.randn(bias_shape, requires_grad=True)
    inputs = [t for t in (q, k, v, bias) if t is not None]
    outs, grads = {}, {}
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            out = ops.attention(q, k, v, bias)
        assert ops.last_path("attention") == backend
        outs[backend] = out
        grads[backend] = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), inputs)
    torch.testing.assert_close(outs["sdpa"], outs["reference"], rtol=1e-5, atol=1e-5)
    for gs, gr in zip(grads["sdpa"], grads["reference"]):
        assert gs.shape == gr.shape
        torch.testing.assert_close(gs, gr, rtol=1e-4, atol=1e-5)


def test_bool_mask_matches_additive_mask():
    q, k, v = _qkv()
    keep = torch.rand(1, 1, 10, 12) > 0.3
    keep[..., 0] = True
    add = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    for backend in ("reference", "sdpa"):
        with ops.use_backend(backend):
            torch.testing.assert_close(ops.attention(q, k, v, keep), ops.attention(q, k, v, add))


def test_learnable_bias_gradcheck_float64():
    q, k, v = _qkv(B=1, h=2, n=4, m=5, d=3, dtype=torch.float64, grad=True)
    bias = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    with ops.use_backend("sdpa"):
        assert torch.autograd.gradcheck(lambda *a: ops.attention(*a), (q, k, v, bias))
    assert ops.last_path("attention") == "sdpa"


def test_custom_scale():
    q, k, v = _qkv()
    with ops.use_backend("reference"):
        a = ops.attention(q * 2, k, v, scale=0.5)
        b = ops.attention(q, k, v, scale=1.0)
    torch.testing.assert_close(a, b)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="head dim"):
        ops.attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same number of keys"):
        ops.attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="must be"):
        ops.attention(q[0], k, v)
    bad = q.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'q'.*1 NaN"):
        ops.attention(bad, k, v)
