"""Edges of the model API: an empty batch, constructor arguments no model can work with, and where a NaN
that the model itself produced is reported."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the models)
from zoo.ops._checks import NonFiniteError

# every family's smallest model (Agent-PVT and Agent-DeiT have no nano: their tiny at 64 px) and the hybrid
EVERY_FAMILY = {
    "maxvit_nano": {},
    "crossformer_nano": {},
    "nat_nano": {},
    "dinat_nano": {},
    "biformer_nano": {},
    "agent_swin_nano": {},
    "agent_pvt_t": {"img_size": 64},
    "agent_deit_t": {"img_size": 64},
    "hybrid_nat_biformer_nano": {},
}


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize("name", list(EVERY_FAMILY))
def test_empty_batch_gives_empty_logits_and_features(name, backend):
    """B = 0 (e.g. the last, empty shard of a sampler): logits [0, classes], empty stage maps, and a training
    step that gives every parameter a (zero) gradient, on the reference and the default path."""
    kwargs = EVERY_FAMILY[name]
    x = torch.randn(0, 3, 64, 64)
    with zoo.ops.use_backend(backend):
        model = timm.create_model(name, num_classes=5, **kwargs)
        with torch.no_grad():
            assert model.eval()(x).shape == (0, 5)
        model.train()(x).sum().backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"parameters without a gradient after an empty batch: {no_grad[:5]}"
        features = timm.create_model(name, features_only=True, **kwargs).eval()
        with torch.no_grad():
            maps = features(x)
    full = [tuple(f.shape[1:]) for f in features(torch.randn(1, 3, 64, 64))]
    assert [tuple(f.shape) for f in maps] == [(0, *s) for s in full]


@pytest.mark.parametrize("name", ["nat_nano", "agent_deit_t"])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_chans": 0}, "in_chans must be an int >= 1"),
        ({"num_classes": -1}, r"num_classes must be an int >= 0 \(0 builds the model without a classifier\)"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be a probability in \[0, 1\), got 1.0"),
        ({"drop_path_rate": -0.1}, r"drop_path_rate must be a probability in \[0, 1\), got -0.1"),
        ({"drop_rate": 1.5}, r"drop_rate must be a probability in \[0, 1\)"),
    ],
)
def test_construction_rejects_arguments_no_model_can_use(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model(name, **kwargs)


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
