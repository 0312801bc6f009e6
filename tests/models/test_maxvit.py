"""MaxViT family: variant table, img_size → window, converter (incl. table resize). The contract every family
keeps (any size, features, gradients, timm's model API) is tests/models/test_family_contract.py."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.models.maxvit import MaxViT, checkpoint_filter_fn, maxvit_cfg, maxvit_cfg_from_official

# exact counts (1000 classes) = timm's maxvit_{v}_tf_224 (the official TF port config); MaxViT paper Table (M)
PARAMS = {
    "maxvit_nano": (4_493_874, None),
    "maxvit_tiny": (30_916_528, 31),
    "maxvit_small": (68_927_956, 69),
    "maxvit_base": (119_467_708, 120),
    "maxvit_large": (211_785_560, 212),
    "maxvit_xlarge": (474_951_952, 475),
}


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_variant_param_counts(name):
    exact, paper = PARAMS[name]
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=1000)
    assert _n(model) == exact
    if paper is not None:  # the paper rounds (B: 119.47 M given as 120 M)
        assert abs(exact / 1e6 - paper) < 0.6
    else:
        assert 2e6 <= exact <= 6e6


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_layout_matches_timm_tf_port(size):
    """Same keys, order and shapes as timm's maxvit_*_tf_224 (so hub weights load through the converter)."""
    with torch.device("meta"):
        ref = timm.create_model(f"maxvit_{size}_tf_224").state_dict()
        ours = timm.create_model(f"maxvit_{size}").state_dict()
    assert list(ref) == list(ours)
    assert all(ref[k].shape == ours[k].shape for k in ref)


def test_timm_names_not_shadowed_and_default_classes():
    assert "maxvit_tiny_tf_224" in timm.list_models("maxvit_tiny_tf_*")
    assert timm.models.model_entrypoint("maxvit_tiny_tf_224").__module__ == "timm.models.maxxvit"
    assert set(zoo.list_models("maxvit*")) == set(PARAMS)
    with torch.device("meta"):
        assert timm.create_model("maxvit_xlarge").num_classes == 21843  # its only 224 px tag is in21k
        assert timm.create_model("maxvit_base").num_classes == 1000


def test_img_size_sets_window_and_grid():
    with torch.device("meta"):
        m224 = timm.create_model("maxvit_nano")
        m384 = timm.create_model("maxvit_tiny.tf_in1k_384")  # the tag's resolution decides the window
        mrect = timm.create_model("maxvit_nano", img_size=(256, 320))
    blk = m224.stages[2].blocks[0]
    assert blk.attn_block.attn.size == (7, 7) and blk.attn_grid.attn.size == (7, 7)
    assert blk.attn_block.attn.rel_pos.relative_position_bias_table.shape == (4, 13, 13)  # 128 / 32 heads
    assert m384.stages[0].blocks[0].attn_grid.attn.rel_pos.window_size == (12, 12)
    assert m384.img_size == (384, 384)
    assert mrect.stages[3].blocks[0].attn_block.attn.size == (8, 10)
    with pytest.raises(ValueError, match="img_size"):
        timm.create_model("maxvit_nano", img_size=16)


def test_pretrained_cfgs():
    cfg = timm.get_pretrained_cfg("maxvit_tiny.tf_in1k")
    assert cfg.hf_hub_id == "timm/maxvit_tiny_tf_224.in1k"
    assert cfg.input_size == (3, 224, 224) and cfg.pool_size == (7, 7) and cfg.crop_pct == 0.95
    cfg = timm.get_pretrained_cfg("maxvit_large.tf_in21k_ft_in1k_512")
    assert cfg.hf_hub_id == "timm/maxvit_large_tf_512.in21k_ft_in1k"
    assert cfg.pool_size == (16, 16) and cfg.mean == (0.5, 0.5, 0.5) and cfg.crop_mode == "squash"
    assert timm.get_pretrained_cfg("maxvit_base.tf_in21k").num_classes == 21843


def test_no_weight_decay_is_the_relative_position_tables():
    with torch.device("meta"):
        model = timm.create_model("maxvit_nano")
    nwd = model.no_weight_decay()
    assert nwd and all(n.endswith("relative_position_bias_table") for n in nwd)
    assert len(nwd) == 2 * sum(s.depth for s in model.cfg.stages)  # block and grid attention of every block


# ---------------------------------------------------------------------------------------------- converter
_REDUCED = dict(embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1), stem_width=32, head_hidden_size=32,
                transformer_dim_head=16, num_classes=4)


