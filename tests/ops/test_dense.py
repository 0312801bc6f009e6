"""zoo.ops.linear / zoo.ops.conv2d: every path against the reference (F.linear / F.conv2d → BatchNorm →
activation), the dispatch rules (fast path only when no gradient is needed), and BatchNorm folding."""

import pytest
import torch
import torch.nn.functional as F

from zoo import ops
from zoo.ops.dense import activation

ONEDNN = torch.backends.mkldnn.is_available()
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="torch built without oneDNN")


def _bn(c: int, affine: bool = True, seed: int = 0) -> ops.BatchNormStats:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(c, generator=g) + 0.5 if affine else None
    b = torch.randn(c, generator=g) if affine else None
    return ops.BatchNormStats(torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.1, w, b, 1e-3)


def test_activation_names():
    x = torch.randn(50)
    assert torch.equal(activation(x, "none"), x)
    assert torch.equal(activation(x, "gelu"), F.gelu(x))
    assert torch.equal(activation(x, "gelu_tanh"), F.gelu(x, approximate="tanh"))
    assert torch.equal(activation(x, "silu"), F.silu(x))
    assert torch.equal(activation(x, "relu"), F.relu(x))
    assert torch.equal(activation(x, "sigmoid"), torch.sigmoid(x))
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        ops.linear(x[None], torch.randn(3, 50), act="tanh")


