"""COCO-format detection data (recipes/data/coco.py) and the DeepForest conversion (tools/deepforest_to_coco.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.data.coco import CocoDataModule, CocoDetection, collate_detection

ROOT = Path(__file__).resolve().parents[2]
DEEPFOREST = ROOT / "data" / "deepforest"


# ------------------------------------------------------------------------------------------- DeepForest data


def test_deepforest_data_in_repo() -> None:
    train = json.loads((DEEPFOREST / "train.json").read_text())
    val = json.loads((DEEPFOREST / "val.json").read_text())
    assert (len(train["images"]), len(train["annotations"])) == (44, 777)
    assert (len(val["images"]), len(val["annotations"])) == (12, 400)
    assert train["categories"] == val["categories"] == [{"id": 1, "name": "tree", "supercategory": "plant"}]
    # split by source image, never by tile
    sources = {s: {im["source"] for im in d["images"]} for s, d in (("train", train), ("val", val))}
    assert sources["val"] == {"2019_YELL_2_541000_4977000_image_crop.png"}
    assert not sources["train"] & sources["val"] and len(sources["train"]) == 3
    for doc in (train, val):
        size = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
        assert all(w <= 400 and h <= 400 for w, h in size.values())
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            W, H = size[a["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= W + 1e-6 and y + h <= H + 1e-6 and w >= 2 and h >= 2
    im = train["images"][0]
    assert Image.open(DEEPFOREST / "images" / im["file_name"]).size == (im["width"], im["height"])
    notice = (DEEPFOREST / "NOTICE.md").read_text()
    assert "MIT License" in notice and "CC0" in notice and "NEON" in notice
    ds = CocoDetection(DEEPFOREST / "train.json", DEEPFOREST / "images")
    assert sum(ds.skipped.values()) == 0 and ds.num_classes == 1 and ds.class_names == ["tree"]


def test_deepforest_converter_tiles_and_splits(tmp_path: Path, load_tool) -> None:
    tool = load_tool("deepforest_to_coco")
    src = tmp_path / "deepforest" / "data"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def voc(stem: str, w: int, h: int, boxes: list) -> None:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"{stem}.png")
        objs = "".join(
            f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
            "</bndbox></object>" for a, b, c, d, n in boxes
        )
        (src / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>"
        )

    # 250x130 with tile 100 -> x origins 0, 100, 150; y origins 0, 30
    voc("big", 250, 130, [(10, 10, 40, 40, "Tree"), (90, 50, 120, 80, "Dead"), (140, 5, 160, 25, "Alive")])
    voc("small", 60, 50, [(5, 5, 20, 20, "Tree")])
    summary = tool.convert(tmp_path, tmp_path / "out", tile=100, quality=90, val_images=("small",))
    assert summary["train"]["big.png"]["tiles"] == 6 and summary["val"]["small.png"]["tiles"] == 1
    train = json.loads((tmp_path / "out" / "train.json").read_text())
    val = json.loads((tmp_path / "out" / "val.json").read_text())
    assert [im["offset"] for im in train["images"]] == [[0, 0], [100, 0], [150, 0], [0, 30], [100, 30], [150, 30]]
    assert {(im["width"], im["height"]) for im in train["images"]} == {(100, 100)}
    assert val["images"][0]["width"] == 60 and len(val["annotations"]) == 1
    first = [a for a in train["annotations"] if a["image_id"] == train["images"][0]["id"]]
    # tile (0,0): box 1 whole; box 2 (90..120) keeps 10/30 of its width < 50% -> dropped
    assert [a["bbox"] for a in first] == [[10, 10, 30, 30]]
    labels = {a["attributes"]["label"] for a in train["annotations"]}
    assert labels == {"Tree", "Dead", "Alive"} and {a["category_id"] for a in train["annotations"]} == {1}
    assert all(Image.open(tmp_path / "out" / "images" / im["file_name"]).format == "JPEG" for im in train["images"])
    with pytest.raises(FileNotFoundError, match="pip download"):
        tool.convert(tmp_path / "missing.whl", tmp_path / "out2")


# ------------------------------------------------------------------------------------------- bad annotations


def _write_coco(tmp_path: Path, anns: list, n_images: int = 2, unreadable: bool = False) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    entries = []
    for i in range(n_images):
        name = f"im{i}.png"
        Image.fromarray(np.full((40, 50, 3), 30 * i, dtype=np.uint8)).save(images / name)
        entries.append({"id": i + 1, "file_name": name, "width": 50, "height": 40})
    if unreadable:
        (images / "broken.png").write_bytes(b"not a png")
        entries.append({"id": 99, "file_name": "broken.png", "width": 50, "height": 40})
    doc = {"images": entries, "annotations": anns,
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path, images


def _ann(i: int, image_id: int, cat: int, bbox: list, **kw) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, **kw}


def test_bad_annotations_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    anns = [
        _ann(1, 1, 3, [5, 5, 10, 10]),           # good, label 1
        _ann(2, 1, 7, [0, 0, 50.5, 40]),         # within the 1 px tolerance -> clipped, label 2
        _ann(3, 1, 5, [5, 5, 10, 10]),           # unknown category
        _ann(4, 1, 3, [5, 5, 0, 10]),            # zero area
        _ann(5, 2, 3, [45, 5, 20, 10]),          # outside the image
        _ann(6, 2, 3, [-10, -10, 5, 5]),         # outside the image
        _ann(7, 2, 3, [1, 1, 5, 5], iscrowd=1),  # crowd: not a target
        _ann(8, 2, 3, None),                     # malformed box -> zero area
    ]
    path, images = _write_coco(tmp_path, anns, unreadable=True)
    with caplog.at_level(logging.WARNING, logger="recipes"):
        ds = CocoDetection(path, images)
    assert dict(ds.skipped) == {"unknown_category": 1, "zero_area": 2, "box_outside_image": 2, "crowd": 1}
    assert ds.skip_counter.value == 5
    assert "unknown_category" in caplog.text and "box_outside_image" in caplog.text
    image, target = ds[0]
    assert image.shape == (3, 40, 50) and float(image.max()) == 0.0
    torch.testing.assert_close(target["boxes"], torch.tensor([[5.0, 5, 15, 15], [0, 0, 50, 40]]))
    assert target["labels"].tolist() == [1, 2]
    assert ds[1][1]["boxes"].shape == (0, 4)  # an image left without boxes stays (a negative sample)
    with caplog.at_level(logging.WARNING, logger="recipes"):
        assert ds[2] is None  # unreadable
    assert ds.skip_counter.value == 6 and "broken.png" in caplog.text
    images_b, targets_b = collate_detection([ds[0], ds[2], ds[1]])
    assert len(images_b) == len(targets_b) == 2


def test_hflip_and_masks(tmp_path: Path) -> None:
    poly = [[10, 10, 20, 10, 20, 30, 10, 30]]
    anns = [_ann(1, 1, 3, [10, 10, 10, 20], segmentation=poly), _ann(2, 1, 7, [30, 5, 5, 5])]
    path, images = _write_coco(tmp_path, anns, n_images=1)
    plain = CocoDetection(path, images, with_masks=True)[0][1]
    flipped = CocoDetection(path, images, with_masks=True, hflip=1.0)[0][1]
    assert plain["masks"].shape == (2, 40, 50) and int(plain["masks"][0].sum()) == 200
    assert int(plain["masks"][1].sum()) == 25  # no segmentation: the box is the mask
    torch.testing.assert_close(flipped["boxes"], torch.tensor([[30.0, 10, 40, 30], [15, 5, 20, 10]]))
    torch.testing.assert_close(flipped["masks"], plain["masks"].flip(-1))


def test_clear_errors(tmp_path: Path) -> None:
    path, images = _write_coco(tmp_path, [])
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found"):
        CocoDetection(tmp_path / "nope.json", images)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoDetection(path, tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="val images"):
        CocoDataModule(str(path), str(images), str(path), str(tmp_path / "nope"))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="empty dataset"):
        CocoDetection(empty, images)
    notcoco = tmp_path / "x.json"
    notcoco.write_text("{}")
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoDetection(notcoco, images)
    other = tmp_path / "other.json"
    doc = json.loads(path.read_text())
    doc["categories"] = [{"id": 3, "name": "cat"}]
    other.write_text(json.dumps(doc))
    dm = CocoDataModule(str(path), str(images), str(other), str(images))
    with pytest.raises(ValueError, match="differ from train categories"):
        dm.setup("fit")


def test_datamodule_loaders(tmp_path: Path) -> None:
    path, images = _write_coco(tmp_path, [_ann(1, 1, 3, [5, 5, 10, 10]), _ann(2, 2, 99, [1, 1, 4, 4])], n_images=3)
    dm = CocoDataModule(str(path), str(images), str(path), str(images), batch_size=2, hflip=0.0)
    dm.setup("fit")
    assert dm.num_classes == 2 and dm.class_names == ["cat", "dog"] and dm.category_ids == [3, 7]
    assert dm.skipped_counts()["unknown_category"] == 2  # counted in train and val
    imgs, targets = next(iter(dm.val_dataloader()))
    assert len(imgs) == 2 and targets[0]["labels"].tolist() == [1]
    assert len(dm.test_dataloader().dataset) == 3  # test falls back to val


def test_image_whose_size_disagrees_with_the_json_is_skipped_and_named(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a json width/height that disagreed with the image crashed training inside torchvision
    without naming the file."""
    path, images = _write_coco(tmp_path, [_ann(1, 1, 3, [5, 5, 10, 10]), _ann(2, 2, 3, [5, 5, 10, 10])])
    doc = json.loads(path.read_text())
    doc["images"][1]["width"] = 60  # im1.png is 50x40
    path.write_text(json.dumps(doc))
    dm = CocoDataModule(str(path), str(images), str(path), str(images), batch_size=2, hflip=0.0,
                        max_skip_fraction=1.0)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="recipes"):
        assert dm.train_set[0] is not None and dm.train_set[1] is None
        assert dm.train_set[1] is None  # read again (next epoch): counted once
    (rec,) = dm.skip_counter.records()
    assert rec["reason"] == "size_mismatch" and rec["key"].endswith("im1.png") and rec["split"] == "train"
    assert "says 60x40" in rec["detail"] and "decodes to 50x40" in rec["detail"]
    assert "im1.png" in caplog.text and dm.skip_counter.value == 1
    imgs, targets = next(iter(dm.val_dataloader()))
    assert len(imgs) == 1 and dm.skip_counter.skipped("val") == 1


