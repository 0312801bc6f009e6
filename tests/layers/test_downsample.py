import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import ConvBNDownsample, ConvDownsampler, PatchEmbedDownsample, PatchMerging

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def official_keys(case: str, prefix: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (PARITY / case / "keys.tsv").read_text().splitlines():
        name, shape = line.split("\t")[:2]
        if name.startswith(prefix):
            out[name[len(prefix) :]] = tuple(int(s) for s in shape.split(",")) if shape else ()
    assert out, f"no keys under {prefix!r} in {case}"
    return out


def zoo_keys(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 if t.dim() > 1 else 1.0))
    return m


def hand_layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def zero_pad_to_even(x):  # [B, H, W, C] bottom/right
    B, H, W, C = x.shape
    out = x.new_zeros(B, H + H % 2, W + W % 2, C)
    out[:, :H, :W] = x
    return out


# ---------------------------------------------------------------- official key layout (parity keys.tsv)


@pytest.mark.parametrize(
    "case,prefix,make",
    [
        ("biformer_tiny", "downsample_layers.1.", lambda: ConvBNDownsample(64, 128)),
        ("biformer_tiny", "downsample_layers.3.", lambda: ConvBNDownsample(256, 512)),
        ("biformer_reduced", "downsample_layers.3.", lambda: ConvBNDownsample(64, 64)),
        ("nat_mini", "levels.0.downsample.", lambda: ConvDownsampler(64)),
        ("dinat_mini", "levels.2.downsample.", lambda: ConvDownsampler(256)),
        ("agent_swin_t", "layers.0.downsample.", lambda: PatchMerging(96)),
        ("agent_reduced", "layers.2.downsample.", lambda: PatchMerging(128)),
        ("agent_pvt_t", "patch_embed2.", lambda: PatchEmbedDownsample(64, 128)),
        ("agent_pvt_t", "patch_embed3.", lambda: PatchEmbedDownsample(128, 320)),
    ],
)
def test_downsample_keys_match_official(case, prefix, make):
    with torch.device("meta"):
        m = make()
    assert zoo_keys(m) == official_keys(case, prefix)


# ---------------------------------------------------------------- values against hand computations


@pytest.mark.parametrize("hw", [(6, 8), (7, 5)])
def test_patch_merging_matches_hand_gather(hw):
    m = randomize(PatchMerging(3, out_dim=5))
    x = torch.randn(2, *hw, 3)
    xp = zero_pad_to_even(x)
    x0, x1 = xp[:, 0::2, 0::2], xp[:, 1::2, 0::2]
    x2, x3 = xp[:, 0::2, 1::2], xp[:, 1::2, 1::2]
    cat = torch.cat([x0, x1, x2, x3], -1)
    ref = hand_layer_norm(cat, m.norm.weight, m.norm.bias, 1e-5) @ m.reduction.weight.t()
    y = m(x)
    assert y.shape == (2, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2), 5)
    torch.testing.assert_close(y, ref)


def test_patch_merging_channel_order_explicit():
    # identity norm/projection exposes the raw concat: channel block k holds pixel (dh, dw) = (k % 2, k // 2)
    m = PatchMerging(1, out_dim=4, norm_layer=lambda d, **kw: nn.Identity())
    with torch.no_grad():
        m.reduction.weight.copy_(torch.eye(4))
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    y = m(x)
    assert y[0, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]  # x[0,0], x[1,0], x[0,1], x[1,1]
    assert y[0, 1, 1].tolist() == [10.0, 14.0, 11.0, 15.0]
    assert m.reduction.bias is None and m.norm is not None


