"""Semantic segmentation data in ADE20K's folder layout: a Dataset, a collate function, a LightningDataModule.

Layout (ADE20K's ``ADEChallengeData2016`` and the composited scenes both use it)::

    root/images/training/*.jpg|png        root/annotations/training/*.png   (same stems)
    root/images/validation/*.jpg|png      root/annotations/validation/*.png

Masks hold class indices; 255 is ignored. ``reduce_zero_label=True`` is ADE20K's convention (0 means
"other": it becomes 255 and every other label shifts down by one, giving 150 classes). An optional
``root/meta.json`` with ``num_classes`` (and ``segmentation_classes``) sets the class count.

Training samples, with ``torchvision.transforms.v2`` on a ``tv_tensors.Image`` + ``tv_tensors.Mask`` pair (so one
draw moves both, and masks are always resized with nearest neighbours and stay class indices): ``ScaleJitter``
(the image's long side becomes ``scale_range`` times ``crop_size``'s long side, as mmseg's ADE20K pipeline;
bilinear with antialiasing for the image), ``RandomCrop`` to ``crop_size`` (padded where the image is smaller:
image 0, mask 255 = ignore), ``RandomHorizontalFlip``.
Evaluation samples: the whole image (optionally ``Resize``d so its short side is ``eval_short_side``) with
the mask at its ORIGINAL resolution -- metrics are computed there, as the papers do.
What stays hand-written: reading the pair (``to_rgb``, the size check, ADE20K's ``reduce_zero_label``) with
skip-and-count, and ``collate_masks``, which pads a batch of differently sized evaluation images (torch's
``default_collate`` cannot).
An image without its mask, or a pair that cannot be read or whose sizes differ, is skipped with a
warning and recorded once, with its reason and file, in ``skip_counter`` (``recipes.common.SkipCounter``;
logged as ``data/skipped``; the run stops when more than ``max_skip_fraction`` of a split is skipped).
Images of any PIL mode are converted by ``recipes.data.images.to_rgb``; training batches are never of size
one (BatchNorm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from recipes.common import SkipCounter
from recipes.data.images import to_rgb
from recipes.data.loader import split_loader

IGNORE_INDEX = 255
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class MaskFolder(Dataset):
    """Image + mask pairs matched by file stem. Item: dict or ``None`` when unreadable.

    Item keys: ``image`` [3, h, w] float 0..1, ``mask`` [H, W] int64 (255 = ignore); for training
    ``h, w == H, W == crop_size``, for evaluation the mask keeps the original size.
    """

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        train: bool = False,
        crop_size: tuple[int, int] = (512, 512),
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: float = 0.5,
        reduce_zero_label: bool = False,
        eval_short_side: int | None = None,
        max_images: int | None = None,
        skip_counter: SkipCounter | None = None,
        split: str = "train",
    ) -> None:
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        self.split = split
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        for path, what in ((self.image_dir, "image folder"), (self.mask_dir, "mask folder")):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} not found: {path}")
        masks = {p.stem: p for p in self.mask_dir.iterdir() if p.suffix.lower() == ".png"}
        images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        self.pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
        self.missing_masks = len(images) - len(self.pairs)
        for p in images:
            if p.stem not in masks:
                self.skip_counter.add("missing_mask", str(p), f"no {p.stem}.png in {self.mask_dir}", split=split)
        if max_images is not None:
            self.pairs = self.pairs[:max_images]
        self.skip_counter.set_total(split, len(self.pairs) + self.missing_masks)
        if not self.pairs:
            raise ValueError(f"empty dataset: no image/mask pairs (same stem) in {self.image_dir} and {self.mask_dir}")
        self.train = train
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.hflip = hflip
        self.reduce_zero_label = reduce_zero_label
        self.eval_short_side = eval_short_side
        long_side = max(self.crop_size)
        self.transforms = v2.Compose([
            v2.ToDtype(torch.float32, scale=True),
            v2.ScaleJitter((long_side, long_side), scale_range=self.scale_range),
            v2.RandomCrop(self.crop_size, pad_if_needed=True,
                          fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(hflip),
        ]) if train else v2.Compose([
            v2.ToDtype(torch.float32, scale=True),
            *([v2.Resize(eval_short_side)] if eval_short_side else []),  # the image only: the mask keeps its size
        ])

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        image_path, mask_path = self.pairs[index]
        try:
            with Image.open(image_path) as im:
                image = np.asarray(to_rgb(im), dtype=np.uint8).copy()
            with Image.open(mask_path) as m:
                mask = np.asarray(m, dtype=np.uint8).copy()
        except (OSError, ValueError) as err:
            self.skip_counter.add("unreadable_image", str(image_path), f"{type(err).__name__}: {err}",
                                  split=self.split)
            return None
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            self.skip_counter.add("mask_size", str(mask_path), f"mask is {mask.shape}, image {image.shape[:2]}",
                                  split=self.split)
            return None
        if self.reduce_zero_label:
            mask = mask.astype(np.int64) - 1
            mask[mask < 0] = IGNORE_INDEX
            mask[mask == IGNORE_INDEX - 1] = IGNORE_INDEX
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        loaded = self._load(index)
        if loaded is None:
            return None
        image_np, mask_np = loaded
        image = tv_tensors.Image(torch.from_numpy(image_np).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(mask_np.astype(np.int64)))
        if self.train:
            image, mask = self.transforms(image, mask)
        else:
            image = self.transforms(image)
        return {"image": image.as_subclass(torch.Tensor).contiguous(),
                "mask": mask.as_subclass(torch.Tensor).contiguous()}


def collate_masks(batch: list, min_size: int = 1) -> dict[str, Any]:
    """Pad to the largest image/mask of the batch (image 0, mask 255); keep the true sizes.

    Returns ``image`` [B, 3, H, W], ``mask`` [B, H', W'], ``image_sizes`` / ``mask_sizes`` lists of (h, w).
    ``None`` items (unreadable pairs) are dropped; fewer than ``min_size`` left gives an empty batch (B = 0,
    which the module skips; training uses 2 for BatchNorm).
    """
    kept = [b for b in batch if b is not None]
    out: dict[str, Any] = {}
    if len(kept) < max(1, min_size):
        out.update(image=torch.zeros(0, 3, 1, 1), mask=torch.zeros(0, 1, 1, dtype=torch.long),
                   image_sizes=[], mask_sizes=[])
        return out
    ih = max(b["image"].shape[1] for b in kept)
    iw = max(b["image"].shape[2] for b in kept)
    mh = max(b["mask"].shape[0] for b in kept)
    mw = max(b["mask"].shape[1] for b in kept)
    out["image"] = torch.stack([F.pad(b["image"], (0, iw - b["image"].shape[2], 0, ih - b["image"].shape[1]))
                                for b in kept])
    out["mask"] = torch.stack([F.pad(b["mask"], (0, mw - b["mask"].shape[1], 0, mh - b["mask"].shape[0]),
                                     value=IGNORE_INDEX) for b in kept])
    out["image_sizes"] = [tuple(b["image"].shape[1:]) for b in kept]
    out["mask_sizes"] = [tuple(b["mask"].shape) for b in kept]
    return out


class MaskFolderDataModule(L.LightningDataModule):
    """ADE20K-layout folders under ``root`` (see module docstring) for the segmentation recipe.

    ``num_classes``: class count (255 excluded); ``None`` reads it from ``root/meta.json``. ``seed``: the
    training order and augmentation (seeded per epoch and sample: a mid-epoch resume continues exactly,
    ``recipes.data.loader.split_loader``).
    """

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        train_split: str = "training",
        val_split: str = "validation",
        test_split: str | None = None,
        crop_size: tuple[int, int] = (512, 512),
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: float = 0.5,
        reduce_zero_label: bool = False,
        eval_short_side: int | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        max_train_images: int | None = None,
        max_val_images: int | None = None,
        max_skip_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"segmentation data root not found: {self.root}")
        meta_path = self.root / "meta.json"
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if num_classes is None:
            num_classes = self.meta.get("num_classes")
            if num_classes is None:
                raise ValueError(f"give num_classes (no meta.json with num_classes in {self.root})")
        self._num_classes = int(num_classes)
        self.save_hyperparameters()
        # Store the resolved count (LightningCLI saves the config's value, maybe null): loggers merge these
        # hparams with the model's and fail on different values of the same key.
        self.hparams["num_classes"] = self._num_classes
        self._hparams_initial["num_classes"] = self._num_classes
        for split in (train_split, val_split, test_split):
            if split is not None:
                for sub in ("images", "annotations"):
                    if not (self.root / sub / split).is_dir():
                        raise FileNotFoundError(f"missing folder {self.root / sub / split} (ADE20K layout: "
                                                "images/<split> and annotations/<split>)")
        self.skip_counter = SkipCounter(max_skip_fraction)
        self._sets: dict[str, MaskFolder] = {}

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("segmentation_classes")

    def _set(self, split: str, train: bool) -> MaskFolder:
        if split not in self._sets:
            h = self.hparams
            self._sets[split] = MaskFolder(
                self.root / "images" / split, self.root / "annotations" / split, train=train,
                crop_size=tuple(h.crop_size), scale_range=tuple(h.scale_range), hflip=h.hflip,
                reduce_zero_label=h.reduce_zero_label, eval_short_side=h.eval_short_side,
                max_images=h.max_train_images if train else h.max_val_images, skip_counter=self.skip_counter,
                split="train" if train else ("val" if split == h.val_split else "test"),  # the run's stage names
            )
        return self._sets[split]

    def skipped_counts(self) -> dict[str, int]:
        return {"missing_mask": sum(s.missing_masks for s in self._sets.values())}

    def check_labels(self, num_samples: int = 8) -> None:
        """Read a few training masks and fail clearly when a label is >= num_classes (and not 255)."""
        ds = self._set(self.hparams.train_split, True)
        for i in range(min(num_samples, len(ds))):
            loaded = ds._load(i)
            if loaded is None:
                continue
            values = np.unique(loaded[1])
            bad = values[(values != IGNORE_INDEX) & (values >= self._num_classes)]
            if len(bad):
                raise ValueError(
                    f"class count mismatch: mask {ds.pairs[i][1]} has labels {bad.tolist()} but num_classes is "
                    f"{self._num_classes} (ADE20K needs reduce_zero_label=true with 150 classes)"
                )

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        self._set(h.train_split, True)
        self.check_labels()
        if h.val_split is not None:
            self._set(h.val_split, False)
        if h.test_split is not None:
            self._set(h.test_split, False)

    def _loader(self, split: str | None, train: bool, batch_size: int) -> DataLoader:
        if split is None:
            raise ValueError("this split is not configured")
        return split_loader(self._set(split, train), collate_masks, train, batch_size, self.hparams.num_workers,
                            self.hparams.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, False, self.hparams.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        """The test split, or the val split when no test split is configured."""
        return self._loader(self.hparams.test_split or self.hparams.val_split, False, self.hparams.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """What ``trainer.predict`` / the CLI's ``predict`` runs on: the test split (val when there is none)."""
        return self.test_dataloader()
