"""tools/predict.py: recipe checkpoints of the three tasks, ONNX files and timm names -> JSON + drawn images;
and the LightningCLI ``predict`` subcommand (tools/train.py) of every recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo  # noqa: F401  (registers the zoo models in timm)
from recipes.classification import ClassificationModule
from recipes.detection import DetectionModule
from recipes.segmentation import SegmentationModule

FAST = dict(rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20, box_detections_per_img=10)
NAMES = ["bg", "a", "b", "c"]


@pytest.fixture(scope="module")
def scenes(make_scenes) -> Path:
    return make_scenes(4, 3)


def _ckpt(module: torch.nn.Module, path: Path) -> Path:
    """A recipe checkpoint as tools/train.py writes it (hyper_parameters + state_dict), without a trainer."""
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def _run(load_tool, argv: list[str], capsys) -> tuple[dict, str]:
    assert load_tool("predict").main(argv) == 0
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "predictions.json").read_text()), capsys.readouterr().out


def test_classification_checkpoint_topk_names_drawn_and_grid(tmp_path, load_tool, capsys):
    torch.manual_seed(0)
    module = ClassificationModule("crossformer_nano", num_classes=3, img_size=32)
    ckpt = _ckpt(module, tmp_path / "cls.ckpt")
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, size in enumerate([(28, 28), (40, 30)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            folder / ("sub" if i else "") / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image")
    doc, printed = _run(load_tool, [str(ckpt), str(folder), "--out", str(tmp_path / "o"), "--topk", "2",
                                    "--class-names", "cat,dog,fish"], capsys)
    assert doc["task"] == "classification" and len(doc["predictions"]) == 2
    top = doc["predictions"][0]["top"]
    assert len(top) == 2 and top[0]["score"] >= top[1]["score"] and top[0]["name"] in ("cat", "dog", "fish")
    # the same probabilities as the module on the same preprocessing (resize to 32, ImageNet mean/std)
    from recipes.data.classification import build_transforms
    tf = build_transforms(32, False, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        probs = module.eval()(tf(Image.open(folder / "im0.png").convert("RGB"))[None]).softmax(-1)[0]
    assert top[0]["label"] == int(probs.argmax()) and abs(top[0]["score"] - float(probs.max())) < 1e-4
    assert Path(doc["predictions"][1]["drawn_png"]).is_file() and Path(doc["grid_png"]).is_file()
    assert "im0.png:" in printed


def test_detection_checkpoint_boxes_labels_scores(scenes, tmp_path, load_tool, capsys):
    torch.manual_seed(0)
    module = DetectionModule("nat_nano", "fasterrcnn", num_classes=3, fpn_channels=16, min_size=64, max_size=64,
                             anchor_sizes=(8, 16, 32, 64, 128), detector_kwargs=FAST, class_names=NAMES[1:])
    # a detector that fires everywhere: large objectness / class biases make proposals and boxes score high
    with torch.no_grad():
        module.model.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-5.0, 5.0, 0.0, 0.0]))
    ckpt = _ckpt(module, tmp_path / "det.ckpt")
    images = scenes / "images" / "validation"
    doc, _ = _run(load_tool, [str(ckpt), str(images), "--out", str(tmp_path / "o"), "--score-threshold", "0.5"],
                  capsys)
    assert doc["task"] == "detection" and doc["class_names"] == NAMES[1:]
    recs = doc["predictions"]
    assert len(recs) == 3 and any(r["boxes"] for r in recs)
    for r in recs:
        assert len(r["boxes"]) == len(r["labels"]) == len(r["scores"]) == len(r["names"])
        assert all(s >= 0.5 for s in r["scores"]) and all(n == "a" for n in r["names"])
        assert all(0 <= b[0] <= b[2] <= 64 and 0 <= b[1] <= b[3] <= 64 for b in r["boxes"])
        drawn = np.asarray(Image.open(r["drawn_png"]))
        assert drawn.shape == (128, 128, 3)  # 64 px scenes are drawn at 2x
    assert Path(doc["grid_png"]).is_file()


def test_segmentation_checkpoint_masks(scenes, tmp_path, load_tool, capsys):
    torch.manual_seed(0)
    module = SegmentationModule("nat_nano", "upernet", num_classes=4, head_kwargs={"decoder_channels": 16},
                                class_names=NAMES)
    ckpt = _ckpt(module, tmp_path / "seg.ckpt")
    image = scenes / "images" / "validation" / "scene_000000.png"
    doc, printed = _run(load_tool, [str(ckpt), str(image), "--out", str(tmp_path / "o")], capsys)
    (rec,) = doc["predictions"]
    label_map = np.asarray(Image.open(rec["mask_png"]))
    assert label_map.shape == (64, 64) and label_map.max() < 4
    assert sum(c["pixels"] for c in rec["classes"]) == 64 * 64
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(np.asarray(Image.open(image), dtype=np.float32) / 255)
                                 .permute(2, 0, 1)[None]).argmax(1)[0].numpy()
    assert (label_map == expected).mean() > 0.999
    assert "grid_png" not in doc and Path(rec["drawn_png"]).is_file()


def test_onnx_with_zoo_metadata_matches_checkpoint(tmp_path, load_tool, capsys):
    from recipes.predictions import write_onnx_metadata
    from zoo.export import export_onnx

    torch.manual_seed(0)
    module = ClassificationModule("crossformer_nano", num_classes=3, img_size=32)
    ckpt = _ckpt(module, tmp_path / "cls.ckpt")
    onnx_path = tmp_path / "cls.onnx"
    export_onnx(module.model.eval(), onnx_path, img_size=32, batch_size=2, check_sizes=[(32, 32)])
    write_onnx_metadata(onnx_path, "classification", ["x", "y", "z"], img_size=32, mean=[0.485, 0.456, 0.406],
                        std=[0.229, 0.224, 0.225])
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(img)
    a, _ = _run(load_tool, [str(ckpt), str(img), "--out", str(tmp_path / "a"), "--class-names", "x,y,z"], capsys)
    b, _ = _run(load_tool, [str(onnx_path), str(img), "--out", str(tmp_path / "b")], capsys)
    ta, tb = a["predictions"][0]["top"], b["predictions"][0]["top"]
    assert [t["name"] for t in ta] == [t["name"] for t in tb]
    assert max(abs(x["score"] - y["score"]) for x, y in zip(ta, tb)) < 1e-4


def test_timm_name_with_imagenet_names(tmp_path, load_tool, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((50, 60, 3), dtype=np.uint8)).save(img)
    doc, _ = _run(load_tool, ["nat_nano", str(img), "--out", str(tmp_path / "o"), "--img-size", "64"], capsys)
    top = doc["predictions"][0]["top"]
    assert len(top) == 5 and len(doc["class_names"]) == 1000 and top[0]["name"] == doc["class_names"][top[0]["label"]]


def test_errors_say_what_was_wrong(tmp_path, load_tool):
    predict = load_tool("predict")
    with pytest.raises(SystemExit, match="does not exist"):
        predict.main(["nat_nano", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no images"):
        predict.main(["nat_nano", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(img)
    with pytest.raises(SystemExit, match="--checkpoint"):
        predict.main([str(weights), str(img), "--out", str(tmp_path / "o")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SystemExit, match="none of the inputs"):
        predict.main(["nat_nano", str(bad), "--out", str(tmp_path / "o"), "--img-size", "32"])


# ---------------------------------------------------------------------------------------- LightningCLI predict
def _cli_config(tmp_path: Path, scenes: Path, task: str) -> Path:
    run = tmp_path / "run"
    trainer = (f"trainer: {{default_root_dir: {run}, accelerator: cpu, max_steps: 1, limit_val_batches: 1, "
               "limit_predict_batches: 2, enable_model_summary: false, num_sanity_val_steps: 0}")
    if task == "classification":
        body = """model:
  class_path: recipes.classification.ClassificationModule
  init_args: {model_name: test_resnet, num_classes: 10, img_size: 32}
