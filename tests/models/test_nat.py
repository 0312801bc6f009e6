"""NAT / DiNAT / DiNAT_s: variant table, dilation schedules, converter. The contract every family keeps (any size,
features, gradients, timm's model API) is tests/models/test_family_contract.py.

Official parity (logits of the official code) is in tests/models/test_parity.py (cases nat_mini, dinat_mini,
nat_reduced).
"""

import re

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.models import Backbone
from zoo.models.nat import VARIANTS, checkpoint_filter_fn, nat_cfg, nat_cfg_from_official

# exact counts from the official definitions (classification/nat.py, dinat.py, dinats.py; 1000 classes);
# README / paper figures in millions (None: zoo addition)
PARAMS = {
    "nat_nano": (3_072_230, None),
    "nat_mini": (19_984_174, 20),
    "nat_tiny": (27_901_582, 28),
    "nat_small": (50_743_297, 51),
    "nat_base": (89_769_652, 90),
    "dinat_nano": (3_072_230, None),
    "dinat_mini": (19_984_174, 20),
    "dinat_tiny": (27_901_582, 28),
    "dinat_small": (50_719_681, 51),
    "dinat_base": (89_769_652, 90),
    "dinat_large": (200_943_514, 200),
    "dinat_large_384": (200_943_514, 200),
    "dinat_large_11x11": (201_144_250, 201),  # README repeats 200 M, the 7x7 figure; 11x11 RPB adds 0.2 M
    "dinat_s_tiny": (28_288_354, 28),
    "dinat_s_small": (49_606_258, 50),
    "dinat_s_base": (87_768_224, 88),
    "dinat_s_large": (196_532_476, 197),
    "dinat_s_large_384": (196_532_476, 197),
}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_registered_names():
    assert set(timm.list_models("nat_*")) | set(timm.list_models("dinat_*")) == set(PARAMS) == set(VARIANTS)


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
        assert abs(n / 1e6 - paper) < 1.0  # README figures are rounded (DiNAT-L: 200.9 M listed as 200 M)


def test_dilations_layer_scale_and_layout():
    with torch.device("meta"):
        dinat = timm.create_model("dinat_base")
        dinat_s = timm.create_model("dinat_s_tiny")
        nat = timm.create_model("nat_mini")
    dil = [[b.attn.dilation for b in s.blocks] for s in dinat.stages]
    assert dil == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert [[b.attn.dilation for b in s.blocks] for s in dinat_s.stages] == [[1, 8], [1, 4], [1, 2] * 3, [1, 1]]
    assert all(b.attn.dilation == 1 and b.attn.kernel_size == 7 for s in nat.stages for b in s.blocks)
    assert "stages.0.blocks.0.ls1.gamma" in dict(dinat.named_parameters())
    assert not any(".ls" in n for n, _ in nat.named_parameters())
    assert type(dinat_s.stem).__name__ == "PatchEmbed" and type(dinat_s.stages[1].downsample).__name__ == "PatchMerging"
    assert type(nat.stem).__name__ == "ConvTokenizer" and type(nat.stages[1].downsample).__name__ == "ConvDownsampler"
    assert [s.blocks[0].attn.num_heads for s in dinat.stages] == [4, 8, 16, 32]


def test_layer_scale_block_semantics():
    torch.manual_seed(0)
    cfg = nat_cfg(16, (1, 1, 1, 1), (1, 2, 2, 4), mlp_ratio=2, kernel_size=3, layer_scale=0.5)
    blk = Backbone(cfg, num_classes=0).stages[0].blocks[0].eval()
    with torch.no_grad():
        blk.ls1.gamma.uniform_(0.5, 1.5)
        blk.ls2.gamma.uniform_(0.5, 1.5)
        x = torch.randn(1, 5, 6, 16)
        y = x + blk.ls1.gamma * blk.attn(blk.norm1(x))
        want = y + blk.ls2.gamma * blk.mlp(blk.norm2(y))
        torch.testing.assert_close(blk(x), want)


def test_dinat_s_odd_size_is_the_zero_padded_image():
    """DiNAT_s's patch embedding zero-pads the image to a multiple of its patch and the later maps are the same
    size either way, so an odd image gives the output of the image zero-padded by hand (a border of ones does
    not: the padding is not cropped away)."""
    torch.manual_seed(0)
    cfg = nat_cfg(16, (1, 2, 2, 1), (1, 2, 2, 4), kernel_size=3, dilations=([1], [1, 2], [1, 2], [1]),
                  swin_like=True)
    m = Backbone(cfg, num_classes=3).eval()
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        out = m.forward_features(x)
        padded = m.forward_features(torch.nn.functional.pad(x, (0, 2, 0, 3)))
        bordered = m.forward_features(torch.nn.functional.pad(x, (0, 2, 0, 3), value=1.0))
    assert out.shape == (1, 2, 3, 128)  # 45x70 -> 12x18 -> 6x9 -> 3x5 -> 2x3
    torch.testing.assert_close(out, padded, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, bordered, rtol=1e-5, atol=1e-5)


