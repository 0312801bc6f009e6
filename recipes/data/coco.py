"""COCO-format detection data: a Dataset, a collate function and a LightningDataModule.

Reads any COCO instances json + image folder (the converted DeepForest tiles, the composited scenes,
or your own). Categories are mapped to contiguous labels ``1..K`` (0 is the detectors' background);
``category_ids[label - 1]`` maps back.

Bad annotations are skipped with one warning per reason and file and counted by reason in ``skipped``:
``unknown_category`` (category id not in ``categories``), ``zero_area`` (width or height <= 0, or not
finite), ``box_outside_image`` (a corner more than ``tolerance`` px outside the image; boxes within the
tolerance are clipped). Crowd annotations (``iscrowd=1``) are left out of the targets and counted as
``crowd``. An image that cannot be read, or whose decoded size differs from the json's ``width``/``height``
(its boxes would be wrong; torchvision would fail later without naming the file), is skipped: ``None`` from
``__getitem__``, dropped by ``collate_detection``. Every skipped annotation (split ``<split>/annotations``)
and image (split ``<split>``) is also recorded, once, with its reason and file, in the datamodule's
``skip_counter`` (``recipes.common.SkipCounter``, shared with DataLoader workers; logged as ``data/skipped``;
the run stops when more than ``max_skip_fraction`` of a split is skipped). Images of any PIL mode are
converted by ``recipes.data.images.to_rgb``. A wrong path, an empty dataset or train/val categories that
differ raise before training. Training batches are never of size one (BatchNorm).
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from recipes.common import SkipCounter
from recipes.data.images import to_rgb

ANNOTATION_REASONS = ("unknown_category", "zero_area", "box_outside_image")


def _require(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


class CocoDetection(Dataset):
    """One COCO split. Item: ``(image [3, H, W] float 0..1, target)``, or ``None`` if unreadable or of another
    size than the json says (recorded in ``skip_counter`` under ``split``).

    ``target``: ``boxes`` [N, 4] xyxy float, ``labels`` [N] int64 in 1..K, ``image_id`` int,
    and with ``with_masks`` also ``masks`` [N, H, W] uint8 (from polygons/RLE; a box-filled mask when
    an annotation has no segmentation). ``hflip``: probability of a horizontal flip (training).
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
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, float(width)), min(y + h, float(height))
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                return "zero_area"
        return None

    @property
    def num_classes(self) -> int:
        """Object classes, without the background."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.images)

    def _masks(self, anns: list, height: int, width: int) -> torch.Tensor:
        from pycocotools import mask as mask_utils

        out = np.zeros((len(anns), height, width), dtype=np.uint8)
        for i, ann in enumerate(anns):
            seg = ann.get("segmentation")
            if not seg:
                x, y, w, h = ann["bbox"]
                out[i, int(y):int(math.ceil(y + h)), int(x):int(math.ceil(x + w))] = 1
                continue
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            out[i] = mask_utils.decode(rle)
        return torch.from_numpy(out)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as img:
                array = np.asarray(to_rgb(img), dtype=np.uint8).copy()
        except (OSError, ValueError) as err:
            self.skip_counter.add("unreadable_image", str(path), f"{type(err).__name__}: {err}", split=self.split)
            return None
        height, width = array.shape[:2]
        json_size = (info.get("width"), info.get("height"))
        if json_size != (None, None) and json_size != (width, height):
            self.skip_counter.add(
                "size_mismatch", str(path),
                f"{self.ann_file} says {json_size[0]}x{json_size[1]} (width x height) for image id {info['id']}, "
                f"the file decodes to {width}x{height}; fix the json's width/height (and check the boxes)",
                split=self.split)
            return None
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        anns = self.annotations[info["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": int(info["id"]),
        }
        if self.with_masks:
            target["masks"] = self._masks(anns, height, width)
        if self.hflip > 0 and torch.rand(()) < self.hflip:
            image = image.flip(-1)
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
            if self.with_masks:
                target["masks"] = target["masks"].flip(-1)
        return image, target


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
        train = shuffle  # training: full batches, none of size one (BatchNorm)
        collate = functools.partial(collate_detection, min_size=2) if train and batch_size > 1 else collate_detection
        return DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers, collate_fn=collate,
            drop_last=train and len(ds) > batch_size, persistent_workers=self.hparams.num_workers > 0,
        )

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
