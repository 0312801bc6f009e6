"""Hybrids: NAT blocks in stages 1–2 and BiFormer blocks in stages 3–4, built from the registered names. The
contract every family keeps (any size, features, gradients, timm's model API) is
tests/models/test_family_contract.py."""

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.layers import (
    AttentionLePE,
    BiLevelRoutingAttention,
    ConvBNDownsample,
    ConvDownsampler,
    ConvTokenizer,
    NeighborhoodAttention2D,
)
from zoo.models.hybrid import HYBRIDS

# exact parameter counts (1000 classes); zoo designs, no paper figure
PARAMS = {"hybrid_nat_biformer_nano": 3_110_398, "hybrid_nat_biformer_tiny": 13_130_772}


def test_registered_names_and_no_weights():
    assert set(timm.list_models("hybrid_*")) == set(PARAMS) == set(HYBRIDS)
    assert timm.list_models("hybrid_*", pretrained=True) == []  # no url: nothing to download
    for name in PARAMS:
        with torch.device("meta"):
            m = timm.create_model(name)
        assert m.pretrained_cfg["url"] == "" and not m.pretrained_cfg.get("hf_hub_id")
        assert m.pretrained_cfg["first_conv"] == "stem.proj.0"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_and_layout(name):
    with torch.device("meta"):
        m = timm.create_model(name)
    assert sum(p.numel() for p in m.parameters()) == PARAMS[name]
    assert isinstance(m.stem, ConvTokenizer)
    assert isinstance(m.stages[1].downsample, ConvDownsampler)
    assert all(isinstance(s.downsample, ConvBNDownsample) for s in m.stages[2:])
    kinds = [{type(b.attn) for b in s.blocks} for s in m.stages]
    assert kinds == [{NeighborhoodAttention2D}, {NeighborhoodAttention2D}, {BiLevelRoutingAttention}, {AttentionLePE}]
    assert m.stages[2].blocks[0].attn.topk == 16 and m.stages[2].blocks[0].pos is not None
    assert m.stages[0].blocks[0].pos is None and m.stages[0].blocks[0].attn.kernel_size == 7
    assert m.no_weight_decay() == {n for n, _ in m.named_parameters() if n.endswith("attn.rpb")}
    assert len(m.no_weight_decay()) == sum(len(s.blocks) for s in m.stages[:2])
