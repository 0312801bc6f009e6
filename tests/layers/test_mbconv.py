from functools import partial

import pytest
import torch
from timm.layers import LayerNorm2d, NormMlpClassifierHead, create_pool2d
from timm.layers import create_conv2d as timm_create_conv2d
from timm.models.maxxvit import MaxxVitConvCfg, MbConvBlock, Stem
from torch import nn

from zoo import ops
from zoo.layers import (
    AvgPool2dSame,
    BatchNormAct2d,
    Conv2dSame,
    MaxViTStem,
    MBConv,
    SqueezeExcite,
    create_conv2d,
)

TF_CFG = MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same")  # maxvit_*_tf conv cfg


def _randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(
                0.3 * torch.randn(p.shape, generator=g) + (1.0 if p.dim() == 1 and "weight" in name else 0.0)
            )
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return m


@pytest.mark.parametrize("k,stride,dilation", [(3, 2, 1), (3, 1, 1), (2, 1, 1), (3, 2, 2), (1, 2, 1)])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_same_conv_matches_timm(k, stride, dilation, hw):
    torch.manual_seed(0)
    ref = timm_create_conv2d(4, 6, k, stride=stride, dilation=dilation, padding="same", bias=True)
    m = create_conv2d(4, 6, k, stride=stride, dilation=dilation, padding="same", bias=True)
    assert type(m) is (Conv2dSame if type(ref).__name__ == "Conv2dSame" else nn.Conv2d)
    m.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 4, *hw)
    out = m(x)
    assert out.shape[-2:] == (-(-hw[0] // stride), -(-hw[1] // stride))  # TF SAME: ceil(H / s)
    assert torch.equal(out, ref(x))


def test_same_conv_pads_bottom_right_first():
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)  # total pad 1 per axis, all of it at the bottom/right
    out = conv(x)
    assert torch.equal(out[0, 0], torch.tensor([[9.0, 6.0], [6.0, 4.0]]))


def test_symmetric_and_valid_padding_match_timm():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 9, 8)
    for pad_ours, pad_timm in (("symmetric", ""), ("valid", "valid"), (1, 1)):
        ref = timm_create_conv2d(3, 5, 3, stride=2, padding=pad_timm, bias=False)
        m = create_conv2d(3, 5, 3, stride=2, padding=pad_ours, bias=False)
        m.load_state_dict(ref.state_dict(), strict=True)
        assert torch.equal(m(x), ref(x))
    with pytest.raises(ValueError, match="padding"):
        create_conv2d(3, 5, 3, padding="full")


@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_avg_pool_same_matches_timm(hw):
    x = torch.randn(2, 3, *hw)
    torch.testing.assert_close(
        AvgPool2dSame(2)(x), create_pool2d("avg", 2, padding="same")(x), rtol=0, atol=0
    )


def test_batchnorm_act_keys_and_values():
    torch.manual_seed(0)
    m = _randomize(BatchNormAct2d(6, eps=1e-3, act_layer="gelu_tanh")).eval()
    assert list(m.state_dict()) == list(nn.BatchNorm2d(6).state_dict())
    x = torch.randn(2, 6, 3, 3)
    ref = nn.functional.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, 1e-3)
    assert torch.equal(m(x), nn.functional.gelu(ref, approximate="tanh"))


def test_squeeze_excite_formula():
    torch.manual_seed(0)
    se = _randomize(SqueezeExcite(8, rd_channels=3))
    x = torch.randn(2, 8, 5, 4)
    s = x.mean((2, 3))
    h = nn.functional.silu(s @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias)
    gate = torch.sigmoid(h @ se.fc2.weight[:, :, 0, 0].T + se.fc2.bias)
    torch.testing.assert_close(se(x), x * gate[:, :, None, None], rtol=1e-6, atol=1e-6)
    assert SqueezeExcite(16).fc1.out_channels == 4  # rd_ratio 0.25 by default