def test_detection_train_batches_are_never_of_size_one(tmp_path: Path) -> None:
    path, images = _write_coco(tmp_path, [], n_images=3, unreadable=True)  # 4 images, one unreadable
    dm = CocoDataModule(str(path), str(images), batch_size=2, hflip=0.0, max_skip_fraction=1.0)
    dm.setup("fit")
    sizes = [len(b[0]) for _ in range(6) for b in dm.train_dataloader()]
    assert len(sizes) == 12 and 1 not in sizes and 0 in sizes  # the batch left with one image is dropped
    assert collate_detection([None, dm.train_set[0]], min_size=1)[0]  # evaluation keeps a single image


# ------------------------------------------------------------------------------------------- torchvision pipeline


def test_flip_of_fractional_boxes_equals_the_hand_computed_one(tmp_path: Path) -> None:
    """The flip is torchvision's ``RandomHorizontalFlip`` on ``BoundingBoxes``: x -> W - x, here computed by hand;
    the dataset hands out plain float32 tensors (no ``tv_tensors`` types) as the detection module expects."""
    anns = [_ann(1, 1, 3, [2.5, 4.25, 10.5, 7]), _ann(2, 1, 7, [40, 30, 10.5, 10])]  # 2nd: clipped to x1 = 50
    path, images = _write_coco(tmp_path, anns, n_images=1)
    plain_image, plain = CocoDetection(path, images)[0]
    image, flipped = CocoDetection(path, images, hflip=1.0)[0]
    W = 50.0
    expect = torch.tensor([[W - 13.0, 4.25, W - 2.5, 11.25], [W - 50.0, 30, W - 40.0, 40]])
    torch.testing.assert_close(flipped["boxes"], expect)
    torch.testing.assert_close(plain["boxes"], torch.tensor([[2.5, 4.25, 13.0, 11.25], [40, 30, 50, 40]]))
    for t in (image, plain_image, flipped["boxes"], flipped["labels"]):
        assert type(t) is torch.Tensor
    assert image.dtype == flipped["boxes"].dtype == torch.float32 and flipped["labels"].tolist() == [1, 2]
    torch.testing.assert_close(image, plain_image.flip(-1))
    assert flipped["image_id"] == 1 and isinstance(flipped["image_id"], int)