@needs_onednn
@pytest.mark.parametrize("act", ops.ACTIVATIONS)
@pytest.mark.parametrize("shape", [(37, 24), (2, 9, 24), (2, 5, 6, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_onednn_matches_reference(act, shape, bias):
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(40, 24) / 5
    b = torch.randn(40) if bias else None
    with torch.no_grad():
        ref = F.linear(x, w, b)
        ref = activation(ref, act)
        with ops.use_backend("onednn"):
            out = ops.linear(x, w, b, act=act)
        assert ops.last_path("linear") == "onednn"
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_linear_onednn_strided_input_and_bf16():
    torch.manual_seed(0)
    x = torch.randn(24, 30).t()  # [30, 24], not contiguous
    w, b = torch.randn(16, 24), torch.randn(16)
    with torch.no_grad():
        torch.testing.assert_close(ops.linear(x, w, b, "gelu_tanh"), F.gelu(F.linear(x, w, b), approximate="tanh"))
        xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
        with ops.use_backend("onednn"):  # forced: a linear this small is not a oneDNN default (ONEDNN_MIN_MACS)
            out = ops.linear(xb, wb, bb, "relu")
        assert out.dtype == torch.bfloat16 and ops.last_path("linear") == "onednn"
        torch.testing.assert_close(out.float(), F.relu(F.linear(x, w, b)), rtol=0.05, atol=0.1)


def test_linear_needs_grad_takes_the_reference_path_with_gradients():
    torch.manual_seed(0)
    x = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    out = ops.linear(x, w, b, act="gelu")
    assert ops.last_path("linear") == "reference"
    out.square().sum().backward()
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    F.gelu(F.linear(x2, w2, b2)).square().sum().backward()
    for a, r in ((x, x2), (w, w2), (b, b2)):
        torch.testing.assert_close(a.grad, r.grad)


@needs_onednn
def test_linear_dispatch_rules():
    x, w = torch.randn(256, 64), torch.randn(256, 64)  # 256·64·256 = ONEDNN_MIN_MACS multiply-adds
    with torch.no_grad():
        ops.linear(x, w)
        assert ops.last_path("linear") == "onednn"
        ops.linear(x[:255], w)  # smaller: oneDNN's per-call setup would cost more than the GEMM
        assert ops.last_path("linear") == "reference"
        assert "fewer than ONEDNN_MIN_MACS" in dict(ops.last_decision("linear").refused)["onednn"][0]
        with ops.use_backend("onednn"):  # forcing lifts that rule (it is about speed, not correctness)
            torch.testing.assert_close(ops.linear(x[:4], w), F.linear(x[:4], w))
        assert ops.last_path("linear") == "onednn"
        ops.linear(x.double(), w.double())  # fp64: no oneDNN kernel
        assert ops.last_path("linear") == "reference"
        with ops.use_backend("reference"):
            ops.linear(x, w)
        assert ops.last_path("linear") == "reference"
        ops.linear(x[:0], w)  # empty batch
        assert ops.last_path("linear") == "reference"
    ops.linear(x, w)  # grad mode on, but nothing requires grad: the fast path is safe
    assert ops.last_path("linear") == "onednn"
    with pytest.raises(ValueError, match="input has 7 features"):
        ops.linear(torch.randn(2, 7), w)


def test_fold_batchnorm_equals_conv_then_batchnorm():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, 9, 9, dtype=torch.float64), torch.randn(10, 6, 3, 3, dtype=torch.float64), None
    for affine in (True, False):
        bn = ops.BatchNormStats(*(t.double() if t is not None else None for t in _bn(10, affine)[:4]), 1e-3)
        for bias in (None, torch.randn(10, dtype=torch.float64)):
            ref = F.batch_norm(F.conv2d(x, w, bias, padding=1), bn.running_mean, bn.running_var, bn.weight,
                               bn.bias, False, 0.0, bn.eps)
            fw, fb = ops.fold_batchnorm(w, bias, bn)
            torch.testing.assert_close(F.conv2d(x, fw, fb, padding=1), ref)
    del b


CONV_CASES = [  # (c_in, c_out, k, stride, padding, dilation, groups)
    (6, 10, 1, 1, 0, 1, 1),
    (6, 10, 3, 1, 1, 1, 1),
    (8, 8, 3, 2, 1, 1, 8),  # depthwise, strided
    (8, 12, 3, 1, 2, 2, 4),  # dilated, grouped
    (3, 16, 3, 2, (1, 0), 1, 1),
]


@needs_onednn
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("act", ["none", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bn", [False, True])
def test_conv2d_onednn_matches_reference(case, act, channels_last, with_bn):
    cin, cout, k, s, p, d, g = case
    torch.manual_seed(0)
    x = torch.randn(2, cin, 11, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(cout, cin // g, k, k) / 3, torch.randn(cout)
    bn = _bn(cout) if with_bn else None
    with torch.no_grad():
        with ops.use_backend("reference"):
            ref = ops.conv2d(x, w, b, s, p, d, g, act, bn)
        out = ops.conv2d(x, w, b, s, p, d, g, act, bn)
        assert ops.last_path("conv2d") == "onednn"
    ref_direct = F.conv2d(x, w, b, s, p, d, g)
    if bn is not None:
        ref_direct = F.batch_norm(ref_direct, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    assert torch.equal(ref, activation(ref_direct, act))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_conv2d_with_grad_is_the_reference_with_bn_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(5, 4, 3, 3, requires_grad=True)
    bn = _bn(5)
    gamma = bn.weight.clone().requires_grad_()
    bn = bn._replace(weight=gamma)
    out = ops.conv2d(x, w, None, 1, 1, 1, 1, "gelu_tanh", bn)
    assert ops.last_path("conv2d") == "reference"
    out.sum().backward()
    assert w.grad is not None and gamma.grad is not None
    with pytest.raises(ValueError, match=r"conv2d expects \[B, C, H, W\]"):
        ops.conv2d(torch.randn(4, 6, 6), w.detach())


def test_traced_graph_never_holds_the_onednn_call():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.no_grad(), ops.use_backend("onednn"):
        traced = torch.jit.trace(lambda t: ops.linear(t, w, None, "gelu"), x)
    assert "mkldnn" not in str(traced.graph)
    torch.testing.assert_close(traced(x), F.gelu(F.linear(x, w)))


def test_no_graph_break_under_torch_compile():
    """torch.compile traces the dense ops and the layers that call them in one graph (inductor fuses on its
    own; the oneDNN call and torch.backends checks must not be reached while compiling)."""
    import torch._dynamo as dynamo

    from zoo.layers import MBConv, Mlp

    torch.manual_seed(0)
    mlp, mbconv = Mlp(8, 16, act_layer="gelu_tanh").eval(), MBConv(8, 8).eval()
    x = torch.randn(2, 8, 6, 6)

    def f(t):
        return mlp(mbconv(t).permute(0, 2, 3, 1))

    dynamo.reset()
    with torch.no_grad():
        report = dynamo.explain(f)(x)
    assert report.graph_break_count == 0, report.break_reasons


def test_cpu_autocast_keeps_its_dtype():
    """Under torch.autocast("cpu") the reference path runs, so linear/conv compute in the autocast dtype as
    F.linear/F.conv2d do (the oneDNN call would silently stay fp32)."""
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    xc, wc = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.linear(x, w, act="gelu").dtype == torch.bfloat16
        assert ops.last_path("linear") == "reference"
        assert ops.conv2d(xc, wc, padding=1).dtype == torch.bfloat16
