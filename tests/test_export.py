"""ONNX export (zoo.export, tools/export.py): every family exports with dynamic batch and H/W and matches
PyTorch in onnxruntime (rtol/atol 1e-4, fp32) at two batch sizes and two input sizes; bad input gets a clear
error. Heavy cases (tiny variants, the dynamo exporter, segmentation/detection heads) carry the ``heavy``
mark: ``pytest -m "not heavy" tests/test_export.py`` runs the quick set."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import onnx
import pytest
import timm
import torch

import zoo
from zoo.export import ExportError, export_onnx

heavy = pytest.mark.heavy
ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "tests" / "fixtures" / "parity"
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _family_landed(family: str) -> bool:
    return importlib.util.find_spec(f"zoo.models.{family}") is not None


def _check_report(report, n_checks=5):
    """Verified, within 1e-4, at batch 1 and 2 and at sizes far from the export size: about half and twice it,
    and an odd, non-square size (not a multiple of 32)."""
    assert report.ok and report.verified, report.summary()
    assert len(report.checks) == n_checks
    assert report.max_abs <= 1e-4, report.summary()
    shapes = [c.shape for c in report.checks]
    assert {s[0] for s in shapes} == {1, 2}
    h0, w0 = report.input_size[1:]
    sizes = {s[2:] for s in shapes}
    assert any(h <= max(h0 // 2, 32) and w <= max(w0 // 2, 32) for h, w in sizes), shapes
    assert any(h >= 2 * h0 and w >= 2 * w0 for h, w in sizes), shapes
    assert any(h % 2 and w % 2 and h != w for h, w in sizes), shapes
    assert Path(report.path).is_file() and report.external_data is None  # one self-contained file
    assert not Path(report.path + ".data").exists()
    onnx.checker.check_model(report.path)
    model = onnx.load(report.path, load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


# sizes of the issue that found CrossFormer and Agent-Swin graphs baked to the export size: 0.25x to 2x of a
# 224 export, odd and non-square, crossing every size-dependent regime (windows that shrink to small maps)
FAR_SIZES = [(224, 224), (64, 64), (96, 80), (100, 75), (320, 256), (448, 448), (33, 47)]


QUICK = ["crossformer_nano", "maxvit_nano", "agent_swin_nano", "agent_pvt_t", "agent_deit_t", "nat_nano",
         "dinat_nano", "biformer_nano"]
TINY = ["crossformer_tiny", "maxvit_tiny", "agent_swin_t", "nat_tiny", "dinat_tiny", "biformer_tiny"]


def _skip_unlanded(name: str) -> None:
    family = "nat" if name.startswith("dinat") else name.split("_")[0]
    if not _family_landed(family):
        pytest.skip(f"zoo.models.{family} has not landed yet")


@pytest.mark.parametrize(
    "name", QUICK + [pytest.param(n, marks=heavy) for n in TINY]
)
def test_export_family_dynamic(name, tmp_path):
    """Exported at 224, right in onnxruntime from 0.25x to 2x the export size (and 33x47)."""
    _skip_unlanded(name)
    report = export_onnx(name, tmp_path / f"{name}.onnx", num_classes=10, check_sizes=FAR_SIZES, **TOL)
    assert report.ok and report.max_abs <= 1e-4, report.summary()
    assert [c.shape[2:] for c in report.checks] == [FAR_SIZES[0]] + FAR_SIZES
    assert report.exporter == "torchscript" and report.backend == "sdpa"


@pytest.mark.parametrize("name", ["crossformer_nano", "agent_swin_nano", "hybrid_nat_biformer_nano"])
def test_export_small_odd_size_serves_large(name, tmp_path):
    """Exported at an odd 47x33 (every window shrunk to the map in the last stages), right at 224 and 320x256
    where the windows no longer shrink (Agent-Swin exported at 33x47 used to fail at every other size)."""
    report = export_onnx(name, tmp_path / f"{name}.onnx", num_classes=10, img_size=(47, 33),
                         check_sizes=[(47, 33), (224, 224), (320, 256), (64, 64)], **TOL)
    assert report.ok and report.max_abs <= 1e-4, report.summary()


def test_default_check_sizes_reach_far():
    from zoo.export import default_check_sizes

    assert default_check_sizes(224, 224) == [(224, 224), (112, 112), (448, 448), (169, 281)]
    assert default_check_sizes(32, 48) == [(32, 48), (32, 32), (64, 96), (33, 61)]
    # models that take multiples of their stride only (smp): every size a multiple
    assert default_check_sizes(256, 256, multiple=32) == [(256, 256), (128, 128), (512, 512), (288, 320)]


def _parity_cases() -> list[str]:
    return sorted(p.name for p in PARITY.glob("*_reduced") if (p / "case.json").exists())


@pytest.mark.parametrize("case_name", _parity_cases())
def test_export_parity_reduced(case_name, tmp_path):
    case = json.loads((PARITY / case_name / "case.json").read_text())
    if not _family_landed(case["family"]):
        pytest.skip(f"zoo.models.{case['family']} has not landed yet")
    mod = importlib.import_module(f"zoo.models.{case['family']}")
    model = mod.parity_model(case).eval()
    h, w = case["input_shape"][2:]
    report = export_onnx(model, tmp_path / f"{case_name}.onnx", img_size=(h, w), **TOL)
    _check_report(report)


def test_export_heads(tmp_path):
    pre = export_onnx("nat_nano", tmp_path / "pre.onnx", head="pre_logits", img_size=96)
    _check_report(pre)
    assert [tuple(s) for s in pre.checks[0].output_shapes] == [(1, 256)]
    feats = export_onnx("nat_nano", tmp_path / "feat.onnx", head="features", img_size=96)
    _check_report(feats)
    assert feats.output_names == [f"features.{i}" for i in range(4)]
    # stage maps at strides 4/8/16/32 of the 73x121 check input, NCHW
    assert feats.checks[-1].shape == (2, 3, 73, 121)
    assert [tuple(s) for s in feats.checks[-1].output_shapes] == [
        (2, 32, 19, 31), (2, 64, 10, 16), (2, 128, 5, 8), (2, 256, 3, 4)]


def test_export_static_fp16(tmp_path):
    report = export_onnx("agent_swin_nano", tmp_path / "fp16.onnx", img_size=112, dynamic_batch=False,
                         dynamic_size=False, fp16=True, num_classes=10)
    assert report.ok, report.summary()
    assert [c.shape for c in report.checks] == [(1, 3, 112, 112)]
    assert report.max_abs < 5e-2
    model = onnx.load(report.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_zoo_checkpoint_roundtrip(tmp_path):
    src = timm.create_model("crossformer_nano", num_classes=7).eval()
    ckpt = tmp_path / "cf.pth"
    torch.save({"state_dict": src.state_dict()}, ckpt)
    report = export_onnx("crossformer_nano", tmp_path / "cf.onnx", checkpoint=ckpt, img_size=64,
                         dynamic_size=False)
    assert report.ok and report.checks[0].output_shapes == [(1, 7)]  # classes taken from the checkpoint
    import onnxruntime as ort

    x = torch.randn(2, 3, 64, 64)
    out = ort.InferenceSession(report.path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), src(x), **TOL)


# ------------------------------------------------------------------------------------------ errors
def test_error_unknown_model(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'nat_nanno'.*did you mean nat_nano"):
        export_onnx("nat_nanno", tmp_path / "x.onnx")


def test_error_checkpoint_of_another_architecture(tmp_path):
    ckpt = tmp_path / "cf.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("crossformer_nano", num_classes=10).state_dict(), str(ckpt))
    with pytest.raises(ValueError, match=r"does not fit nat_nano.*missing keys: stem\.proj.*unexpected keys"):
        export_onnx("nat_nano", tmp_path / "x.onnx", checkpoint=ckpt)
    with pytest.raises(ValueError, match="does not exist"):
        export_onnx("nat_nano", tmp_path / "x.onnx", checkpoint=tmp_path / "missing.pth")


def test_error_unwritable_path(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot write the output path"):
        export_onnx("nat_nano", tmp_path / "file" / "x.onnx")  # parent is a file
    with pytest.raises(ValueError, match="is a directory"):
        export_onnx("nat_nano", tmp_path)


def test_error_opset_too_old(tmp_path):
    with pytest.raises(ExportError, match=r"opset 9 is too old: operator \w+ needs opset >= \d+"):
        export_onnx("nat_nano", tmp_path / "x.onnx", opset=9, img_size=64, dynamic_size=False)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="dynamo exporter writes opset >= 18"):
        export_onnx("nat_nano", tmp_path / "x.onnx", opset=17, exporter="dynamo")


def test_error_bad_head(tmp_path):
    with pytest.raises(ValueError, match="head must be one of"):
        export_onnx("nat_nano", tmp_path / "x.onnx", head="logit")
    with pytest.raises(ValueError, match="needs a timm-style backbone"):
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / "x.onnx", head="features")


def test_mismatch_fails_with_message(tmp_path, monkeypatch):
    """A graph that is wrong at the second size (here: the padded path disabled while tracing, so the
    export size's 'no padding' is baked in) is rejected with the failing check named."""
    import zoo.ops._dispatch as dispatch

    monkeypatch.setattr(dispatch.torch.compiler, "is_exporting", lambda: False)
    monkeypatch.setattr(dispatch, "_is_exporting", lambda: False)
    with pytest.raises(ExportError, match=r"torchscript: onnxruntime does not match PyTorch: input 2x3x\d+x\d+"):
        export_onnx("agent_swin_nano", tmp_path / "bad.onnx", exporter="torchscript")
    assert not (tmp_path / "bad.onnx").exists()


# --------------------------------------------------------------------------------------------- CLI
def test_cli(tmp_path, capsys, load_tool):
    cli = load_tool("export")
    out = tmp_path / "m.onnx"
    assert cli.main(["dinat_nano", "-o", str(out), "--img-size", "64", "--num-classes", "5",
                     "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "exporter torchscript" in text and "max abs" in text and "ok" in text
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["ok"] and rec["max_abs"] <= 1e-4 and rec["file_size"] == out.stat().st_size
    assert cli.main(["dinat_nanoo", "-o", str(out)]) == 1
    assert "did you mean dinat_nano" in capsys.readouterr().err
    sd = tmp_path / "w.pth"
    torch.save({}, sd)
    assert cli.main([str(sd), "-o", str(out)]) == 1
    assert "name the architecture" in capsys.readouterr().err


def test_cli_recipe_checkpoint(tmp_path, capsys, load_tool):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"")
    cli = load_tool("export")
    if importlib.util.find_spec("recipes.checkpoint") is None:
        assert cli.main([str(ckpt), "-o", str(tmp_path / "x.onnx")]) == 1
        assert "recipes/checkpoint.py is not available" in capsys.readouterr().err
    else:
        pytest.skip("recipes.checkpoint exists: the recipe tests cover .ckpt export")


# ------------------------------------------------------------------------------- other exporters
@heavy
def test_export_dynamo(tmp_path):
    report = export_onnx("nat_nano", tmp_path / "dy.onnx", exporter="dynamo", img_size=96, num_classes=10)
    _check_report(report)
    assert report.exporter == "dynamo" and report.backend == "reference"


@heavy
@pytest.mark.parametrize("arch", ["UPerNet", "FPN"])
def test_export_smp_segmentation(arch, tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = getattr(smp, arch)(encoder_name="tu-crossformer_nano", encoder_weights=None, classes=5).eval()
    # smp needs multiples of 32; at 256 and 288x320 every CrossFormer stage map is larger than the group (7)
    report = export_onnx(model, tmp_path / "seg.onnx", img_size=256, check_sizes=[(256, 256), (288, 320)])
    assert report.ok and report.max_abs <= 1e-4, report.summary()
    assert report.checks[-1].output_shapes == [(2, 5, 288, 320)]
    # UPerNet's PSP pools (AdaptiveAvgPool2d to 2, 3, 6) are exported as pooling-matrix products
    assert report.replaced_pools == (3 if arch == "UPerNet" else 0)


@heavy
def test_export_torchvision_faster_rcnn(tmp_path):
    """torchvision Faster R-CNN (FPN) over a zoo backbone exports with the TorchScript exporter (torchvision
    ships ONNX support for its detection ops); batch 1 image per call, dynamic H/W."""
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = timm.create_model("nat_nano", features_only=True)
            self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), 64, extra_blocks=LastLevelMaxPool())
            self.out_channels = 64

        def forward(self, x):
            return self.fpn({str(i): f for i, f in enumerate(self.body(x))})

    class Detector(nn.Module):  # [1, 3, H, W] -> boxes, labels, scores
        def __init__(self):
            super().__init__()
            self.det = FasterRCNN(Backbone(), num_classes=5, min_size=200, max_size=320).eval()

        def forward(self, x):
            out = self.det(list(x))[0]
            return out["boxes"], out["labels"], out["scores"]

    torch.manual_seed(0)
    report = export_onnx(Detector().eval(), tmp_path / "frcnn.onnx", img_size=(200, 240), dynamic_batch=False,
                         check_sizes=[(200, 240), (232, 280)], atol=1e-3, rtol=1e-4)
    assert report.ok and report.exporter == "torchscript", report.summary()
    assert report.output_names == ["output.0", "output.1", "output.2"]


def test_zoo_list_models_nonempty():
    assert "nat_nano" in zoo.list_models()