def test_pretrained_cfg_and_no_weight_decay():
    with torch.device("meta"):
        m = timm.create_model("dinat_mini")
        s = timm.create_model("dinat_s_tiny")
    cfg = m.pretrained_cfg
    assert cfg["first_conv"] == "stem.proj.0" and cfg["license"] == "mit"
    assert cfg["url"].endswith("/dinat_mini_in1k_224.pth")
    assert s.pretrained_cfg["first_conv"] == "stem.proj"
    nwd = m.no_weight_decay()
    assert len(nwd) == 18 and all(n.endswith("attn.rpb") for n in nwd)  # official keyword "rpb"


def test_bad_arguments():
    with pytest.raises(ValueError, match="one per stage"):
        nat_cfg(32, (1, 1, 1, 1), (1, 2, 4))
    with pytest.raises(ValueError, match="one value per block"):
        nat_cfg(32, (1, 2, 1, 1), (1, 2, 4, 8), dilations=([1], [1], [1], [1]))
    with pytest.raises(ValueError, match="unknown official constructor arguments"):
        nat_cfg_from_official(dict(embed_dim=32, depths=(1,), num_heads=(1,), not_an_arg=1))
    with pytest.raises(ValueError, match="does not divide"):
        Backbone(nat_cfg(30, (1, 1, 1, 1), (4, 4, 4, 4)))


# ------------------------------------------------------------------------------------------------ converter
def _to_official(zoo_sd: dict, swin_like: bool = False) -> dict:
    """Zoo layout -> the official layout (inverse of the converter's key map)."""
    level = "layers" if swin_like else "levels"
    out = {}
    for k, v in zoo_sd.items():
        k2 = k.replace("stem.", "patch_embed.", 1).replace("head.fc.", "head.", 1)
        m = re.match(r"stages\.(\d+)\.downsample\.(.*)", k2)
        if m:
            k2 = f"{level}.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        k2 = re.sub(r"^stages\.(\d+)\.blocks\.", rf"{level}.\1.blocks.", k2)
        k2 = re.sub(r"\.ls([12])\.gamma$", r".gamma\1", k2)
        out[k2] = v
    return out


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    kw = dict(mlp_ratio=2, kernel_size=3, layer_scale=1e-5)
    nat = Backbone(nat_cfg(16, (1, 2, 1, 1), (1, 2, 2, 4), **kw), num_classes=5).eval()
    ds = Backbone(nat_cfg(16, (1, 2, 1, 1), (1, 2, 2, 4), mlp_ratio=2, kernel_size=3, swin_like=True),
                  num_classes=5).eval()
    return nat, ds


@pytest.mark.parametrize("wrap", [None, "model", "state_dict_ema", "state_dict"])
@pytest.mark.parametrize("swin_like", [False, True])
def test_converter_round_trip(tiny_models, wrap, swin_like):
    model = tiny_models[swin_like]
    official = _to_official(model.state_dict(), swin_like)
    level = "layers" if swin_like else "levels"
    assert f"{level}.0.downsample.reduction.weight" in official and "head.weight" in official
    assert swin_like or "levels.0.blocks.0.gamma1" in official
    sd = official if wrap is None else {wrap: official, "epoch": 3}
    out = checkpoint_filter_fn(sd, model)
    assert set(out) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert out[k] is v or torch.equal(out[k], v)
    # already-zoo layout passes through
    assert set(checkpoint_filter_fn(model.state_dict(), model)) == set(model.state_dict())


def test_converter_errors(tiny_models):
    nat, ds = tiny_models
    official = _to_official(nat.state_dict())
    with pytest.raises(ValueError, match="crossformer"):
        checkpoint_filter_fn({"patch_embed.projs.0.weight": torch.zeros(1), "layers.0.blocks.0.attn.qkv.weight": 0})
    with pytest.raises(ValueError, match="not a NAT/DiNAT checkpoint"):
        checkpoint_filter_fn({"foo.weight": torch.zeros(1)})
    bad = dict(official, **{"levels.0.blocks.0.attn.relative_position_bias_table": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"no mapping.*relative_position_bias_table"):
        checkpoint_filter_fn(bad, nat)
    missing = {k: v for k, v in official.items() if k != "levels.1.blocks.1.gamma2"}
    with pytest.raises(ValueError, match=r"nothing mapped to.*stages\.1\.blocks\.1\.ls2\.gamma"):
        checkpoint_filter_fn(missing, nat)
    with pytest.raises(ValueError, match=r"does not have.*ls1\.gamma"):  # layer-scale checkpoint, plain model
        checkpoint_filter_fn(_to_official(nat.state_dict(), True), ds)
    wide = dict(official, **{"norm.weight": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"shape mismatches.*norm\.weight"):
        checkpoint_filter_fn(wide, nat)


def test_converter_resizes_rpb(tiny_models):
    nat, _ = tiny_models
    big = Backbone(nat_cfg(16, (1, 2, 1, 1), (1, 2, 2, 4), mlp_ratio=2, kernel_size=5, layer_scale=1e-5),
                   num_classes=5)
    out = checkpoint_filter_fn(_to_official(nat.state_dict()), big)
    assert out["stages.0.blocks.0.attn.rpb"].shape == (1, 9, 9)
    big.load_state_dict(out, strict=True)
