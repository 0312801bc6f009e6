"""timm's ``set_input_size()`` on every zoo family (issue 14, item 5).

For each family's smallest variant: the recorded size (what ``timm.data.resolve_model_data_config`` and timm's
scripts read) follows; a 224 px model resized to 384 equals a model built at 384 (``create_model(name,
img_size=384)``, the configuration of the official 384 px models) that loads the 224 px weights through the
family's converter; state dict keys stay; families with nothing size-dependent give the same outputs; bad
sizes raise a clear ValueError and change nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_model_data_config

import zoo  # noqa: F401  (registers the models)
from zoo.models.maxvit import maxvit_cfg
from zoo.models.nat import VARIANTS as NAT_VARIANTS
from zoo.models.nat import dinat_resized, nat_cfg


def _family_contract_table() -> dict:
    """The one table of each family's smallest variants: ``SMALLEST`` of tests/models/test_family_contract.py
    (loaded by path: the test folders are no packages), so a new family is covered here as well."""
    path = Path(__file__).with_name("test_family_contract.py")
    name = "zoo_tests_family_contract"
    if name not in sys.modules:  # registered first: its dataclass resolves its annotations through it
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name].SMALLEST


# every family's smallest variant of each architecture, built at its default size (the contract's own
# kwargs, e.g. Agent-PVT/DeiT at 64 px, are not used: these tests resize from the 224 px default)
SMALLEST = [name for models in _family_contract_table().values() for name in models]
# set_input_size changes nothing but the recorded size: same outputs at the new size
RECORD_ONLY = ["biformer_nano", "crossformer_nano", "nat_nano", "hybrid_nat_biformer_nano"]
# the position terms are resized once instead of at run time: same outputs up to rounding
RESIZED_SAME_OUTPUTS = ["agent_pvt_t", "agent_deit_t"]


def _create(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kw).eval()


def _converter(name: str):
    module = importlib.import_module(timm.models.model_entrypoint(name).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", SMALLEST)
def test_resized_model_equals_model_built_at_the_size(name):
    model = _create(name)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_input_size(img_size=384)
    assert resolve_model_data_config(model)["input_size"] == (3, 384, 384)
    assert model.pretrained_cfg["input_size"] == model.default_cfg["input_size"] == (3, 384, 384)
    assert list(model.state_dict()) == list(weights)

    built = _create(name, img_size=384)
    convert = _converter(name)
    built.load_state_dict(convert(weights, built) if convert else weights)
    assert getattr(model, "cfg", None) == getattr(built, "cfg", None)  # same structure (window, dilations...)
    for k, v in built.state_dict().items():
        assert model.state_dict()[k].shape == v.shape, k
    x = torch.randn(1, 3, 384, 384)
    torch.testing.assert_close(_out(model, x), _out(built, x), atol=1e-5, rtol=0)
    assert resolve_model_data_config(model) == resolve_model_data_config(built)


@pytest.mark.parametrize("name", RECORD_ONLY + RESIZED_SAME_OUTPUTS)
def test_outputs_at_the_new_size_unchanged(name):
    model, untouched = _create(name), _create(name)
    model.set_input_size(img_size=(320, 320) if name in RECORD_ONLY else 320)
    assert resolve_model_data_config(model)["input_size"] == (3, 320, 320)
    x = torch.randn(1, 3, 320, 320)
    torch.testing.assert_close(_out(model, x), _out(untouched, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", SMALLEST)
def test_create_with_img_size_and_set_input_size_agree(name):
    with torch.device("meta"):
        built = timm.create_model(name, img_size=288)
        resized = timm.create_model(name)
    # without img_size the size is the tag's and is not saved as a model argument (a recipe's folder keeps its own)
    assert timm.models.get_model_args(resized).get("img_size") is None
    resized.set_input_size(img_size=288)
    assert resolve_model_data_config(built) == resolve_model_data_config(resized)
    assert resolve_model_data_config(built)["input_size"] == (3, 288, 288)
    assert timm.models.get_model_args(built).get("img_size") == timm.models.get_model_args(resized)["img_size"]
    assert getattr(built, "cfg", None) == getattr(resized, "cfg", None)


@pytest.mark.parametrize("name", SMALLEST)
@pytest.mark.parametrize("bad", [16, 0, -224, (224,), (224, 224, 3), "224", 224.0, True])
def test_invalid_size_is_a_clear_error_and_changes_nothing(name, bad):
    with torch.device("meta"):
        model = timm.create_model(name)
    before = (resolve_model_data_config(model), getattr(model, "cfg", None))
    with pytest.raises(ValueError, match="img_size"):
        model.set_input_size(img_size=bad)
    assert (resolve_model_data_config(model), getattr(model, "cfg", None)) == before


@pytest.mark.parametrize("name", ["agent_swin_nano", "agent_pvt_t", "agent_deit_t"])
def test_agent_sizes_must_be_square(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    with pytest.raises(ValueError, match="square"):
        model.set_input_size(img_size=(224, 288))
    with pytest.raises(ValueError, match="square"):
        timm.create_model(name, img_size=(224, 288), device="meta")


@pytest.mark.parametrize("name", SMALLEST)
def test_frozen_stays_frozen_and_meta_and_same_size_are_no_ops(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    before = dict(model.named_parameters())
    model.set_input_size(img_size=224)  # the current size: nothing changes
    assert all(p is before[n] for n, p in model.named_parameters())
    model.requires_grad_(False)
    model.set_input_size(img_size=448)
    assert not [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.device.type == "meta" for p in model.parameters())


def test_maxvit_window_size():
    """MaxViT: window = grid = img_size // 32 (the official 384/512 px models), or ``window_size``."""
    with torch.device("meta"):
        model = timm.create_model("maxvit_nano")
    model.set_input_size(img_size=512)
    assert model.stages[0].blocks[0].attn_block.attn.size == (16, 16)
    assert model.stages[0].blocks[0].attn_grid.attn.rel_pos.relative_position_bias_table.shape[-1] == 31
    model.set_input_size(window_size=5)
    assert model.cfg == maxvit_cfg(**{**_maxvit_nano(), "window_size": 5})
    assert resolve_model_data_config(model)["input_size"] == (3, 512, 512)


