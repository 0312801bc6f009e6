"""Edges of the model API: the edges of the valid constructor arguments, and where a NaN that the model itself
produced is reported. An empty batch and the arguments no model can work with are in the family contract
(tests/models/test_family_contract.py), for every family."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.ops._checks import NonFiniteError


def test_construction_accepts_the_edges_of_the_valid_ranges():
    model = timm.create_model("nat_nano", in_chans=1, num_classes=0, drop_path_rate=0.0)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, model.num_features)
    timm.create_model("nat_nano", drop_path_rate=0.99, drop_rate=0.5)


def test_nan_from_the_weights_names_the_layer_and_the_weights():
    model = timm.create_model("nat_nano", num_classes=3).eval()
    with torch.no_grad():
        model.stages[1].blocks[0].attn.qkv.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        model(torch.randn(1, 3, 32, 32))
    text = str(info.value)
    assert "layer 'stages.1.blocks.0.attn' (NeighborhoodAttention2D)" in text
    assert "not from the data" in text and "weights hold NaN/Inf (stages.1.blocks.0.attn.qkv.weight)" in text
    assert "learning rate" in text
    with pytest.raises(NonFiniteError, match="stages.1.blocks.0.attn"):  # the features path says the same
        model.forward_intermediates(torch.randn(1, 3, 32, 32))


def test_nan_from_an_overflow_names_the_layer_and_the_large_weights():
    """Finite weights, too large for float32 (a bad init/scale setting): the causes are the overflow ones."""
    model = timm.create_model("biformer_nano", num_classes=3).eval()
    with torch.no_grad():
        model.stages[2].blocks[1].attn.qkv.weight.mul_(1e37)
    with pytest.raises(NonFiniteError) as info:
        model(torch.randn(1, 3, 32, 32))
    text = str(info.value)
    assert "layer 'stages.2.blocks." in text and "(BiLevelRoutingAttention)" in text
    assert "the weights are finite, so a value overflowed" in text
    assert "in stages.2.blocks.1.attn.qkv.weight" in text and "float16" in text
