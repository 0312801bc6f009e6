"""The layers' fused calls (linear_act, conv_act, conv_norm_act): same values as the modules, and the modules
themselves run whenever fusing would change behaviour (training BatchNorm, hooks, replaced submodules).
zoo.layers.Linear, which owns its fast path, has its own tests (test_linear.py)."""

import pytest
import torch
from torch import nn

from zoo import ops
from zoo.layers import BatchNormAct2d, Mlp, create_conv2d
from zoo.layers.conv import conv_act, conv_norm_act
from zoo.layers.mlp import activation_name, linear_act


def test_activation_name():
    assert activation_name(None) == "none"
    assert activation_name(nn.Identity()) == "none"
    assert activation_name(nn.GELU()) == "gelu"
    assert activation_name(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activation_name(nn.SiLU()) == "silu"
    assert activation_name(nn.ReLU()) == "relu"
    assert activation_name(nn.Sigmoid()) == "sigmoid"
    assert activation_name(nn.Tanh()) is None  # not fusable: runs as itself

    class MyGELU(nn.GELU):
        pass

    assert activation_name(MyGELU()) is None  # a subclass may override forward


def test_mlp_fused_equals_modules():
    torch.manual_seed(0)
    for act in ("gelu", "gelu_tanh", "silu", "relu"):
        mlp = Mlp(16, 48, act_layer=act).eval()
        x = torch.randn(2, 64, 48, 16)  # 6144·16·48 multiply-adds per linear: above zoo.ops.dense.ONEDNN_MIN_MACS
        with torch.no_grad():
            out = mlp(x)
            assert ops.last_path("linear") == ("onednn" if torch.backends.mkldnn.is_available() else "reference")
            ref = mlp.fc2(mlp.act(mlp.fc1(x)))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_linear_act_calls_hooks_and_replaced_modules():
    torch.manual_seed(0)
    fc, act = nn.Linear(8, 4), nn.GELU()
    x = torch.randn(3, 8)
    seen = []
    handle = fc.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        out = linear_act(fc, x, act)
    handle.remove()
    assert len(seen) == 1 and torch.equal(out, act(seen[0]))

    class LoRA(nn.Module):  # a wrapper as PEFT puts in place of a Linear
        def __init__(self, base):
            super().__init__()
            self.base, self.delta = base, nn.Linear(8, 4, bias=False)

        def forward(self, x):
            return self.base(x) + self.delta(x)

    wrapped = LoRA(fc)
    with torch.no_grad():
        torch.testing.assert_close(linear_act(wrapped, x, act), act(wrapped(x)))


def test_linear_act_runs_a_plain_nn_linear_and_its_activation_as_modules():
    fc = nn.Linear(8, 4)
    calls = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    try:
        with torch.no_grad():
            linear_act(fc, torch.randn(2, 8), nn.ReLU())
    finally:
        handle.remove()
    assert calls == ["Linear", "ReLU"]


def _bn_act(c, act="gelu_tanh"):
    bn = BatchNormAct2d(c, eps=1e-3, act_layer=act)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.2)
    return bn


@pytest.mark.parametrize("padding,stride,hw", [("same", 2, (9, 8)), ("same", 1, (7, 7)), ("symmetric", 2, (8, 8))])
def test_conv_norm_act_eval_equals_modules(padding, stride, hw):
    torch.manual_seed(0)
    conv = create_conv2d(6, 6, 3, stride=stride, groups=6, bias=False, padding=padding)
    norm = _bn_act(6).eval()
    x = torch.randn(2, 6, *hw).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = conv_norm_act(conv, norm, x)
        ref = norm(conv(x))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), ops.use_backend("reference"):
        assert torch.equal(conv_norm_act(conv, norm, x), ref)


def test_conv_norm_act_training_uses_batch_statistics_and_updates_running_stats():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(4, 5, 1, bias=False), _bn_act(5).train()
    norm_ref = _bn_act(5).train()
    x = torch.randn(3, 4, 6, 6)
    out = conv_norm_act(conv, norm, x)
    ref = norm_ref(conv(x))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(norm.running_mean, norm_ref.running_mean)


def test_conv_norm_act_eval_with_grad_trains_bn_affine():
    conv, norm = nn.Conv2d(4, 5, 3, padding=1), _bn_act(5).eval()
    conv_norm_act(conv, norm, torch.randn(2, 4, 5, 5)).sum().backward()
    assert ops.last_path("conv2d") == "reference"
    assert norm.weight.grad is not None and conv.weight.grad is not None


def test_conv_act_hooked_or_custom_runs_modules():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 1)
    x = torch.randn(2, 4, 3, 3)
    seen = []
    handle = conv.register_forward_pre_hook(lambda m, i: seen.append(1))
    with torch.no_grad():
        out = conv_act(conv, x)
    handle.remove()
    assert seen == [1] and torch.equal(out, conv(x))
    with torch.no_grad():
        torch.testing.assert_close(conv_act(conv, x), conv(x), rtol=1e-5, atol=1e-5)
        reflect = nn.Conv2d(4, 5, 3, padding=1, padding_mode="reflect")
        assert torch.equal(conv_act(reflect, x), reflect(x))


def test_conv_norm_act_with_a_separate_activation():
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(3, 6, 3, stride=2, padding=1), _bn_act(6, act=None).eval()
    x = torch.randn(2, 3, 9, 9)
    gelu = nn.GELU()
    with torch.no_grad():
        ref = gelu(norm(conv(x)))
        torch.testing.assert_close(conv_norm_act(conv, norm, x, gelu), ref, rtol=1e-5, atol=1e-5)
        with ops.use_backend("reference"):
            assert torch.equal(conv_norm_act(conv, norm, x, gelu), ref)
        # two non-identity activations (BatchNormAct2d's own and a separate one) are not fused: modules run
        both = _bn_act(6, act="relu").eval()
        assert torch.equal(conv_norm_act(conv, both, x, gelu), gelu(both(conv(x))))


def test_biformer_stem_and_downsampler_eval_paths_agree():
    from zoo.layers import ConvBNDownsample, ConvBNStem

    torch.manual_seed(0)
    for m, x in ((ConvBNStem(3, 16), torch.randn(2, 3, 30, 31)), (ConvBNDownsample(8, 16), torch.randn(2, 9, 7, 8))):
        for bn in (mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        m.eval()
        with torch.no_grad():
            out = m(x)
            with ops.use_backend("reference"):
                ref = m(x)
            plain = nn.Sequential(*m.children())(x.permute(0, 3, 1, 2) if x.shape[-1] == 8 else x)
        assert torch.equal(ref, plain.permute(0, 2, 3, 1))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