@pytest.mark.parametrize("cin,cout,stride", [(16, 16, 1), (16, 16, 2), (16, 24, 2)])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_mbconv_matches_timm_mbconvblock(cin, cout, stride, hw):
    ref = _randomize(MbConvBlock(cin, cout, stride, cfg=TF_CFG))
    m = MBConv(cin, cout, stride)
    assert list(m.state_dict()) == list(ref.state_dict())  # same keys, same order
    m.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, cin, *hw)
    with torch.no_grad():
        with ops.use_backend("reference"):  # the reference path is timm's arithmetic, bit for bit
            out = m.eval()(x)
        assert out.shape == (2, cout, -(-hw[0] // stride), -(-hw[1] // stride))
        assert torch.equal(out, ref.eval()(x))
        # the default path (CPU: BatchNorm folded, activation fused in oneDNN) agrees up to rounding
        torch.testing.assert_close(m(x), out, rtol=1e-5, atol=1e-5)
        # train mode: batch statistics and running-stat updates agree too
        out_t, ref_t = m.train()(x), ref.train()(x)
    torch.testing.assert_close(out_t, ref_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.norm2.running_var, ref.norm2.running_var, rtol=1e-6, atol=1e-6)


def test_mbconv_keys_match_maxvit_tiny_tf():
    """Keys and shapes of ``stages.1.blocks.0.conv`` in maxvit_tiny_tf_224 (64 -> 128, stride 2)."""
    expected = {
        "shortcut.expand.weight": (128, 64, 1, 1),
        "shortcut.expand.bias": (128,),
        "conv1_1x1.weight": (512, 64, 1, 1),
        "conv2_kxk.weight": (512, 1, 3, 3),
        "se.fc1.weight": (32, 512, 1, 1),
        "se.fc1.bias": (32,),
        "se.fc2.weight": (512, 32, 1, 1),
        "se.fc2.bias": (512,),
        "conv3_1x1.weight": (128, 512, 1, 1),
        "conv3_1x1.bias": (128,),
    }
    for norm, c in (("pre_norm", 64), ("norm1", 512), ("norm2", 512)):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{norm}.{leaf}"] = (c,)
        expected[f"{norm}.num_batches_tracked"] = ()
    with torch.device("meta"):
        m = MBConv(64, 128, stride=2)
        first = MBConv(64, 64, stride=2)  # stages.0.blocks.0: pool-only shortcut, no keys
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    assert not any(k.startswith("shortcut") for k in first.state_dict())
    assert m.conv1_1x1.weight.is_meta


def test_mbconv_stride1_widening_and_errors():
    m = MBConv(8, 12, stride=1)
    assert m(torch.randn(1, 8, 5, 5)).shape == (1, 12, 5, 5)
    assert m.shortcut.expand.weight.shape == (12, 8, 1, 1)
    assert isinstance(MBConv(8, 8).shortcut, nn.Identity)
    with pytest.raises(ValueError, match="NCHW"):
        m(torch.randn(1, 5, 5, 8))
    with pytest.raises(ValueError, match="stride"):
        MBConv(8, 8, stride=3)
    with pytest.raises(TypeError):
        MBConv(8, 8, pool_type="avg2")


@pytest.mark.parametrize("hw", [(16, 16), (15, 17)])
def test_stem_matches_timm(hw):
    ref = _randomize(Stem(3, (8, 12), padding="same", bias=True, act_layer="gelu_tanh", norm_eps=1e-3))
    m = MaxViTStem(3, (8, 12))
    assert list(m.state_dict()) == list(ref.state_dict())
    m.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        with ops.use_backend("reference"):
            out = m.eval()(x)
        assert out.shape == (2, 12, -(-hw[0] // 2), -(-hw[1] // 2))
        assert torch.equal(out, ref.eval()(x))
        torch.testing.assert_close(m(x), out, rtol=1e-5, atol=1e-5)  # default: fused, equal up to rounding


def test_channels_last_norm_mlp_head_matches_timms_nchw_head():
    """The skeleton's head for MaxViT (timm's ClNormMlpClassifierHead on [B, H, W, C]) holds the keys of timm's
    NCHW NormMlpClassifierHead (what MaxViT checkpoints hold) and gives its outputs on the same weights."""
    from timm.layers import ClNormMlpClassifierHead

    torch.manual_seed(0)
    ref = NormMlpClassifierHead(16, 5, hidden_size=16, norm_layer=partial(LayerNorm2d, eps=1e-5), act_layer="tanh")
    _randomize(ref)
    cl = ClNormMlpClassifierHead(16, 5, hidden_size=16, norm_layer=partial(nn.LayerNorm, eps=1e-5), act_layer="tanh")
    keys = ["norm.weight", "norm.bias", "pre_logits.fc.weight", "pre_logits.fc.bias", "fc.weight", "fc.bias"]
    assert list(cl.state_dict()) == list(ref.state_dict()) == keys
    cl.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(cl.eval()(x.permute(0, 2, 3, 1)), ref.eval()(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cl(x.permute(0, 2, 3, 1), pre_logits=True), ref(x, pre_logits=True))
    ref.reset(0, pool_type="")
    cl.reset(0, pool_type="")
    with torch.no_grad():  # unpooled: the same per-pixel features, channels-last
        torch.testing.assert_close(cl(x.permute(0, 2, 3, 1)), ref(x).permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_mbconv_exports_with_symbolic_odd_and_even_sizes():
    """TF 'SAME' padding is computed without branching on H, W: one exported graph serves every size."""
    m = _randomize(MBConv(8, 16, stride=2)).eval()
    h, w = torch.export.Dim("H", min=4, max=64), torch.export.Dim("W", min=4, max=64)
    ep = torch.export.export(m, (torch.randn(1, 8, 9, 7),), dynamic_shapes=({2: h, 3: w},))
    for hw in ((9, 7), (10, 12), (5, 6)):
        x = torch.randn(1, 8, *hw)
        torch.testing.assert_close(ep.module()(x), m(x))