def test_patch_merging_gradcheck_odd():
    m = randomize(PatchMerging(2, out_dim=3, dtype=torch.float64))
    x = torch.randn(1, 3, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_convbn_downsample_eval_matches_hand():
    m = randomize(ConvBNDownsample(4, 6)).eval()
    x = torch.randn(2, 9, 6, 4)
    h = F.conv2d(x.permute(0, 3, 1, 2), m[0].weight, m[0].bias, stride=2, padding=1)
    s = (1, -1, 1, 1)
    bn = m[1]
    h = (h - bn.running_mean.view(s)) / torch.sqrt(bn.running_var.view(s) + 1e-5)
    h = h * bn.weight.view(s) + bn.bias.view(s)
    y = m(x)
    assert y.shape == (2, 5, 3, 6)
    torch.testing.assert_close(y, h.permute(0, 2, 3, 1))
    assert isinstance(m[:1], nn.Sequential) and m[0].bias is not None


def test_conv_downsampler_matches_hand():
    m = randomize(ConvDownsampler(4))
    assert m.reduction.bias is None and m.out_dim == 8
    x = torch.randn(2, 7, 10, 4)
    h = F.conv2d(x.permute(0, 3, 1, 2), m.reduction.weight, None, stride=2, padding=1).permute(0, 2, 3, 1)
    y = m(x)
    assert y.shape == (2, 4, 5, 8)
    torch.testing.assert_close(y, hand_layer_norm(h, m.norm.weight, m.norm.bias, 1e-5))


def test_patch_embed_downsample_matches_hand_and_floors():
    m = randomize(PatchEmbedDownsample(3, 5))
    x = torch.randn(2, 7, 6, 3)
    y = m(x)
    assert y.shape == (2, 3, 3, 5)  # floor(7/2): the last row is dropped, like official PVT
    xs = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3)  # [B, h, dh, w, dw, C]
    w = m.proj.weight  # [O, C, dh, dw]
    h = torch.einsum("bhiwjc,ocij->bhwo", xs, w) + m.proj.bias
    torch.testing.assert_close(y, hand_layer_norm(h, m.norm.weight, m.norm.bias, 1e-5))
    mp = PatchEmbedDownsample(3, 5, pad=True)
    mp.load_state_dict(m.state_dict())
    yp = mp(x)
    assert yp.shape == (2, 4, 3, 5)
    torch.testing.assert_close(yp[:, :3], y)


@pytest.mark.parametrize("hw", [(56, 56), (57, 57), (25, 31)])
def test_downsample_output_sizes(hw):
    x = torch.randn(1, *hw, 2)
    ceil = (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
    for m in (ConvBNDownsample(2).eval(), ConvDownsampler(2), PatchMerging(2)):
        assert m(x).shape == (1, *ceil, 4)
    assert PatchEmbedDownsample(2)(x).shape == (1, hw[0] // 2, hw[1] // 2, 4)


# ---------------------------------------------------------------- construction, device/dtype, errors


def all_downsamplers():
    return [ConvBNDownsample(4), ConvDownsampler(4), PatchMerging(4), PatchEmbedDownsample(4)]


def test_meta_and_dtype_construction():
    with torch.device("meta"):
        for m in all_downsamplers():
            assert all(t.is_meta for t in m.state_dict().values())
    for cls in (ConvBNDownsample, ConvDownsampler, PatchMerging, PatchEmbedDownsample):
        m = cls(4, 6, device="meta", dtype=torch.float64)
        assert all(t.is_meta for t in m.state_dict().values())
        m = cls(4, 6, dtype=torch.float64).eval()
        assert all(p.dtype == torch.float64 for p in m.parameters())
        y = m(torch.randn(1, 5, 4, 4, dtype=torch.float64))
        assert y.dtype == torch.float64 and y.shape[-1] == 6


def test_bad_inputs_and_kwargs():
    for m in all_downsamplers():
        with pytest.raises(ValueError, match="channels-last"):
            m(torch.randn(1, 4, 6, 6))  # NCHW
        with pytest.raises(ValueError, match="channels-last"):
            m(torch.randn(6, 6, 4))
    with pytest.raises(TypeError):
        PatchMerging(4, input_resolution=(8, 8))
    with pytest.raises(ValueError, match="smaller than the patch"):
        PatchEmbedDownsample(4)(torch.randn(1, 1, 5, 4))


@pytest.mark.parametrize(
    "idx", range(4), ids=["ConvBNDownsample", "ConvDownsampler", "PatchMerging", "PatchEmbedDownsample"]
)
def test_downsamplers_backward_is_the_gradient_and_output_contiguous(idx, assert_backward_is_the_derivative):
    """Training mode (batch statistics), odd sizes: the input gradient is the derivative of the forward."""
    m = randomize(all_downsamplers()[idx]).double().train()
    x = torch.randn(2, 5, 7, 4, dtype=torch.float64, requires_grad=True)
    assert m(x).is_contiguous()
    assert_backward_is_the_derivative(m, x)


def test_export_with_dynamic_odd_sizes():
    # no Python branch on the map size: one exported graph serves even and odd sizes
    m = randomize(PatchMerging(4, out_dim=3)).eval()
    h, w = torch.export.Dim("h", min=4, max=64), torch.export.Dim("w", min=4, max=64)
    ep = torch.export.export(m, (torch.randn(1, 8, 8, 4),), dynamic_shapes=({1: h, 2: w},))
    for hw in [(8, 8), (7, 9), (5, 6)]:
        x = torch.randn(1, *hw, 4)
        torch.testing.assert_close(ep.module()(x), m(x))