def _official_and_zoo(img_official: int, img_zoo: int):
    torch.manual_seed(0)
    ref = timm.create_model("maxvit_tiny_tf_224", img_size=img_official, **_REDUCED).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    cfg, kw = maxvit_cfg_from_official(dict(_REDUCED, img_size=img_zoo))
    return ref, MaxViT(cfg, **kw).eval()


def test_converter_roundtrip_and_wrappers():
    ref, model = _official_and_zoo(64, 64)
    sd = ref.state_dict()
    for wrapped in (sd, {"model": sd}, {"state_dict_ema": sd}, {"state_dict": sd}):
        model.load_state_dict(checkpoint_filter_fn(wrapped, model), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    # exports without BatchNorm step counters still load strictly
    no_nbt = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(checkpoint_filter_fn(no_nbt, model), strict=True)


def test_converter_resizes_tables_like_timm():
    """224-style weights (window 2 at 64 px) into a 96 px model (window 3): tables resized as timm's own
    checkpoint_filter_fn does, so both models give the same logits."""
    src, _ = _official_and_zoo(64, 64)
    ref96, model96 = _official_and_zoo(96, 96)
    from timm.models.maxxvit import checkpoint_filter_fn as timm_filter

    ref96.load_state_dict(timm_filter(src.state_dict(), ref96), strict=True)
    zoo_sd = checkpoint_filter_fn(src.state_dict(), model96)
    key = "stages.0.blocks.0.attn_grid.attn.rel_pos.relative_position_bias_table"
    assert zoo_sd[key].shape == (2, 5, 5)
    model96.load_state_dict(zoo_sd, strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model96(x), ref96(x), rtol=1e-5, atol=1e-5)


def test_converter_errors():
    ref, model = _official_and_zoo(64, 64)
    sd = ref.state_dict()
    with pytest.raises(ValueError, match="'crossformer' checkpoint"):
        checkpoint_filter_fn({"patch_embed.projs.0.weight": torch.zeros(1), "layers.0.blocks.0.norm1.weight": 0})
    with pytest.raises(ValueError, match="'nat' checkpoint"):
        checkpoint_filter_fn({"patch_embed.proj.0.weight": torch.zeros(1), "levels.0.blocks.0.norm1.weight": 0})
    bad = dict(sd, **{"stages.0.blocks.0.conv.bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"no mapping.*stages\.0\.blocks\.0\.conv\.bogus\.weight"):
        checkpoint_filter_fn(bad)
    missing = {k: v for k, v in sd.items() if not k.startswith("stages.3.blocks.0.attn_grid.mlp.fc2")}
    with pytest.raises(ValueError, match=r"nothing mapped to.*stages\.3\.blocks\.0\.attn_grid\.mlp\.fc2\.weight"):
        checkpoint_filter_fn(missing, model)
    extra = dict(sd, **{"stages.0.blocks.1.attn_grid.norm1.weight": torch.zeros(32)})
    with pytest.raises(ValueError, match=r"does not have.*stages\.0\.blocks\.1\.attn_grid\.norm1\.weight"):
        checkpoint_filter_fn(extra, model)
    wrong = dict(sd, **{"stem.conv2.weight": torch.zeros(32, 32, 1, 1)})
    with pytest.raises(ValueError, match=r"shape mismatches.*stem\.conv2\.weight"):
        checkpoint_filter_fn(wrong, model)
    rw = dict(sd)
    rw["stages.0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table"] = torch.zeros(9, 2)
    with pytest.raises(ValueError, match="maxvit_\\*_rw"):
        checkpoint_filter_fn(rw, model)
    # head.fc with another class count is left to timm (which drops it)
    other_head = dict(sd, **{"head.fc.weight": torch.zeros(7, 32), "head.fc.bias": torch.zeros(7)})
    assert checkpoint_filter_fn(other_head, model)["head.fc.weight"].shape == (7, 32)


def test_official_kwargs_errors_and_classifier_head():
    with pytest.raises(ValueError, match="unsupported official kwargs.*transformer_rel_pos_type"):
        maxvit_cfg_from_official({"transformer_rel_pos_type": "mlp"})
    cfg = maxvit_cfg((32, 32, 32, 32), (1, 1, 1, 1), 32, head_hidden_size=None)
    model = MaxViT(cfg, num_classes=3)
    assert cfg.head == "classifier" and isinstance(model.norm, torch.nn.LayerNorm)
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 3)


def test_prune_head_drops_norm_mlp_layers():
    model = timm.create_model("maxvit_nano")
    model.prune_intermediate_layers([3], prune_norm=True)
    assert model.num_classes == 0 and model.head_hidden_size == 256
    assert not list(model.head.parameters())  # no pre-logits layer / head norm left unused
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 2, 256)  # unpooled, channels-last
