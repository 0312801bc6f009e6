"""BiFormer: variant table, block layout, official-kwargs config, converter. The contract every family keeps (any
size, features, gradients, timm's model API) is tests/models/test_family_contract.py.

Official parity (logits of the official code) is in tests/models/test_parity.py (cases biformer_tiny,
biformer_reduced).
"""

import re

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.layers import AttentionLePE, BiLevelRoutingAttention, ConvBNDownsample, ConvBNStem, DWConvPos
from zoo.models import Backbone
from zoo.models.biformer import VARIANTS, biformer_cfg, biformer_cfg_from_official, checkpoint_filter_fn

# exact counts from the official definitions (models/biformer.py biformer_{tiny,small,base}, 1000 classes; the
# tiny figure is also the biformer_tiny parity case's num_params); README figures in millions (None: zoo addition)
PARAMS = {
    "biformer_nano": (2_776_424, None),
    "biformer_tiny": (13_142_760, 13.1),
    "biformer_small": (25_536_232, 25.5),
    "biformer_base": (56_804_968, 56.8),
}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_registered_names():
    assert set(timm.list_models("biformer_*")) == set(PARAMS) == set(VARIANTS)
    tagged = {f"biformer_{s}.official_in1k" for s in ("tiny", "small", "base")}
    assert set(timm.list_models("biformer_*", pretrained=True)) == tagged


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


def test_layout():
    with torch.device("meta"):
        m = timm.create_model("biformer_small")
    assert isinstance(m.stem, ConvBNStem) and all(isinstance(s.downsample, ConvBNDownsample) for s in m.stages[1:])
    attn = [[b.attn for b in s.blocks] for s in m.stages]
    assert [len(a) for a in attn] == [4, 4, 18, 4]
    for stage, topk, heads in zip(attn[:3], (1, 4, 16), (2, 4, 8)):
        for a in stage:
            assert type(a) is BiLevelRoutingAttention and a.topk == topk and a.n_win == (7, 7)
            assert a.num_heads == heads and a.qk_dim == a.dim and a.scale == a.qk_dim**-0.5
            assert a.lepe.kernel_size == (5, 5)
    assert all(type(a) is AttentionLePE and a.num_heads == 8 and a.dense for a in attn[3])
    blk = m.stages[0].blocks[0]
    assert isinstance(blk.pos, DWConvPos) and blk.pos.kernel_size == (3, 3)
    assert blk.norm1.eps == 1e-6 and blk.mlp.fc1.out_features == 3 * 64
    assert type(m.norm).__name__ == "ChannelsLastBatchNorm"
    # stochastic depth grows linearly to the variant's rate over all 30 blocks
    assert m.stages[3].blocks[3].drop_path1.drop_prob == pytest.approx(0.15)
    assert m.no_weight_decay() == set()  # official no_weight_decay() names match no parameter (see biformer_cfg)


@pytest.mark.parametrize("topk", [-1, -2])
def test_dense_stage_options(topk):
    cfg = biformer_cfg((1, 1, 1, 1), (32, 32, 64, 64), topks=(2, 4, 4, topk), head_dim=16)
    m = Backbone(cfg, num_classes=0)
    a = m.stages[3].blocks[0].attn
    assert a.dense and a.num_heads == 8 and a.qkv.bias is None and hasattr(a, "proj")
    assert (a.lepe is None) == (topk == -1)


def test_pretrained_cfg():
    with torch.device("meta"):
        m = timm.create_model("biformer_tiny")
    cfg = m.pretrained_cfg
    assert cfg["tag"] == "official_in1k" and cfg["license"] == "mit"
    assert cfg["url"].startswith("https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHEOoGkgwgQzEDlM")
    assert cfg["first_conv"] == "stem.0"
    assert dict(m.named_parameters())["stem.0.weight"].shape == (32, 3, 3, 3)


