"""Official parity: rebuild each official state dict (tests/fixtures/parity, copied from the shared
fixtures), convert it with the family's converter, load strictly and match the official logits.

Protocol a family module ``zoo.models.<family>`` follows:
  ``checkpoint_filter_fn(state_dict, model=None) -> dict``  official layout -> zoo layout (strict)
The zoo model for a case (its variant, or the reduced config) comes from ``tests/parity_models.py``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

import zoo.ops as ops

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
CASES = sorted(p.name for p in PARITY.iterdir() if (p / "case.json").exists())


def _load(case_name):
    sys.path.insert(0, str(PARITY))
    try:
        from official_init import load_case
    finally:
        sys.path.remove(str(PARITY))
    return load_case(PARITY / case_name)


def _family(case_name):
    family = json.loads((PARITY / case_name / "case.json").read_text())["family"]
    return importlib.import_module(f"zoo.models.{family}")  # a missing family fails the case, never skips it


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize("case_name", CASES)
def test_official_parity(case_name, backend, parity_model):
    mod = _family(case_name)
    case, official_sd, x, expected = _load(case_name)
    model = parity_model(case)
    assert sum(p.numel() for p in model.parameters()) == case["num_params"]
    zoo_sd = mod.checkpoint_filter_fn(official_sd, model)
    model.load_state_dict(zoo_sd, strict=True)
    model.eval()
    with torch.no_grad(), ops.use_backend(backend):
        logits = model(x)
    torch.testing.assert_close(logits, expected, **case["tolerance"])
