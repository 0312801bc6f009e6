"""tools/convert.py: official file -> zoo-layout safetensors, strict, with clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[2]
PARITY = ROOT / "tests" / "fixtures" / "parity"


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    sys.path.insert(0, str(PARITY))
    try:
        from official_init import load_case
    finally:
        sys.path.remove(str(PARITY))
    case, sd, x, expected = load_case(PARITY / "crossformer_reduced")
    path = tmp_path_factory.mktemp("official") / "reduced.pth"
    torch.save({"model": sd}, path)
    return case, path, x, expected


def test_convert_round_trip(official_file, tmp_path, monkeypatch, load_tool):
    """Convert through the family converter, write safetensors, reload into the same model: official logits."""
    from safetensors.torch import load_file

    from zoo.models import crossformer

    case, path, x, expected = official_file
    convert = load_tool("convert")
    # the reduced config is not a registered name: build it the way the parity test does
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: crossformer.parity_model(case))
    out = tmp_path / "reduced.safetensors"
    report = convert.convert(path, "crossformer_tiny", out)
    assert report["tensors"] > 0 and len(report["sha256"]) == 64
    model = crossformer.parity_model(case)
    model.load_state_dict(load_file(str(out)), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, **case["tolerance"])


def test_convert_cli_errors(official_file, tmp_path, capsys, load_tool):
    _, path, _, _ = official_file
    convert = load_tool("convert")
    assert convert.main([str(path), "--model", "crossformer_tinny", "--out", str(tmp_path / "a.safetensors")]) == 1
    assert "close names: crossformer_tiny" in capsys.readouterr().err
    assert convert.main([str(path), "--model", "nat_mini", "--out", str(tmp_path / "a.safetensors")]) == 1
    assert "crossformer" in capsys.readouterr().err  # another family's checkpoint is named
    missing_dir = str(tmp_path / "no" / "a.safetensors")
    assert convert.main([str(path), "--model", "crossformer_tiny", "--out", missing_dir]) == 1
    assert "does not exist" in capsys.readouterr().err