def test_cfg_from_official_and_bad_arguments():
    cfg, kw = biformer_cfg_from_official(
        dict(depth=[1, 1, 1, 1], embed_dim=[32, 48, 64, 64], qk_dims=[32, 48, 64, 64], head_dim=16,
             topks=[2, 4, 8, -2], mlp_ratios=[3, 3, 3, 3], kv_downsample_mode="identity",
             kv_per_wins=[-1, -1, -1, -1], layer_scale_init_value=1e-5, num_classes=10)
    )
    assert kw == dict(num_classes=10, in_chans=3)
    assert [s.block_kwargs["num_heads"] for s in cfg.stages] == [2, 3, 4, 8]
    assert all(s.block_kwargs["layer_scale"] == 1e-5 for s in cfg.stages)
    with pytest.raises(ValueError, match="kv_downsample_mode='ada_avgpool' is not supported"):
        biformer_cfg_from_official(dict(kv_downsample_mode="ada_avgpool"))
    with pytest.raises(ValueError, match="unknown official constructor arguments"):
        biformer_cfg_from_official(dict(not_an_arg=1))
    with pytest.raises(ValueError, match="one per stage"):
        biformer_cfg((1, 1, 1, 1), (32, 64, 128))
    with pytest.raises(ValueError, match="multiple of head_dim"):
        biformer_cfg((1, 1, 1, 1), (32, 48, 64, 64), head_dim=32)
    with pytest.raises(ValueError, match="topk must be"):
        Backbone(biformer_cfg((1, 1, 1, 1), (32, 64, 128, 256), topks=(1, 4, 0, -2)))


# ------------------------------------------------------------------------------------------------ converter
def _to_official(zoo_sd: dict) -> dict:
    """Zoo layout -> the official layout (inverse of the converter's key map)."""
    out = {}
    for k, v in zoo_sd.items():
        m = re.match(r"^(stages\.\d+\.blocks\.\d+\.attn)\.qkv\.", k)
        if m and f"{m.group(1)}.wo.weight" in zoo_sd:  # routed attention: the official QKVLinear wraps the Linear
            k = k.replace(".attn.qkv.", ".attn.qkv.qkv.")
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = k.replace(".pos.", ".pos_embed.").replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.3.")
        out[re.sub(r"\.ls([12])\.gamma$", r".gamma\1", k).replace("head.fc.", "head.")] = v
    return out


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = biformer_cfg((1, 2, 1, 1), (16, 32, 32, 64), topks=(2, 4, 4, -2), head_dim=16, layer_scale=1e-5)
    return Backbone(cfg, num_classes=5).eval()


@pytest.mark.parametrize("wrap", [None, "model", "state_dict_ema", "state_dict"])
def test_converter_round_trip(tiny_model, wrap):
    official = _to_official(tiny_model.state_dict())
    for k in ("downsample_layers.0.4.running_var", "downsample_layers.1.0.weight", "stages.1.1.pos_embed.weight",
              "stages.0.0.attn.qkv.qkv.weight", "stages.3.0.attn.qkv.weight", "stages.0.0.mlp.3.bias",
              "stages.0.0.gamma2", "norm.num_batches_tracked", "head.weight"):
        assert k in official
    sd = official if wrap is None else {wrap: official, "epoch": 3}
    out = checkpoint_filter_fn(sd, tiny_model)
    assert set(out) == set(tiny_model.state_dict())
    for k, v in tiny_model.state_dict().items():
        assert out[k] is v or torch.equal(out[k], v)
    assert set(checkpoint_filter_fn(tiny_model.state_dict(), tiny_model)) == set(tiny_model.state_dict())


def test_converter_errors(tiny_model):
    official = _to_official(tiny_model.state_dict())
    with pytest.raises(ValueError, match="'nat' checkpoint"):
        checkpoint_filter_fn({"levels.0.blocks.0.attn.rpb": torch.zeros(1), "patch_embed.proj.0.weight": 0})
    with pytest.raises(ValueError, match="not a BiFormer checkpoint"):
        checkpoint_filter_fn({"foo.weight": torch.zeros(1)})
    bad = dict(official, **{"stages.0.0.attn.router.emb.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"no mapping.*attn\.router\.emb\.weight"):
        checkpoint_filter_fn(bad, tiny_model)
    missing = {k: v for k, v in official.items() if k != "stages.1.1.gamma2"}
    with pytest.raises(ValueError, match=r"nothing mapped to.*stages\.1\.blocks\.1\.ls2\.gamma"):
        checkpoint_filter_fn(missing, tiny_model)
    wide = dict(official, **{"norm.weight": torch.zeros(7)})
    with pytest.raises(ValueError, match=r"shape mismatches.*norm\.weight"):
        checkpoint_filter_fn(wide, tiny_model)
