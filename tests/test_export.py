"""ONNX export (zoo.export, tools/export.py): every family exports with dynamic batch and H/W and matches
PyTorch in onnxruntime (rtol/atol 1e-4, fp32) at two batch sizes and two input sizes; bad input gets a clear
error. Heavy cases (tiny variants, the dynamo exporter, segmentation/detection heads) carry the ``heavy``
mark: ``pytest -m "not heavy" tests/test_export.py`` runs the quick set."""

from __future__ import annotations

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
    """One thread, and the same random weights whatever ran before in this process (pytest-xdist workers run
    tests in varying orders). One CI run saw biformer_nano's export refuse (ORT vs PyTorch 8e-4 at 2x100x75)
    with weights drawn after other tests; it did not recur alone or with seeds 0-5 (suspected: near-tied
    top-k routing scores on random weights). A fixed seed keeps each test's model the same in every run."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(prev)


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


@pytest.mark.parametrize(
    "name", QUICK + [pytest.param(n, marks=heavy) for n in TINY]
)
def test_export_family_dynamic(name, tmp_path):
    """Exported at 224, right in onnxruntime from 0.25x to 2x the export size (and 33x47)."""
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
def test_export_parity_reduced(case_name, tmp_path, parity_model):
    case = json.loads((PARITY / case_name / "case.json").read_text())
    model = parity_model(case).eval()
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
    import zoo.ops.sizes as sizes

    # the blocks' "are we tracing?" (zoo.ops.is_tracing) answers no; the dispatcher still picks portable paths
    monkeypatch.setattr(sizes.torch.compiler, "is_exporting", lambda: False)
    monkeypatch.setattr(sizes, "is_torchscript", lambda: False)
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
    # an empty (truncated) recipe checkpoint: a one-line error naming the file, exit 1, no file written
    assert cli.main([str(ckpt), "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "unreadable as a checkpoint" in err
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------- other exporters
@heavy
@pytest.mark.parametrize("name", ["nat_nano", "dinat_nano", "biformer_nano", "agent_pvt_t", "agent_deit_t"])
def test_export_dynamo(name, tmp_path):
    """These families stay dynamic in H/W through torch.export: right far from the export size (docs/onnx.md)."""
    report = export_onnx(name, tmp_path / "dy.onnx", exporter="dynamo", img_size=96, num_classes=10)
    _check_report(report)
    assert report.exporter == "dynamo" and report.backend == "reference"


@pytest.mark.parametrize("name, dim", [
    *[(n, d) for n in ("crossformer_nano", "maxvit_nano") for d in ("DYNAMIC", "AUTO", "named")],
    ("agent_swin_nano", "DYNAMIC"),  # (traces three agent stages before its window stage: slower)
])
def test_torch_export_dynamic_hw_refused_where_it_would_specialise(name, dim):
    """Window/grid attention cannot keep H/W symbolic under torch.export (it would specialise them to the
    example: a silently wrong graph with Dim.AUTO/DYNAMIC); the model refuses and points to tools/export.py."""
    from torch.export import Dim

    model = timm.create_model(name, num_classes=10).eval()
    d = {"DYNAMIC": lambda n: Dim.DYNAMIC, "AUTO": lambda n: Dim.AUTO, "named": lambda n: Dim(n)}[dim]
    with pytest.raises(zoo.ops.DynamicSizeExportError, match="tools/export.py"):
        torch.export.export(model, (torch.randn(2, 3, 64, 64),),
                            dynamic_shapes={"x": {0: d("b"), 2: d("h"), 3: d("w")}})


def test_torch_onnx_dynamo_export_refuses_with_a_pointer(tmp_path):
    """torch.onnx.export(dynamo=True, dynamic_shapes=...), the route a user reaches first, used to write a file
    silently fixed at the example size for CrossFormer; it now fails (both torch.export attempts, non-strict and
    strict) with the message that points to tools/export.py, and writes nothing."""
    from torch.export import Dim

    model = timm.create_model("crossformer_nano", num_classes=10).eval()
    path = tmp_path / "cf.onnx"
    with pytest.raises(Exception, match="tools/export.py"):
        torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(path), dynamo=True,
                          dynamic_shapes={"x": {0: Dim("b"), 2: Dim("h"), 3: Dim("w")}})
    assert not path.exists()


def test_torch_export_static_hw_is_not_refused():
    """Static H/W (dynamic batch only) exports and matches eager at the export size."""
    from torch.export import Dim

    model = timm.create_model("crossformer_nano", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: Dim("b", max=64), 2: None, 3: None}})
    y = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(y), model(y), **TOL)


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


# ------------------------------------------------------------------ metadata, runner, fp16, int8, optimised
@pytest.fixture(scope="module")
def nano_export(tmp_path_factory):
    """nat_nano exported at 64 px (5 classes) with onnxruntime's optimised graph saved next to it."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tmp = tmp_path_factory.mktemp("meta")
        report = export_onnx("nat_nano", tmp / "m.onnx", img_size=64, num_classes=5,
                             optimized_path=tmp / "m.opt.onnx")
    finally:
        torch.set_num_threads(prev)
    return report


