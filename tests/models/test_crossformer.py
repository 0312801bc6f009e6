"""CrossFormer / CrossFormer++: variant table, attention semantics, converter. The contract every family keeps
(any size, features, gradients, timm's model API) is tests/models/test_family_contract.py.

Official parity (logits of the official code) is in tests/models/test_parity.py (cases crossformer_*).
"""

import re

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
import zoo.ops as ops
from zoo.models import Backbone
from zoo.models.crossformer import (
    VARIANTS,
    CrossFormerAttention,
    CrossFormerBlock,
    checkpoint_filter_fn,
    crossformer_cfg,
    crossformer_cfg_from_official,
)

# exact counts from the official definition (models/crossformer.py + configs/*_224.yaml, 1000 classes);
# paper / README figures in millions
PARAMS = {
    "crossformer_tiny": (27_776_794, 27.8),
    "crossformer_small": (30_657_394, 30.7),
    "crossformer_base": (51_971_554, 52.0),
    "crossformer_large": (91_971_184, 92.0),
    "crossformerpp_small": (23_325_340, 23.3),
    "crossformerpp_base": (51_994_594, 52.0),
    "crossformerpp_large": (92_001_904, 92.0),
    "crossformerpp_huge": (95_962_944, 96.0),
    "crossformer_nano": (5_079_601, None),
}


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_variant_param_counts(name):
    with torch.device("meta"):
        m = timm.create_model(name)
    exact, paper = PARAMS[name]
    n = _count(m)
    assert n == exact
    if paper is None:
        assert 2e6 <= n <= 6e6
    else:
        assert round(n / 1e6, 1) == paper
    assert set(timm.list_models("crossformer*")) == set(PARAMS)


def test_cooling_layer_placement():
    """CrossFormer++: ex_conv/ex_ln in blocks with (i + 1) % 3 == 0, except the last of a stage."""
    with torch.device("meta"):
        m = timm.create_model("crossformerpp_huge")  # depths 6, 6, 18, 2
        plain = timm.create_model("crossformer_base")
    found = {(s, b) for s, st in enumerate(m.stages) for b, bl in enumerate(st.blocks) if bl.ex_conv is not None}
    assert found == {(0, 2), (1, 2)} | {(2, i) for i in (2, 5, 8, 11, 14)}
    assert not any("ex_" in n for n, _ in plain.named_parameters())
    kinds = [blk.attn.long_distance for blk in m.stages[2].blocks[:4]]
    assert kinds == [False, True, False, True]  # SDA / LDA alternate
    assert [m.stages[i].blocks[0].attn.group_size for i in range(4)] == [4, 4, 14, 7]
    assert [m.stages[i].blocks[1].attn.interval[0] for i in range(4)] == [4, 2, 1, 1]


