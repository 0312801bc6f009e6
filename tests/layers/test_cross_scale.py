import pytest
import torch
import torch.nn.functional as F

from zoo.layers import CrossScaleEmbedding, cross_scale_dims


def test_official_channel_split():
    assert cross_scale_dims(64, 4) == [32, 16, 8, 8]  # CrossFormer-T stem
    assert cross_scale_dims(96, 4) == [48, 24, 12, 12]  # -S/-B stem
    assert cross_scale_dims(128, 2) == [64, 64]  # merge 64 -> 128 with kernels 2/4
    assert cross_scale_dims(10, 1) == [10]
    with pytest.raises(ValueError, match="divisible"):
        cross_scale_dims(50, 4)


def test_stem_224_shapes_keys_and_padding():
    stem = CrossScaleEmbedding(3, 64, (4, 8, 16, 32))
    shapes = {k: tuple(v.shape) for k, v in stem.state_dict().items()}
    assert shapes == {
        "projs.0.weight": (32, 3, 4, 4), "projs.0.bias": (32,),
        "projs.1.weight": (16, 3, 8, 8), "projs.1.bias": (16,),
        "projs.2.weight": (8, 3, 16, 16), "projs.2.bias": (8,),
        "projs.3.weight": (8, 3, 32, 32), "projs.3.bias": (8,),
        "norm.weight": (64,), "norm.bias": (64,),
    }  # fmt: skip
    assert [c.padding for c in stem.convs] == [(0, 0), (2, 2), (6, 6), (14, 14)]
    assert [c.stride for c in stem.convs] == [(4, 4)] * 4
    y = stem(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 56, 56, 64)
    # the norm is the last op: every pixel's 64 channels are normalised
    torch.testing.assert_close(y.mean(-1), torch.zeros(1, 56, 56), atol=1e-5, rtol=0)
    assert CrossScaleEmbedding(3, 64, norm=False).norm is None  # patch_norm=False


def _reference(x_nchw, convs, kernels, stride):
    outs = [
        F.conv2d(x_nchw, c.weight, c.bias, stride=stride, padding=(k - stride) // 2)
        for c, k in zip(convs, kernels)
    ]
    return torch.cat(outs, dim=1).permute(0, 2, 3, 1)


@pytest.mark.parametrize("hw", [(37, 50), (33, 4), (12, 16)])
def test_stem_any_size_follows_conv_arithmetic(hw):
    torch.manual_seed(0)
    stem = CrossScaleEmbedding(3, 16, (4, 8, 16, 32), norm=False)
    x = torch.randn(2, 3, *hw)
    y = stem(x)
    assert y.shape == (2, hw[0] // 4, hw[1] // 4, 16)
    torch.testing.assert_close(y, _reference(x, stem.convs, (4, 8, 16, 32), 4))


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (3, 2)])
def test_merge_norm_before_convs_any_size(hw):
    torch.manual_seed(0)
    merge = CrossScaleEmbedding(8, 16, (2, 4), mode="merge")
    assert [k for k in merge.state_dict()] == [
        "reductions.0.weight", "reductions.0.bias", "reductions.1.weight", "reductions.1.bias",
        "norm.weight", "norm.bias",
    ]  # fmt: skip
    assert merge.norm.weight.shape == (8,) and merge.dims == [8, 8]
    assert [c.padding for c in merge.convs] == [(0, 0), (1, 1)] and merge.stride == 2
    with torch.no_grad():
        merge.norm.weight.uniform_(0.5, 1.5)
        merge.norm.bias.normal_()
    x = torch.randn(2, *hw, 8)
    y = merge(x)
    assert y.shape == (2, hw[0] // 2, hw[1] // 2, 16)
    xn = F.layer_norm(x, (8,), merge.norm.weight, merge.norm.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, _reference(xn, merge.convs, (2, 4), 2))


def test_concat_order_by_hand():
    # each conv outputs its own constant: channels must come out smallest kernel first, in the official split
    stem = CrossScaleEmbedding(3, 16, (4, 8, 16, 32), norm=False)
    with torch.no_grad():
        for i, conv in enumerate(stem.convs):
            conv.weight.zero_()
            conv.bias.fill_(float(i + 1))
    y = stem(torch.randn(1, 3, 8, 12))
    expected = torch.tensor([1.0] * 8 + [2.0] * 4 + [3.0] * 2 + [4.0] * 2)
    assert y.shape == (1, 2, 3, 16)
    assert (y == expected).all()
    # and one pixel of the 4x4 conv is the dot product of its own 4x4 patch
    stem = CrossScaleEmbedding(1, 4, (4, 8), norm=False)
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    y = stem(x)
    w, b = stem.convs[0].weight, stem.convs[0].bias
    torch.testing.assert_close(y[0, 1, 0, :2], (w[:, 0] * x[0, 0, 4:8, 0:4]).sum((-1, -2)) + b)


def test_errors_and_meta():
    with pytest.raises(ValueError, match="mode"):
        CrossScaleEmbedding(3, 64, mode="patch")
    with pytest.raises(ValueError, match="even"):
        CrossScaleEmbedding(3, 64, (4, 7))
    with pytest.raises(ValueError, match="divisible"):
        CrossScaleEmbedding(3, 60, (4, 8, 16, 32))
    stem = CrossScaleEmbedding(3, 16)
    with pytest.raises(ValueError, match="NCHW"):
        stem(torch.randn(1, 8, 8, 3))
    with pytest.raises(ValueError, match="smaller than the stride"):
        stem(torch.randn(1, 3, 3, 8))
    merge = CrossScaleEmbedding(8, 16, (2, 4), mode="merge")
    with pytest.raises(ValueError, match="channels-last"):
        merge(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="smaller than the stride"):
        merge(torch.randn(1, 1, 4, 8))
    with torch.device("meta"):
        m = CrossScaleEmbedding(3, 96)
        y = m(torch.empty(2, 3, 224, 224))
    assert m.projs[3].weight.is_meta and y.shape == (2, 56, 56, 96)
    m = CrossScaleEmbedding(64, 128, (2, 4), mode="merge", dtype=torch.float64)
    assert m.reductions[0].weight.dtype == torch.float64 and m.norm.weight.dtype == torch.float64
