"""Run timm's own model tests (timm 1.0.31 `tests/test_models.py`, unmodified) against the zoo's models.

`make setup` extracts that file from timm's sdist on PyPI next to this conftest (it is not committed).
This conftest imports zoo before the test module is collected, adds the zoo's family modules to the
modules that get the `forward_intermediates` tests, and deselects every test that is not about a zoo
model. Checks that cannot apply are excluded below with the reason, as timm's own exclusion lists do.
"""

from __future__ import annotations

import fnmatch

import pytest
import timm

import zoo

ZOO_MODELS = set(zoo.list_models())
ZOO_MODULES = sorted({timm.models.model_entrypoint(n).__module__.rsplit(".", 1)[-1] for n in ZOO_MODELS})

# Every model runs the meta-device config/API checks (test_model_default_cfgs*), which allocate no
# weights. Every other test builds real weights and runs real tensors: those run on these variants only
# (the larger variants share all code paths; a Large model takes minutes per test on a 2-core CPU).
META_DEVICE_TESTS = ["test_model_default_cfgs", "test_model_default_cfgs_non_std"]
REAL_TENSOR_MODELS = ["*_nano", "*_tiny", "*_mini", "*_t", "*hybrid*"]

# test name (glob) -> reason it cannot apply to zoo models
EXCLUDED_TESTS = {
    "test_model_forward_torchscript": "TorchScript: zoo ops dispatch between backends in Python "
    "(context variables, optional accelerators); deploy through ONNX or torch.export instead",
    "test_model_forward_fx*": "FX symbolic tracing: blocks pad to window/region multiples from the input "
    "shape (data-dependent Python control flow); use torch.export or ONNX",
    "test_model_backward_fx": "FX symbolic tracing: see test_model_forward_fx",
    "test_model_forward_torchscript_with_features_fx": "FX + TorchScript: see above",
    "test_model_inference": "needs timm's hub test tensors (network)",
    "test_model_load_pretrained": "needs downloads (network); pretrained loading is tested on local files",
    "test_model_features_pretrained": "needs downloads (network)",
}

_orig_list_models = timm.list_models


def _list_models(*args, **kwargs):
    module = kwargs.get("module")
    if isinstance(module, (list, tuple)):
        kwargs["module"] = list(module) + [m for m in ZOO_MODULES if m not in module]
    # timm files DeiT under its non-standard models (token output [B, N, C], no spatial pool_size); Agent-DeiT
    # is a DeiT, so its config checks belong to test_model_default_cfgs_non_std, as timm's own deit_* do.
    pattern = kwargs.get("filter")
    if isinstance(pattern, (list, tuple)) and "deit*" in pattern:
        kwargs["filter"] = list(pattern) + ["agent_deit*"]
    exclude = kwargs.get("exclude_filters")
    if kwargs.get("include_tags") and isinstance(exclude, (list, tuple)) and "deit*" in exclude:
        kwargs["exclude_filters"] = list(exclude) + ["agent_deit*"]
    return _orig_list_models(*args, **kwargs)


timm.list_models = _list_models  # test_models.py does `from timm import list_models` on import


def pytest_configure(config):
    for mark in ("base", "cfg", "cfg_nonstd", "forward", "backward", "features", "torchscript", "fxforward",
                 "fxbackward"):
        config.addinivalue_line("markers", f"{mark}: timm test marker")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        if "timm_suite" not in str(item.fspath):
            keep.append(item)
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("model_name")
        test = item.originalname
        # the config checks list tagged names (e.g. maxvit_tiny.tf_in1k_384): one per pretrained tag
        if name is None or name.split(".")[0] not in ZOO_MODELS:
            drop.append(item)
            continue
        reason = next((r for pat, r in EXCLUDED_TESTS.items() if fnmatch.fnmatch(test, pat)), None)
        if reason is None and test not in META_DEVICE_TESTS and not any(
            fnmatch.fnmatch(name, p) for p in REAL_TENSOR_MODELS
        ):
            reason = "CI time: real-tensor checks run on the nano/tiny variants, which share all code paths"
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