def test_cooling_replaces_the_map():
    torch.manual_seed(0)
    mixer = CrossFormerAttention(16, 2, group_size=2)
    blk = CrossFormerBlock(16, mixer, cooling=True).eval()
    x = torch.randn(1, 5, 6, 16)
    with torch.no_grad():
        plain = x + blk.attn(blk.norm1(x))
        plain = plain + blk.mlp(blk.norm2(plain))
        want = blk.ex_ln(blk.ex_conv(plain.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        torch.testing.assert_close(blk(x), want)


def _naive_attention(attn: CrossFormerAttention, x: torch.Tensor) -> torch.Tensor:
    """Official semantics, one query at a time: keys are the real pixels of the query's group."""
    B, H, W, C = x.shape
    G, step = attn.group_size, attn.interval[0]
    mode, g = ("window", min(H, W)) if min(H, W) <= G else ("dilated" if attn.long_distance else "window", G)

    def group_and_pos(y, xx):
        if mode == "window":
            return (y // g, xx // g), (y % g, xx % g)
        R = g * step
        ry, rx = y % R, xx % R
        return (y // R, xx // R, ry % step, rx % step), (ry // step, rx // step)

    heads, d = attn.num_heads, attn.dim_head
    qkv = attn.qkv(x).reshape(B, H * W, 3, heads, d)
    q, k, v = qkv.unbind(2)
    info = [group_and_pos(y, xx) for y in range(H) for xx in range(W)]
    out = torch.zeros(B, H * W, heads, d, dtype=x.dtype)
    for i, (gi, pi) in enumerate(info):
        keys = [j for j, (gj, _) in enumerate(info) if gj == gi]
        offs = torch.tensor([[pi[0] - info[j][1][0], pi[1] - info[j][1][1]] for j in keys], dtype=x.dtype)
        bias = attn.pos.mlp(offs).T  # [heads, n]
        logits = torch.einsum("bhd,bnhd->bhn", q[:, i], k[:, keys]) * attn.scale + bias
        out[:, i] = torch.einsum("bhn,bnhd->bhd", logits.softmax(-1), v[:, keys])
    return attn.proj(out.reshape(B, H * W, heads * d)).reshape(B, H, W, C)


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize(
    "long_distance, hw",
    [(False, (7, 9)), (True, (9, 11)), (True, (13, 6)), (True, (3, 5))],  # padded maps; (3, 5): fallback
)
def test_attention_matches_naive_official_semantics(long_distance, hw, backend):
    torch.manual_seed(0)
    attn = CrossFormerAttention(32, 2, group_size=3, interval=2, long_distance=long_distance).double()
    x = torch.randn(2, *hw, 32, dtype=torch.float64)
    with torch.no_grad(), ops.use_backend(backend):
        got = attn(x)
        want = _naive_attention(attn, x)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)


def test_pretrained_cfg_and_no_weight_decay():
    with torch.device("meta"):
        m = timm.create_model("crossformerpp_small")
    cfg = m.pretrained_cfg
    assert cfg["first_conv"][0] == "stem.projs.0" and cfg["license"] == "mit"
    assert cfg["url"].startswith("https://pan.baidu.com/")
    # the official recipe decays the 2-D DPB weights (only 1-D params and biases are exempt)
    assert m.no_weight_decay() == set()


def test_bad_arguments():
    with pytest.raises(ValueError, match="does not divide"):
        CrossFormerAttention(48, 5)
    with pytest.raises(ValueError, match="dim >= 16"):
        CrossFormerAttention(8, 2)
    with pytest.raises(ValueError, match="one per stage"):
        crossformer_cfg(32, (1, 1, 1, 1), (1, 2, 4, 8), group_size=(7, 7))
    with pytest.raises(ValueError, match="ape=True is not supported"):
        crossformer_cfg_from_official(dict(embed_dim=32, ape=True))


# ------------------------------------------------------------------------------------------------ converter
def _to_official(zoo_sd: dict) -> dict:
    """Zoo layout -> the official layout (inverse of the converter's key map), plus the release-only buffers."""
    out = {}
    for k, v in zoo_sd.items():
        k2 = k.replace("stem.", "patch_embed.", 1).replace("head.fc.", "head.", 1)
        m = re.match(r"stages\.(\d+)\.downsample\.(.*)", k2)
        if m:
            k2 = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        k2 = re.sub(r"^stages\.(\d+)\.blocks\.", r"layers.\1.blocks.", k2)
        out[k2] = v
        if k2.endswith("attn.qkv.weight"):
            pre = k2[: -len("qkv.weight")]
            out[pre + "biases"] = torch.zeros(169, 2)
            out[pre + "relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    return out


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return timm.create_model("crossformer_nano").eval()


@pytest.mark.parametrize("wrap", [None, "model", "state_dict_ema", "state_dict"])
def test_converter_round_trip(nano, wrap):
    official = _to_official(nano.state_dict())
    assert "layers.0.downsample.reductions.0.weight" in official and "head.weight" in official
    sd = official if wrap is None else {wrap: official, "epoch": 3}
    out = checkpoint_filter_fn(sd, nano)
    assert set(out) == set(nano.state_dict())
    for k, v in nano.state_dict().items():
        assert out[k] is v or torch.equal(out[k], v)
    assert checkpoint_filter_fn(out, nano).keys() == out.keys()  # zoo layout passes through


def test_converter_through_timm_pretrained(nano, tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": _to_official(nano.state_dict())}, path)
    m = timm.create_model(
        "crossformer_nano", pretrained=True, num_classes=5, pretrained_cfg_overlay=dict(file=str(path))
    )
    torch.testing.assert_close(m.stem.projs[3].weight, nano.stem.projs[3].weight)
    torch.testing.assert_close(m.stages[3].downsample.norm.weight, nano.stages[3].downsample.norm.weight)
    assert m.head.fc.weight.shape == (5, 384)


def test_converter_errors(nano):
    official = _to_official(nano.state_dict())
    biformer_like = {"downsample_layers.0.0.weight": torch.zeros(1), "stages.0.0.attn.router.emb": torch.zeros(1)}
    with pytest.raises(ValueError, match="not a CrossFormer checkpoint.*'biformer'"):
        checkpoint_filter_fn(biformer_like)
    with pytest.raises(ValueError, match="not a CrossFormer checkpoint.*'maxvit'"):
        checkpoint_filter_fn({"stem.conv1.weight": torch.zeros(1), "stages.0.blocks.0.conv.x": torch.zeros(1)})
    extra = dict(official)
    extra.update({"layers.0.blocks.0.attn.foo.weight": torch.zeros(1), "absolute_pos_embed": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"2 official keys have no mapping.*attn\.foo\.weight.*absolute_pos_embed"):
        checkpoint_filter_fn(extra, nano)
    missing = {k: v for k, v in official.items() if k != "layers.2.blocks.3.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"nothing mapped to: \['stages\.2\.blocks\.3\.mlp\.fc2\.bias'\]"):
        checkpoint_filter_fn(missing, nano)
    with torch.device("meta"):
        pp = Backbone(crossformer_cfg(**dict(VARIANTS["crossformer_nano"], cooling=True)))
        tiny = timm.create_model("crossformer_tiny")
    with pytest.raises(ValueError, match=r"nothing mapped to: \['stages\.2\.blocks\.2\.ex_conv\.weight'"):
        checkpoint_filter_fn(official, pp)  # a CrossFormer checkpoint into a CrossFormer++ model
    with pytest.raises(ValueError, match=r"shape mismatches: \['stem\.projs\.0\.weight: checkpoint \(24, 3, 4, 4\)"):
        checkpoint_filter_fn(official, tiny)
