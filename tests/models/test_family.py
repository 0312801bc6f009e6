"""The family spec (zoo/models/_family.py): one registry of families, their markers, default cfgs, variant
entrypoints and the tag-to-image-size rule."""

from __future__ import annotations

import pytest
import timm
from timm.models import model_entrypoint

import zoo  # noqa: F401  (registers the families)
from zoo.models._family import FAMILIES, Family, guess_family, tag_input_size


def test_every_family_module_registers_one_spec():
    assert set(FAMILIES) == {"agent", "biformer", "crossformer", "hybrid", "maxvit", "nat"}
    for name in zoo.list_models():
        module = model_entrypoint(name).__module__
        assert module.rsplit(".", 1)[-1] in FAMILIES, (name, module)


def test_entrypoints_are_module_attributes_with_the_variant_docstring():
    from zoo.models import biformer

    fn = model_entrypoint("biformer_tiny")
    assert fn is biformer.biformer_tiny
    assert fn.__name__ == "biformer_tiny" and fn.__module__ == "zoo.models.biformer"
    assert fn.__doc__.startswith("BiFormer-T (13.1 M)")
    assert "biformer_tiny" in biformer.__all__


def test_tag_cfg_follows_the_size():
    fam = FAMILIES["agent"]
    at224, at384 = fam.tag_cfg("u"), fam.tag_cfg("u", size=384)
    assert at224["crop_pct"] == 0.875 and at384["crop_pct"] == 1.0
    assert at384["input_size"] == (3, 384, 384) and at384["pool_size"] == (12, 12)
    assert at224["license"] == "unknown" and at224["url"] == "u"
    assert FAMILIES["maxvit"].tag_cfg()["crop_pct"] == 0.95
    assert timm.get_pretrained_cfg("dinat_large_384.official_in22k_ft_in1k").input_size == (3, 384, 384)


def test_a_family_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        Family("nat", "something else")


def test_guess_family_from_markers():
    assert guess_family(["levels.0.blocks.0.attn.rpb"]) == "nat"
    assert guess_family(["downsample_layers.0.0.weight"]) == "biformer"
    assert guess_family(["stem.conv1.weight"]) == "maxvit"
    assert guess_family(["patch_embed.projs.0.weight"]) == "crossformer"
    assert guess_family(["layers.0.blocks.0.attn.an_bias"]) == "agent"
    assert guess_family(["levels.0.blocks.0.attn.rpb"], exclude="nat") is None
    assert guess_family(["foo.bar"]) is None


def test_not_a_checkpoint_names_the_family_the_keys_look_like():
    err = FAMILIES["biformer"].not_a_checkpoint(["levels.0.blocks.0.attn.rpb"], "no 'downsample_layers.0.*' keys")
    assert "not a BiFormer checkpoint" in str(err) and "looks like a 'nat' checkpoint" in str(err)
    assert str(FAMILIES["nat"].not_a_checkpoint(["x"], "none")).endswith(".")


def test_tag_input_size():
    assert tag_input_size("agent_swin_s", {}) == (224, 224)
    assert tag_input_size("agent_swin_s", {"pretrained_cfg": "official_in1k_288"}) == (288, 288)
    assert tag_input_size("agent_swin_s", {"img_size": 160, "pretrained_cfg": "official_in1k_288"}) == (160, 160)
    assert tag_input_size("maxvit_tiny", {"pretrained_cfg": "tf_in1k_384"}) == (384, 384)
    assert tag_input_size("maxvit_tiny", {"pretrained_cfg_overlay": {"input_size": (3, 256, 320)}}) == (256, 320)
    assert tag_input_size("agent_swin_s", {"pretrained_cfg": {"input_size": (3, 256, 256)}}) == (256, 256)
