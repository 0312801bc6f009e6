import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import AbsPosEmbed, ConvBNStem, ConvTokenizer, PatchEmbed, resample_abs_pos_embed

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def official_keys(case: str, prefix: str) -> dict[str, tuple[int, ...]]:
    """Official state-dict entries under ``prefix`` (prefix stripped) -> shape, from the parity keys.tsv."""
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


def hand_bn_eval(x, bn):  # x NCHW
    s = (1, -1, 1, 1)
    scale = bn.weight.view(s) / torch.sqrt(bn.running_var.view(s) + bn.eps)
    return (x - bn.running_mean.view(s)) * scale + bn.bias.view(s)


def hand_patchify(x, weight, bias):
    """Non-overlapping patches as a matmul: x [B, C, H, W] with H, W multiples of the patch."""
    out_c, C, ph, pw = weight.shape
    B, _, H, W = x.shape
    patches = x.reshape(B, C, H // ph, ph, W // pw, pw).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(B, H // ph, W // pw, -1) @ weight.reshape(out_c, -1).t() + bias


def ceil2(n, times=2):
    for _ in range(times):
        n = math.ceil(n / 2)
    return n


# ---------------------------------------------------------------- official key layout (parity keys.tsv)


@pytest.mark.parametrize(
    "case,prefix,make",
    [
        ("biformer_tiny", "downsample_layers.0.", lambda: ConvBNStem(3, 64)),
        ("biformer_reduced", "downsample_layers.0.", lambda: ConvBNStem(3, 32)),
        ("nat_mini", "patch_embed.", lambda: ConvTokenizer(3, 64)),
        ("agent_swin_t", "patch_embed.", lambda: PatchEmbed(3, 96, 4)),
        ("agent_pvt_t", "patch_embed1.", lambda: PatchEmbed(3, 64, 4, pad=False)),
        ("agent_deit_t", "patch_embed.", lambda: PatchEmbed(3, 192, 16, norm_layer=None)),
    ],
)
def test_stem_keys_match_official(case, prefix, make):
    with torch.device("meta"):
        m = make()
    assert zoo_keys(m) == official_keys(case, prefix)


def test_pos_embed_shapes_match_official():
    assert zoo_keys(AbsPosEmbed(192, 14, num_prefix_tokens=1, device="meta")) == {
        "pos_embed": official_keys("agent_deit_t", "pos_embed")[""]
    }
    for i, (dim, side) in enumerate([(64, 56), (128, 28), (320, 14), (512, 7)], start=1):
        m = AbsPosEmbed(dim, side, device="meta")
        assert zoo_keys(m) == {"pos_embed": official_keys("agent_pvt_t", f"pos_embed{i}")[""]}


# ---------------------------------------------------------------- values against hand computations


def test_convbn_stem_eval_matches_hand():
    m = randomize(ConvBNStem(3, 16)).eval()
    x = torch.randn(2, 3, 19, 22)
    y = m(x)
    h = F.conv2d(x, m[0].weight, m[0].bias, stride=2, padding=1)
    h = F.gelu(hand_bn_eval(h, m[1]))
    h = F.conv2d(h, m[3].weight, m[3].bias, stride=2, padding=1)
    h = hand_bn_eval(h, m[4]).permute(0, 2, 3, 1)
    assert y.shape == (2, 5, 6, 16)
    torch.testing.assert_close(y, h)
    assert isinstance(m[2], nn.GELU) and m[1].eps == 1e-5 and m[1].momentum == 0.1


def test_convbn_stem_train_uses_batch_stats():
    m = randomize(ConvBNStem(3, 8)).train()
    x = torch.randn(4, 3, 8, 8)
    h = F.conv2d(x, m[0].weight, m[0].bias, stride=2, padding=1)
    mu, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    h1 = (h - mu) / torch.sqrt(var + 1e-5) * m[1].weight.view(1, -1, 1, 1) + m[1].bias.view(1, -1, 1, 1)
    y = m[:3](x)  # Sequential slicing keeps the official indices
    torch.testing.assert_close(y, F.gelu(h1))


def test_conv_tokenizer_matches_hand():
    m = randomize(ConvTokenizer(3, 16))
    assert len(m.proj) == 2 and all(c.bias is not None for c in m.proj)
    x = torch.randn(2, 3, 17, 12)
    h = F.conv2d(x, m.proj[0].weight, m.proj[0].bias, stride=2, padding=1)
    h = F.conv2d(h, m.proj[1].weight, m.proj[1].bias, stride=2, padding=1).permute(0, 2, 3, 1)
    h = hand_layer_norm(h, m.norm.weight, m.norm.bias, 1e-5)
    torch.testing.assert_close(m(x), h)
    assert ConvTokenizer(3, 8, norm_layer=None).state_dict().keys() == {
        "proj.0.weight",
        "proj.0.bias",
        "proj.1.weight",
        "proj.1.bias",
    }


@pytest.mark.parametrize("hw", [(224, 224), (225, 225), (97, 97), (97, 130), (5, 3)])
def test_stride4_conv_stems_output_size(hw):
    x = torch.randn(1, 3, *hw)
    for m in (ConvTokenizer(3, 4, hidden_dim=2), ConvBNStem(3, 4, hidden_dim=2).eval()):
        with torch.no_grad():
            y = m(x)
        assert y.shape == (1, ceil2(hw[0]), ceil2(hw[1]), 4)
    assert ceil2(224) == 56 and ceil2(225) == 57 and ceil2(97) == 25


def test_patch_embed_matches_hand_and_pads():
    m = randomize(PatchEmbed(3, 8, 4))
    x = torch.randn(2, 3, 18, 13)
    y = m(x)
    assert y.shape == (2, 5, 4, 8)  # ceil(18/4), ceil(13/4)
    xp = torch.zeros(2, 3, 20, 16)
    xp[:, :, :18, :13] = x
    h = hand_layer_norm(hand_patchify(xp, m.proj.weight, m.proj.bias), m.norm.weight, m.norm.bias, 1e-5)
    torch.testing.assert_close(y, h)


def test_patch_embed_no_pad_drops_remainder_like_pvt():
    m = randomize(PatchEmbed(3, 8, 4, pad=False))
    x = torch.randn(1, 3, 18, 13)
    y = m(x)
    assert y.shape == (1, 4, 3, 8)
    h = hand_patchify(x[:, :, :16, :12], m.proj.weight, m.proj.bias)
    h = hand_layer_norm(h, m.norm.weight, m.norm.bias, 1e-5)
    torch.testing.assert_close(y, h)
    with pytest.raises(ValueError, match="smaller than the patch"):
        m(torch.randn(1, 3, 3, 8))


def test_patch_embed_no_norm_deit():
    m = randomize(PatchEmbed(3, 6, 16, norm_layer=None, dtype=torch.float64))
    assert isinstance(m.norm, nn.Identity)
    x = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    torch.testing.assert_close(m(x), hand_patchify(x, m.proj.weight, m.proj.bias))
    assert m(torch.randn(1, 3, 33, 17, dtype=torch.float64)).shape == (1, 3, 2, 6)


# ---------------------------------------------------------------- construction, device/dtype, errors


def all_stems():
    return [ConvBNStem(3, 8), ConvTokenizer(3, 8), PatchEmbed(3, 8, 4), PatchEmbed(3, 8, 4, norm_layer=None)]


def test_meta_and_dtype_construction():
    with torch.device("meta"):
        for m in all_stems() + [AbsPosEmbed(8, 3, 1)]:
            assert all(t.is_meta for t in m.state_dict().values())
    for cls, args in [(ConvBNStem, (3, 8)), (ConvTokenizer, (3, 8)), (PatchEmbed, (3, 8, 4))]:
        m = cls(*args, device="meta", dtype=torch.float64)
        assert all(t.is_meta for t in m.state_dict().values())
        m = cls(*args, dtype=torch.float64).eval()
        assert all(p.dtype == torch.float64 for p in m.parameters())
        assert m(torch.randn(1, 3, 9, 9, dtype=torch.float64)).dtype == torch.float64
    p = AbsPosEmbed(8, 3, 1, dtype=torch.float64)
    assert p.pos_embed.dtype == torch.float64


def test_bad_inputs_and_kwargs():
    for m in all_stems():
        with pytest.raises(ValueError, match="NCHW"):
            m(torch.randn(1, 9, 9, 3))  # channels-last image
        with pytest.raises(ValueError, match="NCHW"):
            m(torch.randn(3, 9, 9))
    with pytest.raises(TypeError):
        PatchEmbed(3, 8, 4, img_size=224)
    with pytest.raises(TypeError):
        ConvBNStem(3, 8, foo=1)


@pytest.mark.parametrize("idx", range(4), ids=["ConvBNStem", "ConvTokenizer", "PatchEmbed", "PatchEmbed_no_norm"])
def test_stems_backward_is_the_gradient_and_output_contiguous(idx, assert_backward_is_the_derivative):
    """Training mode (batch statistics), an odd size: the input gradient is the derivative of the forward."""
    m = randomize(all_stems()[idx]).double().train()
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    assert m(x).is_contiguous()
    assert_backward_is_the_derivative(m, x)


# ---------------------------------------------------------------- absolute position embedding


def test_resample_identity_at_same_size():
    pe = torch.randn(1, 1 + 12, 5)
    assert resample_abs_pos_embed(pe, (3, 4), (3, 4)) is pe
    pe0 = torch.randn(1, 16, 5)
    assert resample_abs_pos_embed(pe0, 4, num_prefix_tokens=0) is pe0


def test_resample_forced_path_is_exact_identity(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    pe = torch.randn(1, 2 + 12, 5)
    for mode in ("bilinear", "bicubic"):
        out = resample_abs_pos_embed(pe, (3, 4), (3, 4), num_prefix_tokens=2, interpolation=mode)
        assert out is not pe
        torch.testing.assert_close(out, pe, rtol=0, atol=1e-6)


def hand_bilinear(img, nh, nw):
    """Bilinear, align_corners=False, no antialias: img [h, w, C] -> [nh, nw, C], written out per pixel."""
    h, w, C = img.shape
    out = torch.empty(nh, nw, C, dtype=img.dtype)
    for i in range(nh):
        sy = max((i + 0.5) * h / nh - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(nw):
            sx = max((j + 0.5) * w / nw - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            out[i, j] = (
                (1 - fy) * (1 - fx) * img[y0, x0]
                + (1 - fy) * fx * img[y0, x1]
                + fy * (1 - fx) * img[y1, x0]
                + fy * fx * img[y1, x1]
            )
    return out


@pytest.mark.parametrize("old,new", [((3, 4), (5, 7)), ((4, 4), (2, 3)), ((7, 7), (7, 9))])
def test_resample_values_bilinear(old, new):
    C = 3
    pe = torch.randn(1, 1 + old[0] * old[1], C, dtype=torch.float64)
    out = resample_abs_pos_embed(pe, new, old, num_prefix_tokens=1)
    assert out.shape == (1, 1 + new[0] * new[1], C)
    torch.testing.assert_close(out[:, :1], pe[:, :1])
    grid = hand_bilinear(pe[0, 1:].reshape(*old, C), *new).reshape(1, -1, C)
    torch.testing.assert_close(out[:, 1:], grid)


def test_resample_square_default_and_errors():
    pe = torch.randn(1, 49, 4)
    assert resample_abs_pos_embed(pe, (14, 10), num_prefix_tokens=0).shape == (1, 140, 4)
    with pytest.raises(ValueError, match="not a square"):
        resample_abs_pos_embed(torch.randn(1, 12, 4), 4, num_prefix_tokens=0)
    with pytest.raises(ValueError, match="does not match"):
        resample_abs_pos_embed(pe, 4, (6, 6), num_prefix_tokens=0)
    with pytest.raises(ValueError, match=r"\[1, T \+ H\*W, C\]"):
        resample_abs_pos_embed(torch.randn(49, 4), 4)


def test_resample_bf16_and_bicubic():
    pe = torch.randn(1, 1 + 16, 4)
    out = resample_abs_pos_embed(pe.bfloat16(), (6, 6), (4, 4))
    assert out.dtype == torch.bfloat16
    ref = resample_abs_pos_embed(pe, (6, 6), (4, 4))
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    bic = resample_abs_pos_embed(pe, (6, 6), (4, 4), interpolation="bicubic", antialias=True)
    g = F.interpolate(
        pe[:, 1:].reshape(1, 4, 4, 4).permute(0, 3, 1, 2),
        size=(6, 6),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    torch.testing.assert_close(bic[:, 1:], g.permute(0, 2, 3, 1).reshape(1, 36, 4))


def test_abs_pos_embed_module_pvt_and_deit():
    pvt = AbsPosEmbed(4, (3, 3))
    x = torch.randn(2, 3, 3, 4)
    torch.testing.assert_close(pvt(x), x + pvt.pos_embed.reshape(1, 3, 3, 4))
    x5 = torch.randn(2, 5, 4, 4)
    grid = hand_bilinear(pvt.pos_embed[0].detach().reshape(3, 3, 4), 5, 4)
    torch.testing.assert_close(pvt(x5), x5 + grid)

    deit = AbsPosEmbed(4, 2, num_prefix_tokens=1)
    cls = torch.randn(1, 1, 4).expand(2, -1, -1)
    x = torch.randn(2, 2, 2, 4)
    y = deit(x, cls)
    assert y.shape == (2, 5, 4)
    torch.testing.assert_close(y, torch.cat([cls, x.reshape(2, 4, 4)], 1) + deit.pos_embed)
    assert deit(torch.randn(2, 3, 5, 4), cls).shape == (2, 16, 4)
    with pytest.raises(ValueError, match="prefix"):
        deit(x)
    with pytest.raises(ValueError, match="prefix"):
        pvt(x[:, :3, :3], cls)
    with pytest.raises(ValueError, match="channels-last"):
        pvt(torch.randn(2, 4, 3, 3))
    y.sum().backward()
    assert deit.pos_embed.grad is not None
