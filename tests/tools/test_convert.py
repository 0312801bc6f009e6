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


def test_convert_round_trip(official_file, tmp_path, monkeypatch, load_tool, parity_model):
    """Convert through the family converter, write safetensors, reload into the same model: official logits."""
    from safetensors.torch import load_file


    case, path, x, expected = official_file
    convert = load_tool("convert")
    # the reduced config is not a registered name: build it the way the parity test does
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: parity_model(case))
    out = tmp_path / "reduced.safetensors"
    report = convert.convert(path, "crossformer_tiny", out)
    assert report["tensors"] > 0 and len(report["sha256"]) == 64
    model = parity_model(case)
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


def test_convert_refuses_a_zoo_file_of_another_model(tmp_path, load_tool):
    """A zoo safetensors file whose metadata says dinat_nano is not converted for nat_nano (same keys)."""
    from safetensors.torch import save_file

    from zoo.models._pretrained import weights_metadata

    convert = load_tool("convert")
    model = timm.create_model("dinat_nano")
    src = tmp_path / "dinat_nano.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src),
              metadata=weights_metadata(model, "dinat_nano"))
    out = tmp_path / "nat_nano.safetensors"
    with pytest.raises(ValueError, match="weights of dinat_nano .*not nat_nano .*dilations"):
        convert.convert(src, "nat_nano", out)
    assert list(tmp_path.iterdir()) == [src]


def test_convert_writes_metadata_and_handles_nan_tensors(official_file, tmp_path, monkeypatch, load_tool,
                                                          parity_model):
    """A NaN in the checkpoint is copied and reported, not mistaken for a failed write (NaN != NaN)."""
    from safetensors import safe_open


    case, path, _, _ = official_file
    sd = torch.load(path, weights_only=True)["model"]
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 2)
    sd = {**sd, key: sd[key].clone()}
    sd[key][0, 0] = float("nan")
    nan_path = tmp_path / "with_nan.pth"
    torch.save({"model": sd}, nan_path)
    convert = load_tool("convert")
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: parity_model(case))
    out = tmp_path / "out.safetensors"
    report = convert.convert(nan_path, "crossformer_tiny", out)
    assert report["non_finite"] != "none" and out.is_file()
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        assert any(torch.isnan(f.get_tensor(k)).any() for k in f.keys())
    assert meta["model"] == "crossformer_tiny" and "stages.0.block_kwargs" in meta["architecture"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "with_nan.pth"]


def test_convert_leaves_no_file_when_the_check_fails(official_file, tmp_path, monkeypatch, load_tool,
                                                       parity_model):
    import safetensors.torch


    case, path, _, _ = official_file
    convert = load_tool("convert")
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: parity_model(case))
    real = safetensors.torch.load_file

    def corrupted(*args, **kwargs):
        tensors = real(*args, **kwargs)
        first = next(iter(tensors))
        tensors[first] = tensors[first] + 1
        return tensors

    monkeypatch.setattr(safetensors.torch, "load_file", corrupted)
    out = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError, match="differs after writing; nothing was written"):
        convert.convert(path, "crossformer_tiny", out)
    assert list(tmp_path.iterdir()) == []
