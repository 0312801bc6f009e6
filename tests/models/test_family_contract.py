"""The contract every family keeps, held once: each test runs over the family registry
(``zoo.models._family.FAMILIES``) with the family's smallest variant of each architecture it registers.

A family that registers itself without an entry in :data:`SMALLEST` fails collection (a ``KeyError`` naming it),
so a new family is held to the contract from its first commit. What a single family adds (its layout, its
converter, its parameter counts, its tags' URLs) stays in ``tests/models/test_<family>.py``.

Value checks, not only shapes: the backward of every family is the gradient of its forward (a directional
derivative in float64, at an odd size where the blocks pad and crop), samples do not leak into each other
through padding and masks, and every path to the same numbers (``forward`` / ``forward_head`` /
``forward_intermediates`` / ``features_only`` / gradient checkpointing / channels-last / a pruned model) gives
the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import timm
import torch
from timm.models import model_entrypoint

import zoo
from zoo.models._family import FAMILIES, tag_input_size


@dataclass(frozen=True)
class Smallest:
    """One model of the contract: how to build it small, and what its feature maps must be."""

    kwargs: dict = field(default_factory=dict)
    channels: tuple[int, ...] = (32, 64, 128, 256)
    reductions: tuple[int, ...] = (4, 8, 16, 32)
    odd_grid: tuple[int, int] = (4, 5)  # the last feature map of a 97x131 image


# family -> its smallest variant of each architecture (Agent-PVT and Agent-DeiT have no nano: their tiny,
# built at 64 px so that the position terms are interpolated in every test that feeds another size)
SMALLEST: dict[str, dict[str, Smallest]] = {
    "maxvit": {"maxvit_nano": Smallest()},  # TF "same" padding: ceil(97 / 32) x ceil(131 / 32)
    "biformer": {"biformer_nano": Smallest()},
    "crossformer": {"crossformer_nano": Smallest(channels=(48, 96, 192, 384), odd_grid=(3, 4))},  # floor
    "nat": {"nat_nano": Smallest(), "dinat_nano": Smallest()},
    "agent": {
        "agent_swin_nano": Smallest(channels=(48, 96, 192, 384)),
        "agent_pvt_t": Smallest({"img_size": 64}, channels=(64, 128, 320, 512), odd_grid=(3, 4)),
        "agent_deit_t": Smallest({"img_size": 64}, channels=(192,) * 12, reductions=(16,) * 12, odd_grid=(7, 9)),
    },
    "hybrid": {"hybrid_nat_biformer_nano": Smallest()},
}

CASES = [pytest.param(name, SMALLEST[family][name], id=name) for family in FAMILIES for name in SMALLEST[family]]
ODD = (97, 131)  # odd and non-square: every mixer that needs divisibility pads and crops


def _create(name: str, spec: Smallest, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **{**spec.kwargs, **kwargs})


def _image(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _family_variants(family: str) -> list[str]:
    return [n for n in zoo.list_models() if model_entrypoint(n).__module__ == f"zoo.models.{family}"]


# ------------------------------------------------------------------------------------------------ the table
def test_the_table_names_each_registered_family_and_only_its_own_models():
    assert set(SMALLEST) == set(FAMILIES)
    for family, models in SMALLEST.items():
        assert models and set(models) <= set(_family_variants(family)), family


@pytest.mark.parametrize("family", list(SMALLEST))
def test_the_table_holds_the_smallest_variant_of_each_architecture(family):
    """Each listed model is the smallest of the variants that share its name's prefix (``agent_pvt``, ``dinat``)."""

    def count(name):
        with torch.device("meta"):
            return sum(p.numel() for p in timm.create_model(name).parameters())

    variants = _family_variants(family)
    for name in SMALLEST[family]:
        prefix = name.rsplit("_", 1)[0] + "_"
        kin = [v for v in variants if v.startswith(prefix)]
        assert min(kin, key=count) == name, (name, kin)


