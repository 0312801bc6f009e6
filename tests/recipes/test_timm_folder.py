"""A trained classifier leaves the recipe as a timm model folder (save_for_hf layout): timm rebuilds it from
``local-dir:`` with the same weights, and timm's data config (what its validate.py uses) reproduces the recipe's
eval transform with no hand-typed size, mean or std."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import zoo  # noqa: F401  (registers the zoo's models with timm)

NAMES = ["cat", "dog", "bird"]
MEAN, STD = (0.286, 0.286, 0.286), (0.353, 0.353, 0.353)


@pytest.fixture
def recipe_ckpt(tmp_path):
    from recipes.classification import ClassificationModule

    torch.manual_seed(0)
    module = ClassificationModule("nat_nano", num_classes=3, img_size=40)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=3, classes=NAMES))
    module.setup("fit")
    path = tmp_path / "cls.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": {"mean": MEAN, "std": STD, "interpolation": "bicubic"}}, path)
    return path, module.model.eval()


def test_timm_folder_roundtrip_and_data_config(recipe_ckpt, tmp_path, load_tool):
    from recipes.data.classification import build_transforms

    path, trained = recipe_ckpt
    folder = tmp_path / "model"
    assert load_tool("save_timm").main([str(path), "--out", str(folder)]) == 0
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "nat_nano" and cfg["num_classes"] == 3 and cfg["label_names"] == NAMES

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))

    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == (3, 40, 40) and data["crop_pct"] == 1.0 and data["interpolation"] == "bicubic"
    assert tuple(data["mean"]) == pytest.approx(MEAN) and tuple(data["std"]) == pytest.approx(STD)
    # timm's eval transform from the folder's config == the recipe's eval transform, on a real-sized image
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 31, 3), dtype=np.uint8))
    ours = build_transforms(40, train=False, mean=MEAN, std=STD, interpolation="bicubic")(img)
    theirs = timm.data.create_transform(**data)(img)
    torch.testing.assert_close(theirs, ours)


def test_timm_folder_refuses_a_detection_checkpoint(tmp_path):
    from recipes.checkpoint import save_timm_folder

    path = tmp_path / "det.ckpt"
    torch.save({"hyper_parameters": {"task": "detection", "model_name": "nat_nano", "num_classes": 2},
                "state_dict": {}}, path)
    with pytest.raises(ValueError, match="detection checkpoint"):
        save_timm_folder(path, tmp_path / "out")


def test_local_dir_without_weights_says_what_to_do(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "nat_nano", "num_classes": 3}))
    with pytest.raises(FileNotFoundError, match="save_timm|convert"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_preprocessing_the_datamodule_left_at_its_default_is_recorded(tmp_path):
    """A datamodule saves only the arguments it was given: a run that kept the default interpolation evaluated
    with "bilinear", and the folder must say so, not the model cfg's "bicubic" (timm's validate.py scored the
    main job's model 86.60% instead of the recipe's 87.05% with the model cfg's interpolation)."""
    from recipes.checkpoint import save_timm_folder
    from recipes.classification import ClassificationModule

    assert timm.create_model("nat_nano").pretrained_cfg["interpolation"] == "bicubic"
    module = ClassificationModule("nat_nano", num_classes=3, img_size=32)
    path = tmp_path / "cls.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": {"mean": MEAN, "std": STD, "img_size": 32}}, path)
    save_timm_folder(path, tmp_path / "m")
    pc = json.loads((tmp_path / "m" / "config.json").read_text())["pretrained_cfg"]
    assert pc["interpolation"] == "bilinear" and pc["input_size"] == [3, 32, 32] and pc["crop_pct"] == 1.0


# families whose network follows the size it is built for (MaxViT's window and grid, Agent-* position and agent
# biases, DiNAT's dilations); the recipe builds them at their default (224) and trains at its img_size
@pytest.mark.parametrize("name", ["maxvit_nano", "agent_swin_nano", "agent_pvt_t", "agent_deit_t", "dinat_nano"])
def test_folder_rebuilds_the_network_built_at_one_size_and_trained_at_another(name, tmp_path):
    """The folder of a model built at 224 and trained at 64 px rebuilds the 224 network (same outputs) and keeps
    64 px as its data config. Before the folder recorded the built size, timm rebuilt these models at the
    trained size: MaxViT/Agent-* failed on mis-shaped weights and DiNAT loaded with other dilations, giving other
    outputs without a word."""
    from recipes.checkpoint import save_timm_folder
    from recipes.classification import ClassificationModule

    torch.manual_seed(0)
    module = ClassificationModule(name, num_classes=3, img_size=64)
    assert module.model.img_size == (224, 224)  # the recipe's network is built at the model's default size
    path = tmp_path / "cls.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": {"mean": MEAN, "std": STD, "img_size": 64}}, path)
    folder = save_timm_folder(path, tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["model_args"]["img_size"] == [224, 224]

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), module.model.eval()(x), rtol=0, atol=0)
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, 64, 64)