def _maxvit_nano() -> dict:
    from zoo.models.maxvit import VARIANTS

    return VARIANTS["maxvit_nano"]


@pytest.mark.parametrize("name", [n for n in SMALLEST if not n.startswith(("maxvit", "agent_deit"))])
def test_window_size_where_there_is_none(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    with pytest.raises(ValueError, match="window_size"):
        model.set_input_size(window_size=7)


def test_dinat_dilation_rule_gives_the_official_tables():
    """max(1, map // kernel) on odd blocks: every 224 px DiNAT/DiNAT_s table, the 384 px Large ones, and the
    11×11 Large's dilations at 384; at 224 the 11×11 keeps its own table (its 224 px checkpoint's)."""
    for name, kw in NAT_VARIANTS.items():
        size = 384 if name.endswith("_384") or name == "dinat_large_11x11" else 224
        assert dinat_resized(nat_cfg(**kw), (size, size)) == nat_cfg(**kw), name
    for name in ("dinat_large", "dinat_s_large"):
        at_384 = dinat_resized(nat_cfg(**NAT_VARIANTS[name]), (384, 384))
        assert at_384 == nat_cfg(**NAT_VARIANTS[f"{name}_384"])
    with torch.device("meta"):
        model = timm.create_model("dinat_large_11x11")
    model.set_input_size(img_size=384)
    model.set_input_size(img_size=224)
    assert model.cfg == nat_cfg(**NAT_VARIANTS["dinat_large_11x11"])
    model.set_input_size(img_size=256)  # no checkpoint at 256: the rule
    assert model.cfg == dinat_resized(nat_cfg(**NAT_VARIANTS["dinat_large_11x11"]), (256, 256))
    tagged = timm.create_model("dinat_large_11x11.official_in22k", device="meta")  # its 224 px checkpoint
    assert resolve_model_data_config(tagged)["input_size"] == (3, 224, 224)
    assert tagged.cfg == nat_cfg(**NAT_VARIANTS["dinat_large_11x11"])