# ----------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize(("name", "spec"), CASES)
def test_odd_size_forward_paths_agree_and_samples_stay_apart(name, spec):
    """At 97x131: ``forward`` = ``forward_head(forward_features)`` = the final output of
    ``forward_intermediates``; a sample's logits do not depend on the other samples of the batch (padding
    and masks are per sample); the feature maps have the family's channels and the table's final grid."""
    model = _create(name, spec, num_classes=5).eval()
    x = _image(2, 3, *ODD)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        final, maps = model.forward_intermediates(x)
        alone = model(x[1:])
    assert logits.shape == (2, 5)
    torch.testing.assert_close(model.forward_head(features), logits, rtol=0, atol=0)
    torch.testing.assert_close(final, features, rtol=0, atol=0)
    torch.testing.assert_close(alone, logits[1:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits[0], logits[1])  # the two samples are told apart
    assert [m.shape[1] for m in maps] == list(spec.channels)
    assert tuple(maps[-1].shape[2:]) == spec.odd_grid


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_forward_intermediates_options_agree(name, spec):
    """``indices``, ``stop_early`` and ``output_fmt`` select and lay out the same maps; with ``norm`` the last
    map is the map of ``forward_features`` (less the class token); ``output_fmt`` other than NCHW/NHWC is
    refused."""
    model = _create(name, spec, num_classes=0).eval()
    x = _image(1, 3, 64, 96)
    n = len(spec.channels)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        first_two = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        nhwc = model.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[n - 2, n - 1], norm=True, intermediates_only=True)
        features = model.forward_features(x)
    assert len(every) == n
    for i, (r, m) in enumerate(zip(spec.reductions, every)):
        assert tuple(m.shape) == (1, spec.channels[i], 64 // r, 96 // r)
    for a, b in zip(first_two, every[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(nhwc, every[-2:]):
        torch.testing.assert_close(a, b.permute(0, 2, 3, 1), rtol=0, atol=0)
    b, c, h, w = normed[-1].shape
    if features.dim() == 3:  # tokens [B, prefix + h·w, C]
        features = features[:, -h * w:].reshape(b, h, w, c)
    torch.testing.assert_close(normed[-1], features.permute(0, 3, 1, 2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_backward_is_the_gradient_of_the_forward(name, spec):
    """Training mode gives every parameter a gradient; in float64 the gradient with respect to the image and
    every parameter together matches the central difference of the forward along a random direction (at an
    odd, non-square size: padding, cropping, masks and interpolated position terms are differentiated)."""
    model = _create(name, spec, num_classes=5).train()
    model(_image(2, 3, 33, 47)).logsumexp(-1).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

    model.zero_grad(set_to_none=True)
    model = model.double().eval()  # no dropout or stochastic depth: the forward is a function
    x = _image(1, 3, 33, 47, dtype=torch.float64).requires_grad_()
    params = dict(model.named_parameters())
    weights = _image(1, 5, dtype=torch.float64)
    (model(x) * weights).sum().backward()
    gen = torch.Generator().manual_seed(2)
    direction = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}
    dx = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    predicted = (x.grad * dx).sum() + sum((p.grad * direction[k]).sum() for k, p in params.items())

    def loss_at(eps: float) -> torch.Tensor:
        moved = {k: p.detach() + eps * direction[k] for k, p in params.items()}
        out = torch.func.functional_call(model, moved, (x.detach() + eps * dx,))
        return (out * weights).sum()

    eps = 1e-5
    with torch.no_grad():
        measured = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    torch.testing.assert_close(measured, predicted, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_smallest_input(name, spec):
    """32 px (the last stage 1x1) runs; 31 px is refused with the minimum named."""
    model = _create(name, spec, num_classes=3).eval()
    with torch.no_grad():
        assert model(_image(1, 3, 32, 33)).shape == (1, 3)
    with pytest.raises(ValueError, match="smaller than the minimum 32x32"):
        model(_image(1, 3, 31, 64))


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize(("name", "spec"), CASES)
def test_empty_batch_gives_empty_logits_and_features(name, spec, backend):
    """B = 0 (e.g. the last, empty shard of a sampler): logits [0, classes], empty stage maps, and a training
    step that gives every parameter a (zero) gradient, on the reference and the default path."""
    x = torch.randn(0, 3, 64, 64)
    with zoo.ops.use_backend(backend):
        model = _create(name, spec, num_classes=5)
        with torch.no_grad():
            assert model.eval()(x).shape == (0, 5)
        model.train()(x).sum().backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"parameters without a gradient after an empty batch: {no_grad[:5]}"
        assert all(not p.grad.any() for p in model.parameters() if p.grad is not None)
        features = _create(name, spec, features_only=True).eval()
        with torch.no_grad():
            maps = features(x)
    full = [tuple(f.shape[1:]) for f in features(torch.randn(1, 3, 64, 64))]
    assert [tuple(f.shape) for f in maps] == [(0, *s) for s in full]


# ------------------------------------------------------------------------------------------ timm's model API
@pytest.mark.parametrize(("name", "spec"), CASES)
def test_features_only_maps_are_the_models_intermediates(name, spec):
    """``features_only=True``: the same weights (same seed) give the maps ``forward_intermediates`` gives, at
    the strides and channels ``feature_info`` states."""
    model = _create(name, spec).eval()
    features = _create(name, spec, features_only=True).eval()
    info = features.feature_info
    indices = list(info.out_indices)
    assert info.channels() == [spec.channels[i] for i in indices]
    assert info.reduction() == [spec.reductions[i] for i in indices]
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == list(zip(spec.channels, spec.reductions))
    x = _image(1, 3, 64, 96)
    with torch.no_grad():
        got = features(x)
        want = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    sizes = zip(info.channels(), info.reduction())
    assert [tuple(g.shape) for g in got] == [(1, c, 64 // r, 96 // r) for c, r in sizes]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_pre_logits_reset_classifier_and_unpooled_output(name, spec):
    """The classifier maps the pre-logits to the logits; ``reset_classifier(0)`` leaves the pre-logits as the
    output, ``reset_classifier(k)`` a new k-way head in the model's train/eval mode; ``global_pool=''``
    keeps the feature map's positions."""
    model = _create(name, spec, num_classes=5).eval()
    x = _image(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        torch.testing.assert_close(model.get_classifier()(pre), logits, rtol=1e-5, atol=1e-6)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre, rtol=0, atol=0)
        assert model.num_classes == 0
        model.reset_classifier(7)
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7
    assert not any(m.training for m in model.modules())
    model.train().reset_classifier(3)
    assert all(m.training for m in model.modules())

    unpooled = _create(name, spec, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        out, features = unpooled(x), unpooled.forward_features(x)
    assert out.shape == (*features.shape[:-1], unpooled.head_hidden_size)


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_prune_intermediate_layers_keeps_the_kept_maps(name, spec):
    model = _create(name, spec, num_classes=5).eval()
    x = _image(1, 3, 64, 64)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        after = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        out = model(x)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert model.num_classes == 0 and out.shape[-1] == spec.channels[1]


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_grad_checkpointing_changes_no_value(name, spec):
    """Same output and same gradients with activation checkpointing (training mode, no stochastic layers)."""
    model = _create(name, spec, num_classes=5, drop_path_rate=0.0).train()
    x = _image(2, 3, 40, 48)

    def step():
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grads = step()
    model.set_grad_checkpointing(True)
    out_ckpt, grads_ckpt = step()
    torch.testing.assert_close(out_ckpt, out, rtol=1e-5, atol=1e-6)
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_no_weight_decay_and_group_matcher_name_real_parameters(name, spec):
    model = _create(name, spec)
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 2  # stem, blocks and the final norm at least


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_channels_last_output_equals_contiguous(name, spec):
    """timm's convention: ``model.to(memory_format=torch.channels_last)`` with a channels-last image gives the
    contiguous model's output (every parameter has rank <= 4), also for ``features_only``."""
    model = _create(name, spec, num_classes=10).eval()
    features = _create(name, spec, features_only=True).eval()
    x = _image(2, 3, 80, 96)  # not the build size: position terms are interpolated
    with torch.no_grad():
        want, want_maps = model(x), features(x)
        model.to(memory_format=torch.channels_last)
        features.to(memory_format=torch.channels_last)
        assert all(p.dim() < 5 for p in model.parameters())
        assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                   for p in model.parameters()), "no parameter was converted"
        got = model(x.to(memory_format=torch.channels_last))
        maps = features(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for g, w in zip(maps, want_maps, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_train_step_after_inference_mode(name, spec):
    """Regression: cached index tables (neighborhood windows, masks) built under ``torch.inference_mode()``
    were inference tensors, so the next training step failed with "Inference tensors cannot be saved for
    backward" (found by tools/bench_models.py, which times inference before the training step)."""
    model = _create(name, spec, num_classes=3)
    x = _image(2, 3, 72, 80)  # not a multiple of 32: padding and masks are built too
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(("name", "spec"), CASES)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_chans": 0}, "in_chans must be an int >= 1"),
        ({"num_classes": -1}, r"num_classes must be an int >= 0 \(0 builds the model without a classifier\)"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be a probability in \[0, 1\), got 1.0"),
        ({"drop_path_rate": -0.1}, r"drop_path_rate must be a probability in \[0, 1\), got -0.1"),
        ({"drop_rate": 1.5}, r"drop_rate must be a probability in \[0, 1\)"),
        ({"not_a_model_arg": 1}, None),
    ],
)
def test_construction_rejects_arguments_no_model_can_use(name, spec, kwargs, message):
    with pytest.raises(TypeError if message is None else ValueError, match=message):
        _create(name, spec, **kwargs)


# -------------------------------------------------------------------------------------- pretrained cfgs
@pytest.mark.parametrize("family", list(SMALLEST))
def test_pretrained_cfg_names_the_models_own_layers(family):
    """For every variant: ``first_conv`` names convolutions that take the image's 3 channels, ``classifier``
    names the model's classifier, the minimum size is 32 px; for every tag: the family's size rule
    (:func:`tag_input_size`) gives the tag's input size, and ``pool_size`` is its final grid."""
    for variant in _family_variants(family):
        with torch.device("meta"):
            model = timm.create_model(variant)
        cfg = model.pretrained_cfg
        modules = dict(model.named_modules())
        convs = [cfg["first_conv"]] if isinstance(cfg["first_conv"], str) else list(cfg["first_conv"])
        assert all(modules[c].in_channels == 3 for c in convs), (variant, convs)
        assert modules[cfg["classifier"]] is model.get_classifier(), variant
        assert model.get_classifier().out_features == model.num_classes == cfg["num_classes"], variant
        assert cfg["min_input_size"] == (3, 32, 32), variant
        stride = model.feature_info[-1]["reduction"]
        for tagged in timm.list_pretrained(f"{variant}.*"):
            tag_cfg = timm.get_pretrained_cfg(tagged)
            h, w = tag_cfg.input_size[1:]
            assert tag_input_size(variant, {"pretrained_cfg": tagged.split(".", 1)[1]}) == (h, w), tagged
            assert tag_cfg.classifier == cfg["classifier"] and tag_cfg.first_conv == cfg["first_conv"], tagged
            if stride == 32:  # the stride-16 models: test_pool_size_of_the_stride_16_models
                assert tag_cfg.pool_size == (h // stride, w // stride), tagged


def test_pool_size_of_the_stride_16_models():
    """Agent-DeiT's final grid is h // 16 (its tags used to say h // 32), in its tags and after set_input_size."""
    for variant in _family_variants("agent"):
        with torch.device("meta"):
            stride = timm.create_model(variant).feature_info[-1]["reduction"]
        if stride != 32:
            for tagged in timm.list_pretrained(f"{variant}.*"):
                h, w = timm.get_pretrained_cfg(tagged).input_size[1:]
                assert timm.get_pretrained_cfg(tagged).pool_size == (h // stride, w // stride), tagged
            model = timm.create_model(variant, pretrained=False)
            model.set_input_size(img_size=288)
            assert model.pretrained_cfg["pool_size"] == (288 // stride, 288 // stride), variant
            assert model.forward_features(torch.zeros(1, 3, 288, 288)).shape[1] == (288 // stride) ** 2 + 1


@pytest.mark.parametrize("name, spec", CASES)
def test_torch_compile_traces_one_graph(name, spec):
    """``torch.compile`` sees every family's inference forward as one graph (no break: a break costs a
    round trip to Python per call and splits the fused kernels; docs/bench_cpu.md's torch.compile table).
    Dynamo's tracing only (``explain``), no code generation."""
    import torch._dynamo

    model = _create(name, spec).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch._dynamo.explain(model)(_image(1, 3, *ODD))
    assert (out.graph_count, out.graph_break_count) == (1, 0), [str(r.reason)[:300] for r in out.break_reasons]
