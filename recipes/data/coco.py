"""COCO-format detection data: a Dataset, a collate function and a LightningDataModule.

Reads any COCO instances json + image folder (the converted DeepForest tiles, the composited scenes,
or your own). Categories are mapped to contiguous labels ``1..K`` (0 is the detectors' background);
``category_ids[label - 1]`` maps back.

Samples come from torchvision: ``torchvision.datasets.CocoDetection`` (pycocotools' index) wrapped by
``torchvision.datasets.wrap_dataset_for_transforms_v2`` (boxes as ``tv_tensors.BoundingBoxes``, instance masks
decoded from polygons/RLE as ``tv_tensors.Mask``), then ``torchvision.transforms.v2``: ``ClampBoundingBoxes``,
``RandomHorizontalFlip`` (training) and ``SanitizeBoundingBoxes``. What stays hand-written, and why:

- the json check before pycocotools sees the file (torchvision and pycocotools neither validate annotations nor
  say which one is bad): a wrong path, an empty dataset, a file without ``images``/``annotations``/``categories``
  or train/val categories that differ raise before training, and bad annotations are skipped with one warning
  per reason and file and counted by reason in ``skipped``: ``unknown_category`` (category id not in
  ``categories``), ``zero_area`` (width or height <= 0 or not finite, or under ``MIN_BOX_SIZE`` px once clipped
  to the image: the size ``SanitizeBoundingBoxes`` would drop unseen), ``box_outside_image`` (a corner more than
  ``tolerance`` px outside the image; boxes within the tolerance are clipped). Crowd annotations (``iscrowd=1``)
  are left out of the targets and counted as ``crowd``. Only the annotations that pass reach pycocotools, with
  their category already mapped to its label and, with ``with_masks``, the box as the polygon of an annotation
  that has no segmentation (torchvision's wrapper needs one for every annotation);
- skip-and-count of images: an image that cannot be read, or whose decoded size differs from the json's
  ``width``/``height`` (its boxes would be wrong; torchvision would fail later without naming the file), is
  skipped: ``None`` from ``__getitem__``, dropped by ``collate_detection``. Images are read with
  ``recipes.data.images.to_rgb`` (torchvision's ``convert("RGB")`` clips 16-bit images and drops alpha);
- an image left without annotations: the wrapper then returns only ``image_id``, so empty ``boxes``/``labels``
  (and ``masks``) are filled in: such an image stays, a negative sample.

Every skipped annotation (split ``<split>/annotations``) and image (split ``<split>``) is also recorded, once,
with its reason and file, in the datamodule's ``skip_counter`` (``recipes.common.SkipCounter``, shared with
DataLoader workers; logged as ``data/skipped``; the run stops when more than ``max_skip_fraction`` of a split is
skipped); a box that ``SanitizeBoundingBoxes`` drops at run time (only a transform that moves boxes can make
one) is recorded as ``degenerate_box``. Training batches are never of size one (BatchNorm).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets
from torchvision import tv_tensors
from torchvision.transforms import v2

from recipes.common import SkipCounter
from recipes.data.images import to_rgb
from recipes.data.loader import split_loader

ANNOTATION_REASONS = ("unknown_category", "zero_area", "box_outside_image")
MIN_BOX_SIZE = 1.0
"""Smallest box side (px) kept: ``SanitizeBoundingBoxes``' ``min_size`` (it refuses anything smaller)."""


def _require(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


class _Unreadable(Exception):
    """An image file that PIL or ``to_rgb`` could not turn into RGB (the dataset counts it and skips it)."""

    def __init__(self, path: str, err: Exception) -> None:
        super().__init__(f"{type(err).__name__}: {err}")
        self.path = path


class _TorchvisionCoco(tv_datasets.CocoDetection):
    """torchvision's ``CocoDetection`` over an instances dict that was already checked in memory (so the file is
    not parsed twice and the skipped annotations never reach pycocotools), reading images with ``to_rgb``."""

    def __init__(self, root: str | Path, doc: dict[str, Any]) -> None:
        tv_datasets.VisionDataset.__init__(self, root)
        from pycocotools.coco import COCO

        self.coco = COCO()
        self.coco.dataset = doc
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs.keys())

    def _load_image(self, id: int) -> Image.Image:
        path = os.path.join(self.root, self.coco.loadImgs(id)[0]["file_name"])
        try:
            with Image.open(path) as img:
                return to_rgb(img)
        except (OSError, ValueError) as err:
            raise _Unreadable(path, err) from err