def test_metadata_in_file(nano_export):
    """What a runtime user would otherwise guess is in the file, as zoo.* metadata_props."""
    import onnxruntime as ort

    from zoo.export import read_metadata

    report = nano_export
    cfg = timm.create_model("nat_nano").pretrained_cfg
    meta = read_metadata(report.path)
    assert meta["model"] == "nat_nano" and meta["task"] == "classification" and meta["num_classes"] == 5
    assert meta["input_size"] == [3, 64, 64] and meta["img_size"] == 64
    assert meta["mean"] == list(cfg["mean"]) and meta["std"] == list(cfg["std"])
    assert meta["interpolation"] == cfg["interpolation"] and meta["crop_pct"] == cfg["crop_pct"]
    assert meta["crop_mode"] == cfg.get("crop_mode", "center")
    assert meta["opset"] == 18 and meta["exporter"] == "torchscript" and meta["precision"] == "fp32"
    assert meta["version"] == zoo.__version__ and meta["torch_version"] == torch.__version__
    assert meta["onnxruntime_version"] == ort.__version__
    # the valid size range: the minimum, the sizes actually checked, dynamic H/W, and no claimed upper bound
    assert meta["dynamic_hw"] is True and meta["dynamic_batch"] is True
    assert meta["min_size"] == list(cfg.get("min_input_size", (3, 32, 32))[-2:])
    assert meta["verified_sizes"] == [list(s) for s in dict.fromkeys(c.shape[2:] for c in report.checks)]
    assert "no upper bound" in meta["size_note"] and "max_size" not in meta
    assert report.metadata == meta
    # other runtimes see the same entries
    custom = ort.InferenceSession(report.path).get_modelmeta().custom_metadata_map
    assert custom["zoo.model"] == "nat_nano" and json.loads(custom["zoo.min_size"]) == meta["min_size"]


def test_runner_enforces_min_size(nano_export):
    import numpy as np

    from zoo.export import OnnxRunner

    run = OnnxRunner(nano_export.path)
    assert run(np.zeros((2, 3, 40, 56), np.float32))[0].shape == (2, 5)
    with pytest.raises(ValueError, match=r"input 16x40 is smaller than the model's minimum size 32x32.*resize"):
        run(np.zeros((1, 3, 16, 40), np.float32))
    with pytest.raises(ValueError, match="has 1 channels; the model takes 3"):
        run(torch.zeros(1, 1, 64, 64))


def test_optimized_graph_runs(nano_export):
    """--optimized: onnxruntime's optimised graph is written, verified at the same sizes, and runs."""
    import onnxruntime as ort

    from zoo.export import read_metadata

    report = nano_export
    opt = Path(report.optimized_path)
    assert opt.is_file() and report.optimized_checks and all(c.ok for c in report.optimized_checks)
    assert len(report.optimized_checks) == len(report.checks)
    x = torch.randn(2, 3, 72, 50)
    outs = [ort.InferenceSession(p).run(None, {"input": x.numpy()})[0] for p in (report.path, str(opt))]
    torch.testing.assert_close(torch.from_numpy(outs[1]), torch.from_numpy(outs[0]), **TOL)
    assert read_metadata(opt)["ort_optimization"] == "extended"


