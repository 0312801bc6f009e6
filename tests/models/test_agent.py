"""Agent-Swin / Agent-PVT / Agent-DeiT: variant table, blocks, what Agent-DeiT's tokens add, converter. The contract
every family keeps (any size, features, gradients, timm's model API) is tests/models/test_family_contract.py."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.models import agent as A

# --------------------------------------------------------------------------------------- parameter counts
# Independent count of the OFFICIAL definitions (agent_transformer/models/agent_{swin,pvt,deit}.py @207ce3e).


def _lin(i, o, bias=True):
    return i * o + (o if bias else 0)


def _mlp(c, hidden):
    return _lin(c, hidden) + _lin(hidden, c)


def _agent_attn(c, h, n, size, q_kv=False, cls=False):
    # qkv (or q + kv), proj, dwc 3x3 depthwise, an/na [h, n, 7, 7], ah/aw/ha/wa [.., size, ..], ac/ca
    return (_lin(c, 3 * c) + _lin(c, c) + 10 * c + 2 * h * n * 49 + 4 * h * n * size + (2 * h * n if cls else 0))


def _official_swin(embed, depths, heads, attn_type, agents=(9, 16, 49, 49), img=224, classes=1000):
    total = 3 * 16 * embed + embed + 2 * embed  # patch_embed.proj + norm
    res = img // 4
    pats = A._split_attn_type(attn_type, 4)
    for i, d in enumerate(depths):
        c, r = embed * 2**i, res // 2**i
        kinds = A._stage_kinds(pats[i], d)
        for k in kinds:
            total += 4 * c + _mlp(c, 4 * c)  # norm1, norm2, mlp
            if k == "A":
                total += _agent_attn(c, heads[i], agents[i], min(img // 4, r))
            else:
                w = max(7, (img // 4) // 8)
                total += _lin(c, 3 * c) + _lin(c, c) + (2 * w - 1) ** 2 * heads[i]
        if i < 3:
            total += 2 * 4 * c + 4 * c * 2 * c  # PatchMerging norm(4C) + reduction (no bias)
    cf = embed * 8
    return total + 2 * cf + _lin(cf, classes)


def _official_pvt(depths, img=224, dims=(64, 128, 320, 512), heads=(1, 2, 5, 8), ratios=(8, 8, 4, 4),
                  agents=(9, 16, 49, 49), classes=1000):
    total, prev = 0, 3
    for i, d in enumerate(depths):
        c, r, p = dims[i], img // 4 // 2**i, 4 if i == 0 else 2
        total += prev * p * p * c + c + 2 * c + r * r * c  # patch_embed{i} + pos_embed{i}
        total += d * (4 * c + _mlp(c, ratios[i] * c) + _agent_attn(c, heads[i], agents[i], r, q_kv=True))
        prev = c
    return total + _lin(dims[-1], classes)  # no final norm


def _official_deit(c, heads, agents, agent_layers=12, img=224, classes=1000):
    g = img // 16
    total = 3 * 256 * c + c + c + (1 + g * g) * c  # patch_embed, cls_token, pos_embed
    for i in range(12):
        total += 4 * c + _mlp(c, 4 * c)
        if i < agent_layers:
            total += _agent_attn(c, heads, agents, g, cls=True)
        else:
            total += _lin(c, 3 * c) + _lin(c, c)
    return total + 2 * c + _lin(c, classes)


# name: (exact count, official formula, paper / README figure in M)
VARIANTS = {
    "agent_swin_nano": (4_237_388, _official_swin(48, (1, 1, 3, 1), (2, 4, 8, 16), "AAAB"), None),
    "agent_swin_t": (28_902_964, _official_swin(96, (2, 2, 6, 2), (3, 6, 12, 24), "AAAB"), 29),
    "agent_swin_s": (49_666_684, _official_swin(96, (2, 2, 18, 2), (3, 6, 12, 24), "AABB"), 50),
    "agent_swin_b": (88_095_096, _official_swin(128, (2, 2, 18, 2), (4, 8, 16, 32), "AAMB2"), 88),
    "agent_pvt_t": (11_570_352, _official_pvt((2, 2, 2, 2)), 11.6),
    "agent_pvt_s": (20_635_066, _official_pvt((3, 4, 6, 3)), 20.6),
    "agent_pvt_m": (35_921_746, _official_pvt((3, 4, 18, 3)), 35.9),
    "agent_pvt_l": (48_738_180, _official_pvt((3, 8, 27, 3)), 48.7),
    "agent_deit_t": (6_015_640, _official_deit(192, 3, 49), 6.0),
    "agent_deit_s": (22_647_112, _official_deit(384, 6, 49), 22.7),
    "agent_deit_b": (87_204_904, _official_deit(768, 12, 81, agent_layers=4), 87.2),
}


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_param_count(name):
    exact, official, paper = VARIANTS[name]
    with torch.device("meta"):
        model = timm.create_model(name)
    n = _count(model)
    assert n == exact == official
    if paper is not None:
        if name.startswith("agent_swin"):
            assert round(n / 1e6) == paper
        else:  # README figures to 0.1 M; Agent-DeiT-S (22.647 M) is listed as 22.7 M
            assert abs(n / 1e6 - paper) < 0.06
    else:
        assert 2e6 <= n <= 6e6  # nano


def test_higher_resolution_param_counts():
    """README rows at other resolutions: Swin-S 288 (50 M), Swin-B 384 (88 M), PVT-M 256 (36.1 M),
    DeiT-S 448 (23.1 M); the pretrained tag sets the training resolution."""
    with torch.device("meta"):
        s288 = timm.create_model("agent_swin_s.official_in1k_288")
        b384 = timm.create_model("agent_swin_b", img_size=384)
        m256 = timm.create_model("agent_pvt_m", img_size=256)
        d448 = timm.create_model("agent_deit_s", img_size=448)
    assert _count(s288) == 49_707_964 == _official_swin(96, (2, 2, 18, 2), (3, 6, 12, 24), "AABB", img=288)
    assert _count(b384) == _official_swin(128, (2, 2, 18, 2), (4, 8, 16, 32), "AAMB2", img=384)
    assert round(_count(b384) / 1e6) == 88
    assert round(_count(m256) / 1e6, 1) == 36.1 and _count(m256) == _official_pvt((3, 4, 18, 3), img=256)
    assert round(_count(d448) / 1e6, 1) == 23.1 and _count(d448) == _official_deit(384, 6, 49, img=448)
    # Swin-S at 288: window 72 → Swin blocks use windows of 9 (official max(7, 72 // 8))
    assert s288.stages[2].blocks[1].attn.window_size == 9


# ------------------------------------------------------------------------------------------------ blocks
def test_stage_patterns():
    assert A._split_attn_type("AAMB2", 4) == ["A", "A", "M2", "B"]
    assert A._stage_kinds("M2", 5) == ["A", "A", "B", "B", "B"]
    with pytest.raises(ValueError, match="attn_type"):
        A._split_attn_type("AAM", 4)
    with pytest.raises(ValueError, match="block count"):
        A._split_attn_type("AAMB", 4)
    with torch.device("meta"):
        m = timm.create_model("agent_swin_b")
    s3 = m.stages[2].blocks
    assert [type(b.attn).__name__ for b in s3[:3]] == ["AgentAttention", "AgentAttention", "ShiftedWindowAttention"]
    assert not s3[2].attn.shift and s3[3].attn.shift
    assert [b.attn.train_size for b in (m.stages[0].blocks[0], m.stages[1].blocks[0])] == [(56, 56), (28, 28)]


def _official_mask(H, W, ws, shift):
    """Official Swin rule, written with slices (as SwinTransformerBlock.__init__)."""
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, h, w, :] = cnt
            cnt += 1
    win = img.reshape(1, H // ws, ws, W // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("hw", [(14, 14), (21, 14)])
def test_shift_mask_matches_official_rule(hw):
    got = A.ShiftedWindowAttention.shift_mask(hw, 7, 3)
    torch.testing.assert_close(got, _official_mask(*hw, 7, 3))


def test_shifted_window_attention_odd_size_and_small_map():
    torch.manual_seed(0)
    attn = A.ShiftedWindowAttention(16, 2, 7, shift=True).eval()
    plain = A.ShiftedWindowAttention(16, 2, 7, shift=False).eval()
    plain.load_state_dict(attn.state_dict())
    # an 11x9 map is padded to 14x14 windows and cropped: its first window is that window alone, and the
    # shifted module's result differs from the plain one
    x = torch.randn(2, 11, 9, 16)
    y = plain(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :7, :7], plain(x[:, :7, :7].contiguous()))
    assert attn(x).shape == x.shape and not torch.allclose(attn(x), y)
    # a map not larger than the window: one window of min(H, W), no shift (equals the unshifted module)
    x = torch.randn(1, 7, 7, 16)
    torch.testing.assert_close(attn(x), plain(x))
    # on a 14x14 map (two windows per side) the shift changes the result
    x = torch.randn(1, 14, 14, 16)
    assert not torch.allclose(attn(x), plain(x))


# ----------------------------------------------------------------------------------------------- forward
def test_agent_biases_are_trained():
    """The agent biases reach the logits: a training step gives them a non-zero gradient."""
    torch.manual_seed(0)
    m = timm.create_model("agent_swin_nano", num_classes=5)
    m(torch.randn(1, 3, 45, 67)).logsumexp(-1).sum().backward()
    attn = m.stages[0].blocks[0].attn
    assert all(b.grad.abs().sum() > 0 for b in (attn.an_bias, attn.na_bias, attn.ah_bias, attn.wa_bias))


def test_deit_tokens_and_pooling():
    """Agent-DeiT's features are tokens (class token first); ``global_pool='token'`` takes the class token,
    ``'avg'`` the mean of the patch tokens; position embedding and class token are not decayed."""
    m = timm.create_model("agent_deit_t", num_classes=0).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (1, 13, 192)  # class token + 4x3 patches
        torch.testing.assert_close(m(x), feats[:, 0])
        m.reset_classifier(0, "avg")
        torch.testing.assert_close(m(x), feats[:, 1:].mean(1))
    assert m.no_weight_decay() == {"pos_embed", "cls_token"}
    with pytest.raises(ValueError, match="global_pool must be"):
        m.reset_classifier(0, "max")


def test_no_weight_decay():
    with torch.device("meta"):
        m = timm.create_model("agent_swin_t")
    nwd = m.no_weight_decay()
    assert nwd == {"stages.3.blocks.0.attn.rel_pos.relative_position_bias_table",
                   "stages.3.blocks.1.attn.rel_pos.relative_position_bias_table"}


# --------------------------------------------------------------------------------------------- converter
def _to_official_swin(sd):
    out = {}
    for k, v in sd.items():
        if k.startswith("stem."):
            k = "patch_embed." + k[5:]
        elif k.startswith("head.fc."):
            k = "head." + k[8:]
        elif k.startswith("stages."):
            _, i, part, rest = k.split(".", 3)
            if part == "downsample":
                k = f"layers.{int(i) - 1}.downsample.{rest}"
            else:
                k = f"layers.{i}.{part}.{rest}".replace(".rel_pos.", ".")
        out[k] = v
    return out


def test_converter_roundtrip_and_errors():
    m = timm.create_model("agent_swin_nano", num_classes=7)
    official = _to_official_swin(m.state_dict())
    official["layers.3.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    for wrap in (official, {"model": official}, {"state_dict_ema": official}, {"state_dict": official}):
        out = A.checkpoint_filter_fn(wrap, m)
        m.load_state_dict(out, strict=True)
    # extra official key named
    bad = dict(official, **{"layers.0.blocks.0.attn.foo": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.0\.attn\.foo"):
        A.checkpoint_filter_fn(bad)
    # missing key named (with the model)
    bad = {k: v for k, v in official.items() if k != "layers.0.blocks.0.attn.dwc.weight"}
    with pytest.raises(ValueError, match=r"stages\.0\.blocks\.0\.attn\.dwc\.weight"):
        A.checkpoint_filter_fn(bad, m)
    # another family's checkpoint
    cf = {"patch_embed.projs.0.weight": torch.zeros(1), "layers.0.blocks.0.attn.pos.pos_proj.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="crossformer"):
        A.checkpoint_filter_fn(cf)
    # another variant: shape mismatches are named
    with torch.device("meta"):
        other = timm.create_model("agent_swin_t")
    with pytest.raises(ValueError, match="shape mismatches"):
        A.checkpoint_filter_fn(official, other)


def test_converter_resizes_resolution_dependent_tensors():
    torch.manual_seed(0)
    for name in ("agent_swin_nano", "agent_pvt_t", "agent_deit_t"):
        src = timm.create_model(name)
        with torch.device("meta"):
            dst = timm.create_model(name, img_size=256)
        out = A.checkpoint_filter_fn(src.state_dict(), dst)
        want = dst.state_dict()
        assert all(out[k].shape == want[k].shape for k in want), name
    # a resized agent bias is the linear interpolation of the trained one
    src = timm.create_model("agent_swin_nano")
    with torch.device("meta"):
        dst = timm.create_model("agent_swin_nano", img_size=256)
    out = A.checkpoint_filter_fn(src.state_dict(), dst)
    ah = src.stages[0].blocks[0].attn.ah_bias.detach()  # [h, n, 56, 1]
    ref = torch.nn.functional.interpolate(ah.permute(0, 1, 3, 2).reshape(1, -1, 56), size=64,
                                          mode="linear", align_corners=False)
    torch.testing.assert_close(out["stages.0.blocks.0.attn.ah_bias"].reshape(1, -1, 64), ref)


def test_parity_model_rejects_unknown_reduced(parity_model):
    with pytest.raises(ValueError, match="reduced"):
        parity_model({"family": "agent", "variant": None, "official_model": "agent_pvt_tiny", "official_kwargs": {}})