class CocoDetection(Dataset):
    """One COCO split. Item: ``(image [3, H, W] float 0..1, target)``, or ``None`` if unreadable or of another
    size than the json says (recorded in ``skip_counter`` under ``split``).

    ``target``: ``boxes`` [N, 4] xyxy float, ``labels`` [N] int64 in 1..K, ``image_id`` int,
    and with ``with_masks`` also ``masks`` [N, H, W] uint8 (from polygons/RLE; a box-filled mask when
    an annotation has no segmentation). ``hflip``: probability of a horizontal flip (training).
    All are plain tensors (the ``tv_tensors`` types are unwrapped after the transforms).
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        with_masks: bool = False,
        hflip: float = 0.0,
        tolerance: float = 1.0,
        max_images: int | None = None,
        skip_counter: SkipCounter | None = None,
        split: str = "train",
    ) -> None:
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        self.split = split
        self.ann_file = _require(ann_file, "COCO annotation file")
        self.image_dir = _require(image_dir, "image folder")
        self.with_masks = with_masks
        self.hflip = hflip
        try:
            doc = json.loads(self.ann_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.ann_file} is not valid JSON: {err}") from err
        for key in ("images", "annotations", "categories"):
            if key not in doc:
                raise ValueError(f"{self.ann_file} is not a COCO instances file: no '{key}' key")
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        if not cats:
            raise ValueError(f"{self.ann_file} declares no categories")
        self.category_ids = [int(c["id"]) for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        images = sorted(doc["images"], key=lambda im: im["id"])
        if max_images is not None:
            images = images[:max_images]
        if not images:
            raise ValueError(f"empty dataset: {self.ann_file} lists no images")
        self.images = images
        by_image: dict[int, list] = {im["id"]: [] for im in images}
        size = {im["id"]: (im.get("width"), im.get("height")) for im in images}
        self.skipped: Counter = Counter()
        first_id: dict[str, Any] = {}
        n_anns = 0
        for ann in doc["annotations"]:
            iid = ann.get("image_id")
            if iid not in by_image:
                continue
            n_anns += 1
            reason = self._check(ann, label_of, size[iid], tolerance)
            if reason:
                self.skipped[reason] += 1
                first_id.setdefault(reason, ann.get("id"))
                continue
            by_image[iid].append(ann)
        self.annotations = by_image
        self.label_of = label_of
        self.skip_counter.set_total(split, len(images))
        self.skip_counter.set_total(f"{split}/annotations", n_anns)
        for reason in ANNOTATION_REASONS:
            if self.skipped[reason]:
                self.skip_counter.add(reason, f"{self.ann_file}:{reason}",
                                      f"{self.skipped[reason]} annotations (first: id {first_id[reason]})",
                                      n=self.skipped[reason], split=f"{split}/annotations")
        self._source = tv_datasets.wrap_dataset_for_transforms_v2(
            _TorchvisionCoco(self.image_dir, self._checked_doc(cats)),
            target_keys={"image_id", "boxes", "labels", *(("masks",) if with_masks else ())},
        )
        steps: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.ClampBoundingBoxes()]
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        steps.append(v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIZE))
        self.transforms = v2.Compose(steps)

    def _checked_doc(self, cats: list[dict]) -> dict[str, Any]:
        """The instances dict pycocotools indexes: the kept images and annotations, each annotation with its
        label as ``category_id``, a float box, and (with masks) its box as polygon when it has no segmentation."""
        anns = []
        for image_anns in self.annotations.values():
            for ann in image_anns:
                x, y, w, h = (float(v) for v in ann["bbox"])
                ann = {**ann, "bbox": [x, y, w, h], "category_id": self.label_of[ann["category_id"]]}
                if self.with_masks and not ann.get("segmentation"):
                    ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                anns.append(ann)
        return {"images": self.images, "annotations": anns,
                "categories": [{"id": self.label_of[int(c["id"])], "name": str(c.get("name", c["id"]))} for c in cats]}

    @staticmethod
    def _check(ann: dict, label_of: dict, size: tuple, tol: float) -> str | None:
        if ann.get("iscrowd", 0):
            return "crowd"
        if ann.get("category_id") not in label_of:
            return "unknown_category"
        bbox = ann.get("bbox")
        if not bbox or len(bbox) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
            return "zero_area"
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            return "zero_area"
        width, height = size
        if width is not None and height is not None:
            if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
                return "box_outside_image"
            w = min(x + w, float(width)) - max(x, 0.0)
            h = min(y + h, float(height)) - max(y, 0.0)
        if w < MIN_BOX_SIZE or h < MIN_BOX_SIZE:
            return "zero_area"
        return None

    @property
    def num_classes(self) -> int:
        """Object classes, without the background."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        info = self.images[index]
        try:
            image, target = self._source[index]
        except _Unreadable as err:
            self.skip_counter.add("unreadable_image", err.path, str(err), split=self.split)
            return None
        width, height = image.size
        json_size = (info.get("width"), info.get("height"))
        if json_size != (None, None) and json_size != (width, height):
            self.skip_counter.add(
                "size_mismatch", str(self.image_dir / info["file_name"]),
                f"{self.ann_file} says {json_size[0]}x{json_size[1]} (width x height) for image id {info['id']}, "
                f"the file decodes to {width}x{height}; fix the json's width/height (and check the boxes)",
                split=self.split)
            return None
        if "boxes" not in target:  # no annotations: torchvision's wrapper gives only the image id
            target["boxes"] = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(height, width))
            target["labels"] = torch.zeros(0, dtype=torch.int64)
            if self.with_masks:
                target["masks"] = tv_tensors.Mask(torch.zeros(0, height, width, dtype=torch.uint8))
        n_boxes = len(target["labels"])
        image, target = self.transforms(image, target)
        if len(target["labels"]) < n_boxes:
            self.skip_counter.add("degenerate_box", str(self.image_dir / info["file_name"]),
                                  f"{n_boxes - len(target['labels'])} boxes under {MIN_BOX_SIZE:g} px after the "
                                  "transforms", n=n_boxes - len(target["labels"]), split=f"{self.split}/annotations")
        out: dict[str, Any] = {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"].to(torch.int64),
            "image_id": int(target["image_id"]),
        }
        if self.with_masks:
            out["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image.as_subclass(torch.Tensor), out


def collate_detection(batch: list, min_size: int = 1) -> tuple[list[torch.Tensor], list[dict]]:
    """``(images, targets)`` lists of the readable samples (``None`` items dropped); empty lists when fewer
    than ``min_size`` are left (training uses 2: a batch of one crashes BatchNorm in training mode, so the
    detection module skips the empty batch)."""
    kept = [b for b in batch if b is not None]
    if len(kept) < min_size:
        kept = []
    return [b[0] for b in kept], [b[1] for b in kept]


class CocoDataModule(L.LightningDataModule):
    """Train/val(/test) COCO splits for the detection recipe (``test`` falls back to ``val``).

    ``*_json`` are instances files, ``*_images`` their image folders. ``with_masks`` loads instance masks
    (needed by Mask R-CNN). ``max_train_images`` / ``max_val_images`` cut the splits (smoke runs).
    ``max_skip_fraction``: the run stops when more of a split (images, or annotations) is skipped.
    ``seed``: the training order and augmentation (seeded per epoch and sample: a mid-epoch resume continues
    exactly, ``recipes.data.loader.split_loader``).
    """

    def __init__(
        self,
        train_json: str,
        train_images: str,
        val_json: str | None = None,
        val_images: str | None = None,
        test_json: str | None = None,
        test_images: str | None = None,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        with_masks: bool = False,
        hflip: float = 0.5,
        tolerance: float = 1.0,
        max_train_images: int | None = None,
        max_val_images: int | None = None,
        max_skip_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Fail on wrong paths now, not in setup() after the trainer has started.
        for name in ("train_json", "train_images", "val_json", "val_images", "test_json", "test_images"):
            value = getattr(self.hparams, name)
            if value is not None:
                _require(value, name.replace("_", " "))
        if (val_json is None) != (val_images is None) or (test_json is None) != (test_images is None):
            raise ValueError("give both the json and the image folder for each of val / test")
        self.skip_counter = SkipCounter(max_skip_fraction)
        self._train: CocoDetection | None = None
        self._val: CocoDetection | None = None
        self._test: CocoDetection | None = None

    def _make(self, split: str, train: bool) -> CocoDetection:
        h = self.hparams
        return CocoDetection(
            getattr(h, f"{split}_json"), getattr(h, f"{split}_images"), with_masks=h.with_masks,
            hflip=h.hflip if train else 0.0, tolerance=h.tolerance,
            max_images=h.max_train_images if train else h.max_val_images, skip_counter=self.skip_counter,
            split=split,
        )

    @property
    def train_set(self) -> CocoDetection:
        if self._train is None:
            self._train = self._make("train", True)
        return self._train

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.train_set.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.train_set.category_ids

    def skipped_counts(self) -> dict[str, int]:
        """Counts of skipped annotations per reason, over the splits loaded so far."""
        total: Counter = Counter()
        for ds in (self._train, self._val, self._test):
            if ds is not None:
                total.update(ds.skipped)
        return {k: total.get(k, 0) for k in (*ANNOTATION_REASONS, "crowd")}

    def setup(self, stage: str | None = None) -> None:
        train = self.train_set
        for split in ("val", "test"):
            if getattr(self.hparams, f"{split}_json") is None or getattr(self, f"_{split}") is not None:
                continue
            ds = self._make(split, False)
            if ds.category_ids != train.category_ids:
                raise ValueError(
                    f"{split} categories {ds.category_ids} differ from train categories {train.category_ids}"
                )
            setattr(self, f"_{split}", ds)

    def _loader(self, ds: Dataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if ds is None:
            raise ValueError("this split was not configured (give its json and image folder)")
        return split_loader(ds, collate_detection, shuffle, batch_size, self.hparams.num_workers, self.hparams.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._val, False, self.hparams.val_batch_size or self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        """The test split, or the val split when no test split is configured."""
        ds = self._test if self._test is not None else self._val
        return self._loader(ds, False, self.hparams.val_batch_size or self.hparams.batch_size)

    def predict_dataloader(self) -> DataLoader:
        """What ``trainer.predict`` / the CLI's ``predict`` runs on: the test split (val when there is none)."""
        return self.test_dataloader()
