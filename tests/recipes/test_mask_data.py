"""recipes/data/masks.py's torchvision.transforms.v2 pipeline: one random draw moves image and mask together,
masks are resized with nearest neighbours (class indices only, never blends), padding is ignore (255)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.data.masks import IGNORE_INDEX, MaskFolder


def _stripes(root: Path, h: int = 30, w: int = 40) -> None:
    """One image whose red channel is its mask's class times 50: columns 0..9 class 1, 10..19 class 2, ..."""
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    mask = np.repeat(np.arange(w)[None, :] // 10 + 1, h, axis=0).astype(np.uint8)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[..., 0] = mask * 50
    Image.fromarray(image).save(root / "img" / "a.png")
    Image.fromarray(mask).save(root / "ann" / "a.png")


@pytest.mark.parametrize("scale", [0.37, 1.0, 1.9])
def test_training_resize_keeps_masks_integer_and_aligned(tmp_path: Path, scale: float) -> None:
    _stripes(tmp_path)
    ds = MaskFolder(tmp_path / "img", tmp_path / "ann", train=True, crop_size=(24, 32), scale_range=(scale, scale),
                    hflip=0.5)
    for seed in range(6):
        torch.manual_seed(seed)
        item = ds[0]
        image, mask = item["image"], item["mask"]
        assert image.shape == (3, 24, 32) and mask.shape == (24, 32) and mask.dtype == torch.int64
        assert type(image) is torch.Tensor and type(mask) is torch.Tensor and image.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {1, 2, 3, 4, IGNORE_INDEX}  # nearest: no blended class
        valid = mask != IGNORE_INDEX
        assert valid.any()
        # away from the stripe borders the image still shows the class the mask says: both came from the same
        # draw (bilinear blends 1 px at a border, 2 px when upscaled)
        red = image[0] * 255 / 50
        k = 3 if scale <= 1 else 5
        inner = valid & (torch.nn.functional.max_pool2d(mask[None].float(), k, 1, k // 2)[0] ==
                         -torch.nn.functional.max_pool2d(-mask[None].float(), k, 1, k // 2)[0])
        inner[:, : k // 2] = inner[:, -(k // 2):] = False  # a border just outside the crop is not seen
        assert inner.any()
        torch.testing.assert_close(red[inner], mask[inner].float(), atol=0.05, rtol=0)
        assert (image[:, ~valid] == 0).all()  # padding: image 0 where the mask is ignore


def test_training_scale_is_relative_to_the_crop_long_side(tmp_path: Path) -> None:
    """``scale_range`` scales the image so its long side is ``scale`` x the crop's long side (as before the move
    to ``v2.ScaleJitter``): a 30x40 image, crop 24x32 and scale 0.5 becomes 12x16, padded to the crop."""
    _stripes(tmp_path)
    ds = MaskFolder(tmp_path / "img", tmp_path / "ann", train=True, crop_size=(24, 32), scale_range=(0.5, 0.5),
                    hflip=0.0)
    item = ds[0]
    valid = item["mask"] != IGNORE_INDEX
    rows, cols = valid.any(1).nonzero()[:, 0], valid.any(0).nonzero()[:, 0]
    assert (len(rows), len(cols)) == (12, 16) and int(valid.sum()) == 12 * 16
    assert item["mask"][valid].unique().tolist() == [1, 2, 3, 4]


def test_flip_moves_image_and_mask_together(tmp_path: Path) -> None:
    _stripes(tmp_path)
    kw = dict(train=True, crop_size=(30, 40), scale_range=(1.0, 1.0))
    plain = MaskFolder(tmp_path / "img", tmp_path / "ann", hflip=0.0, **kw)[0]
    flipped = MaskFolder(tmp_path / "img", tmp_path / "ann", hflip=1.0, **kw)[0]
    torch.testing.assert_close(flipped["mask"], plain["mask"].flip(-1))
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))
    assert plain["mask"][0, :10].unique().tolist() == [1] and flipped["mask"][0, :10].unique().tolist() == [4]


def test_evaluation_resizes_the_image_only(tmp_path: Path) -> None:
    _stripes(tmp_path)
    item = MaskFolder(tmp_path / "img", tmp_path / "ann", eval_short_side=15)[0]
    assert item["image"].shape == (3, 15, 20) and item["mask"].shape == (30, 40)
    assert item["mask"].dtype == torch.int64 and type(item["image"]) is torch.Tensor


def test_downscaling_the_image_is_antialiased(tmp_path: Path) -> None:
    """torchvision's resize antialiases (the hand-written F.interpolate did not): 1-px stripes shrunk to a third
    become near-grey (0.44..0.56), where plain bilinear sampling gave 0, 1, 0, 1, ..."""
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    stripes = np.zeros((30, 30, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(tmp_path / "img" / "s.png")
    Image.fromarray(np.ones((30, 30), dtype=np.uint8)).save(tmp_path / "ann" / "s.png")
    item = MaskFolder(tmp_path / "img", tmp_path / "ann", eval_short_side=10)[0]
    assert item["image"].shape == (3, 10, 10)
    torch.testing.assert_close(item["image"], torch.full((3, 10, 10), 0.5), atol=0.06, rtol=0)