data:
  class_path: recipes.data.NpzData
  init_args: {num_classes: 10, img_size: 32, batch_size: 4, eval_batch_size: 4, num_workers: 0, train_limit: 8}"""
    elif task == "detection":
        body = f"""model:
  class_path: recipes.detection.DetectionModule
  init_args: {{model_name: nat_nano, num_classes: 10, fpn_channels: 16, min_size: 64, max_size: 64,
               anchor_sizes: [8, 16, 32, 64, 128], detector_kwargs: {FAST}}}
data:
  class_path: recipes.data.coco.CocoDataModule
  init_args: {{train_json: {scenes}/instances_training.json, train_images: {scenes}/images/training,
               val_json: {scenes}/instances_validation.json, val_images: {scenes}/images/validation,
               batch_size: 2, max_train_images: 2}}"""
    else:
        body = f"""model:
  class_path: recipes.segmentation.SegmentationModule
  init_args: {{model_name: nat_nano, num_classes: 11, head_kwargs: {{decoder_channels: 16}}}}
data:
  class_path: recipes.data.masks.MaskFolderDataModule
  init_args: {{root: {scenes}, crop_size: [64, 64], batch_size: 2, max_train_images: 2}}"""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"seed_everything: 0\nno_progress_bar: true\n{trainer}\n{body}\n")
    return cfg


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_cli_predict_every_recipe_keeps_the_fit_config(task, scenes, tmp_path, load_tool):
    train = load_tool("train")
    cfg = _cli_config(tmp_path, scenes, task)
    train.main(["fit", "--config", str(cfg)])
    logs = tmp_path / "run" / "logs"
    fit_text = (logs / "config.yaml").read_text()
    train.main(["predict", "--config", str(cfg), "--ckpt_path", "last"])
    assert (logs / "config.yaml").read_text() == fit_text and (logs / "config-predict.yaml").is_file()
    doc = json.loads((tmp_path / "run" / "predictions" / "predictions.json").read_text())
    assert doc["task"] == task
    n = {"classification": 8, "detection": 3, "segmentation": 2}[task]  # 2 batches of the predict split
    assert len(doc["predictions"]) == n
    key = {"classification": "top", "detection": "boxes", "segmentation": "classes"}[task]
    assert all(key in r for r in doc["predictions"])