def test_box_under_one_pixel_after_clipping_is_counted_as_zero_area(tmp_path: Path) -> None:
    """``SanitizeBoundingBoxes`` drops sides under 1 px; the json check counts them first, so nothing vanishes
    uncounted: a box 0.5 px wide once clipped to the image is ``zero_area``, a 1 px one is kept."""
    anns = [_ann(1, 1, 3, [49.5, 5, 1.2, 10]), _ann(2, 1, 3, [0, 0, 0.5, 10]), _ann(3, 1, 3, [10, 10, 1, 1])]
    path, images = _write_coco(tmp_path, anns, n_images=1)
    ds = CocoDetection(path, images)
    assert dict(ds.skipped) == {"zero_area": 2} and ds.skip_counter.value == 2
    torch.testing.assert_close(ds[0][1]["boxes"], torch.tensor([[10.0, 10, 11, 11]]))


def test_box_a_transform_makes_degenerate_is_dropped_and_counted(tmp_path: Path) -> None:
    """A transform that moves boxes (here a crop, as a user's pipeline could add) can leave a box under 1 px:
    ``SanitizeBoundingBoxes`` removes it with its label and mask, and the dataset records it."""
    from torchvision.transforms import v2

    anns = [_ann(1, 1, 3, [5, 5, 10, 10]), _ann(2, 1, 7, [30, 5, 10, 10])]
    path, images = _write_coco(tmp_path, anns, n_images=1)
    ds = CocoDetection(path, images, with_masks=True)
    from torchvision import tv_tensors

    crop = v2.Lambda(lambda t: v2.functional.crop(t, 0, 0, 40, 20),  # keeps x < 20: box 2 is cut to nothing
                     tv_tensors.Image, tv_tensors.BoundingBoxes, tv_tensors.Mask)
    ds.transforms = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), crop, v2.ClampBoundingBoxes(),
                                v2.SanitizeBoundingBoxes()])
    image, target = ds[0]
    assert image.shape == (3, 40, 20) and target["labels"].tolist() == [1] and target["masks"].shape == (1, 40, 20)
    (rec,) = ds.skip_counter.records()
    assert rec["reason"] == "degenerate_box" and rec["split"] == "train/annotations" and rec["key"].endswith("im0.png")


def test_image_without_annotations_has_empty_targets_with_masks(tmp_path: Path) -> None:
    path, images = _write_coco(tmp_path, [_ann(1, 1, 3, [5, 5, 10, 10])], n_images=2)
    image, target = CocoDetection(path, images, with_masks=True, hflip=1.0)[1]
    assert image.shape == (3, 40, 50) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 40, 50) and target["masks"].dtype == torch.uint8
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64


def test_16bit_image_is_read_with_to_rgb(tmp_path: Path) -> None:
    """torchvision's own loader (``convert("RGB")``) clips 16-bit grey to white; the dataset reads with
    ``recipes.data.images.to_rgb`` instead (0..65535 scaled to 0..255)."""
    path, images = _write_coco(tmp_path, [], n_images=1)
    Image.fromarray(np.full((40, 50), 32896, dtype=np.uint16)).save(images / "im0.png")  # 32896 / 257 = 128
    image, _ = CocoDetection(path, images)[0]
    torch.testing.assert_close(image, torch.full((3, 40, 50), 128 / 255))