def test_fp16_at_64_right_at_far_sizes(tmp_path):
    """--fp16 at 64 px (BiFormer used to be refused: the TorchScript exporter's bool-mask SDPA mixed float32
    into the half graph): the fp32 graph converted by onnxruntime's float16 converter, checked at 32, 128 and an
    odd non-square size against fp32 PyTorch."""
    from zoo.export import read_metadata

    report = export_onnx("biformer_nano", tmp_path / "bf16.onnx", img_size=64, fp16=True, num_classes=10)
    assert report.ok and report.precision == "fp16", report.summary()
    sizes = {c.shape[2:] for c in report.checks}
    assert {(64, 64), (32, 32), (128, 128)} <= sizes and any(h % 2 and w % 2 and h != w for h, w in sizes)
    assert report.max_abs < 5e-2 and report.atol == 5e-2
    model = onnx.load(report.path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert read_metadata(report.path)["precision"] == "fp16"


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_verified_and_smaller(mode, tmp_path):
    """int8 through onnxruntime.quantization: the fp32 file is verified, quantized and verified again (relative
    L2 error of the logits <= 0.1 at every checked size, on Fashion-MNIST images that did not calibrate)."""
    from zoo.export import OnnxRunner, read_metadata

    report = export_onnx("nat_nano", tmp_path / "q.onnx", img_size=64, num_classes=10, int8=mode,
                         calibration="fashion_mnist", calibration_count=32)
    assert report.ok and report.precision == f"int8-{mode}", report.summary()
    assert report.fp32_checks and all(c.ok for c in report.fp32_checks)
    assert len(report.checks) == 4 and all(c.rel_l2 is not None and c.rel_l2 <= 0.1 for c in report.checks)
    assert all(c.top1_agree is not None for c in report.checks)
    assert report.file_size < 0.6 * report.fp32_file_size
    model = onnx.load(report.path)
    ops = {n.op_type for n in model.graph.node}
    assert ops & ({"DynamicQuantizeLinear", "MatMulInteger"} if mode == "dynamic" else {"QuantizeLinear"}), ops
    meta = read_metadata(report.path)
    assert meta["precision"] == f"int8-{mode}" and meta["quantization"]["mode"] == mode
    assert meta["tolerance"] == "rel L2 <= 0.1 (int8)"
    if mode == "static":
        assert meta["quantization"]["calibration_images"] == 32
    assert OnnxRunner(report.path)(torch.zeros(1, 3, 48, 48))[0].shape == (1, 10)


def test_int8_static_needs_calibration(tmp_path):
    with pytest.raises(ValueError, match="int8='static' needs calibration images"):
        export_onnx("nat_nano", tmp_path / "q.onnx", int8="static")
    with pytest.raises(ValueError, match="fp16 or int8, not both"):
        export_onnx("nat_nano", tmp_path / "q.onnx", int8="dynamic", fp16=True)


def test_cli_recipe_checkpoint_class_names(tmp_path, capsys, load_tool):
    """The classification recipe records the data's class names (hparam class_names, saved in the checkpoint);
    tools/export.py writes them and the data's mean/std into the file and prints the metadata."""
    from types import SimpleNamespace

    from recipes.classification import ClassificationModule
    from zoo.export import read_metadata

    names = ["cat", "dog", "bird"]
    torch.manual_seed(0)
    module = ClassificationModule("nat_nano", num_classes=3, img_size=32)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=3, classes=names))
    module.setup("fit")
    assert module.hparams.class_names == names
    ckpt = tmp_path / "cls.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}}, ckpt)
    out = tmp_path / "cls.onnx"
    assert load_tool("export").main([str(ckpt), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "metadata (zoo.export.read_metadata)" in text and '["cat", "dog", "bird"]' in text
    meta = read_metadata(out)
    assert meta["class_names"] == names and meta["num_classes"] == 3 and meta["model"] == "nat_nano"
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.25, 0.25, 0.25] and meta["crop_pct"] == 1.0
    assert meta["task"] == "classification" and meta["input_size"] == [3, 32, 32]
