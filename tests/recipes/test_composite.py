"""Scenes composited from real objects (recipes/data/composite.py, tools/make_scenes.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes.data.coco import CocoDetection
from recipes.data.composite import FASHION_MNIST_CLASSES, SceneConfig, load_fashion_mnist, write_scenes
from recipes.data.masks import MaskFolder

ROOT = Path(__file__).resolve().parents[2]
CFG = SceneConfig(size=64, max_items=3, max_scale=1.5)


@pytest.fixture(scope="module")
def fmnist() -> dict:
    """The subset the repository carries (data/fashion_mnist/*.npz): a checkout without it fails, not skips."""
    return load_fashion_mnist()


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(tmp_path: Path, fmnist: dict) -> None:
    write_scenes(tmp_path / "a", 4, 2, seed=3, cfg=CFG, fashion_mnist=fmnist)
    write_scenes(tmp_path / "b", 4, 2, seed=3, cfg=CFG, fashion_mnist=fmnist)
    write_scenes(tmp_path / "c", 4, 2, seed=4, cfg=CFG, fashion_mnist=fmnist)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    # scene i depends on (seed, split, i) only: a longer run starts with the same scenes
    write_scenes(tmp_path / "d", 6, 2, seed=3, cfg=CFG, fashion_mnist=fmnist)
    for i in range(4):
        name = f"images/training/scene_{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "d" / name).read_bytes()


def test_train_scenes_use_train_split_only(tmp_path: Path, fmnist: dict) -> None:
    # Relabel: train items only from classes 0-4, test items only from classes 5-9.
    xtr, ytr = fmnist["train"]
    xte, yte = fmnist["test"]
    data = {"train": (xtr[ytr < 5], ytr[ytr < 5]), "test": (xte[yte >= 5], yte[yte >= 5])}
    write_scenes(tmp_path, 10, 10, seed=0, cfg=CFG, fashion_mnist=data)
    train = json.loads((tmp_path / "instances_training.json").read_text())
    val = json.loads((tmp_path / "instances_validation.json").read_text())
    assert {a["category_id"] for a in train["annotations"]} <= {1, 2, 3, 4, 5}
    assert {a["category_id"] for a in val["annotations"]} <= {6, 7, 8, 9, 10}
    assert len(train["annotations"]) >= 10 and len(val["annotations"]) >= 10


def test_boxes_and_masks_come_from_the_items(tmp_path: Path, fmnist: dict) -> None:
    from pycocotools import mask as mask_utils

    meta = write_scenes(tmp_path, 6, 2, seed=1, cfg=CFG, fashion_mnist=fmnist)
    assert meta["segmentation_classes"] == ["background", *FASHION_MNIST_CLASSES]
    assert meta["num_classes"] == 11 and "composited from real objects" in meta["description"]
    doc = json.loads((tmp_path / "instances_training.json").read_text())
    assert [c["name"] for c in doc["categories"]] == list(FASHION_MNIST_CLASSES)
    for im in doc["images"]:
        semantic = np.asarray(Image.open(tmp_path / "annotations" / "training" / im["file_name"]))
        rebuilt = np.zeros_like(semantic)
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        for a in anns:
            m = mask_utils.decode(a["segmentation"]).astype(bool)
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert a["area"] == m.sum() >= 16
            assert not (rebuilt[m] > 0).any(), "instance masks overlap"
            rebuilt[m] = a["category_id"]
        np.testing.assert_array_equal(rebuilt, semantic)  # semantic mask = union of the instance masks
    # read back through the same code as user data
    ds = CocoDetection(tmp_path / "instances_training.json", tmp_path / "images" / "training", with_masks=True)
    assert sum(ds.skipped.values()) == 0
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["masks"].shape[1:] == (64, 64)
    assert len(MaskFolder(tmp_path / "images" / "validation", tmp_path / "annotations" / "validation")) == 2


def test_make_scenes_cli(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    mod = load_tool("make_scenes")
    assert mod.main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--size", "48", "--max-scale", "1.2"]) == 0
    assert "training: 2 scenes" in capsys.readouterr().out
    assert len(list((tmp_path / "images" / "training").glob("*.png"))) == 2
    with pytest.raises(SystemExit):
        mod.main(["--out", str(tmp_path), "--min-items", "3", "--max-items", "2"])


def test_fashion_mnist_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="idx"):
        load_fashion_mnist(tmp_path)
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(KeyError, match="x_train"):
        load_fashion_mnist(tmp_path / "bad.npz")
