"""Classification datamodules: the embedded Fashion-MNIST npz, plain image folders, webdataset shards.

All three share: timm transforms (``timm.data.create_transform``), a ``skip_counter`` of bad samples
(``recipes.common.SkipCounter``: each file counted once, with its reason; logged as ``data/skipped``; the run
stops when more than ``max_skip_fraction`` of a split is skipped), and checks that raise one clear error in
``setup`` (before training) for a wrong path, an empty dataset or labels outside ``num_classes``. Batches are
``(images [B, 3, H, W] float, labels [B] int64)``; every image mode is converted by
``recipes.data.images.to_rgb`` (16-bit scaled, alpha composited, grey repeated to 3 channels) so any timm
model takes it. Training batches are never of size one (BatchNorm).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from recipes.common import SkipCounter
from recipes.data.images import to_rgb
from recipes.data.loader import ResumableDataLoader, ResumableSampler, dist_info, skip_none_collate, train_collate
from recipes.data.shards import (
    CountingHandler,
    ResumableShardLoader,
    expand_shards,
    make_pipeline,
    read_meta,
    shard_sizes,
)

__all__ = [
    "DEFAULT_NPZ",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "ClassificationData",
    "ImageFolderData",
    "NpzData",
    "ShardData",
    "build_transforms",
]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_NPZ = str(REPO / "data" / "fashion_mnist" / "fashion_mnist_subset.npz")
FASHION_MNIST_MEAN = (0.286, 0.286, 0.286)
FASHION_MNIST_STD = (0.353, 0.353, 0.353)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def build_transforms(
    img_size: int,
    train: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: tuple[float, float] = (0.5, 1.0),
    hflip: float = 0.5,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    interpolation: str = "bilinear",
) -> Any:
    """timm's train (random-resized crop, flip, optional auto-augment / random erasing) or eval (resize +
    center crop, crop_pct 1) transform on PIL images."""
    from timm.data import create_transform

    if train:
        return create_transform(
            input_size=(3, img_size, img_size), is_training=True, scale=tuple(scale), hflip=hflip, vflip=0.0,
            color_jitter=None, auto_augment=auto_augment, re_prob=re_prob, interpolation=interpolation,
            mean=tuple(mean), std=tuple(std),
        )
    return create_transform(
        input_size=(3, img_size, img_size), is_training=False, crop_pct=1.0, interpolation=interpolation,
        mean=tuple(mean), std=tuple(std),
    )


class _ArrayDataset(Dataset):
    """uint8 images [N, H, W] or [N, H, W, C] + labels → (transform(PIL RGB), label)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Any) -> None:
        self.x, self.y, self.transform = x, y.astype(np.int64), transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = to_rgb(Image.fromarray(self.x[i]))
        return self.transform(img), int(self.y[i])


class _FileDataset(Dataset):
    """(path, label) list → (transform(PIL RGB), label); an unreadable image is recorded in ``counter`` (once
    per file, under ``split``) and returns None (the collate drops it)."""

    def __init__(self, items: list[tuple[str, int]], transform: Any, counter: SkipCounter,
                 split: str = "train") -> None:
        self.items, self.transform, self.counter, self.split = items, transform, counter, split

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                img = to_rgb(im)
        except Exception as e:  # noqa: BLE001 - any decoder failure means: skip this file
            self.counter.add("unreadable image", path, f"{type(e).__name__}: {e}", split=self.split)
            return None
        return self.transform(img), label


class ClassificationData(pl.LightningDataModule):
    """Base: transforms, loaders, the skip counter and the checks. Subclasses implement ``setup``.

    ``max_skip_fraction`` (default 0.05): the run stops with ``DataSkipError`` when more than this fraction of
    a split's samples is skipped (unreadable, lost in a truncated shard); 1.0 never stops (but an epoch that
    trains on nothing always does)."""

    def __init__(
        self,
        num_classes: int | None = None,
        img_size: int = 32,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.5,
        auto_augment: str | None = None,
        re_prob: float = 0.0,
        interpolation: str = "bilinear",
        max_skip_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.img_size, self.batch_size = img_size, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.mean, self.std = tuple(mean), tuple(std)
        self.aug = dict(scale=tuple(scale), hflip=hflip, auto_augment=auto_augment, re_prob=re_prob,
                        interpolation=interpolation)
        self.skip_counter = SkipCounter(max_skip_fraction)
        self.classes: list[str] | None = None
        self.train_set: Any = None
        self.val_set: Any = None
        self.test_set: Any = None

    def transform(self, train: bool) -> Any:
        aug = self.aug if train else {"interpolation": self.aug["interpolation"]}
        return build_transforms(self.img_size, train, self.mean, self.std, **aug)

    def _check_labels(self, name: str, labels: np.ndarray | list[int], n_found: int | None = None) -> None:
        labels = np.asarray(labels)
        if labels.size == 0:
            raise ValueError(f"{self.__class__.__name__}: the {name} set is empty; check the data path/split")
        n = n_found if n_found is not None else int(labels.max()) + 1
        if self.num_classes is None:
            self.num_classes = n
        exact = n_found is not None and n != self.num_classes  # a class list says how many there are
        if labels.min() < 0 or labels.max() >= self.num_classes or n > self.num_classes or exact:
            raise ValueError(
                f"{self.__class__.__name__}: the {name} set has {n} classes (labels {labels.min()}..{labels.max()})"
                f" but num_classes={self.num_classes}; set data num_classes / model num_classes to match"
            )

    def _progress(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        bs = self.batch_size if train else self.eval_batch_size
        kw = dict(
            batch_size=bs,
            num_workers=self.num_workers,
            # training: full batches, and none of size one after unreadable samples are dropped (BatchNorm)
            collate_fn=train_collate if train and bs > 1 else skip_none_collate,
            persistent_workers=self.num_workers > 0,
            drop_last=train and len(ds) >= bs,
        )
        if train:
            return ResumableDataLoader(
                ds, sampler=ResumableSampler(len(ds), shuffle=True, seed=self.seed), **kw
            )
        rank, world = dist_info()
        if world > 1:  # plain strided split for evaluation (metrics are synced by torchmetrics)
            ds = torch.utils.data.Subset(ds, list(range(rank, len(ds), world)))
        return DataLoader(ds, shuffle=False, **kw)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set if self.test_set is not None else self.val_set, False)

    def predict_dataloader(self) -> Any:
        """What ``trainer.predict`` / the CLI's ``predict`` runs on: the test split (val when there is none)."""
        return self.test_dataloader()


class NpzData(ClassificationData):
    """Arrays in an ``.npz`` (default: the embedded Fashion-MNIST subset, 10k train / 2k test, 28×28 grey).

    Keys ``x_train, y_train, x_test, y_test`` (+ optional ``classes``). ``val_per_class`` > 0 holds out that
    many train images per class (stratified, seeded) as the validation set, so the test split is only used
    by ``test``; 0 validates on the test split."""

    def __init__(self, path: str = DEFAULT_NPZ, val_per_class: int = 100, train_limit: int | None = None,
                 mean: tuple[float, ...] = FASHION_MNIST_MEAN, std: tuple[float, ...] = FASHION_MNIST_STD,
                 **kwargs: Any) -> None:
        super().__init__(mean=mean, std=std, **kwargs)
        self.path, self.val_per_class, self.train_limit = path, val_per_class, train_limit
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not os.path.isfile(self.path) and self.path == DEFAULT_NPZ:
            from zoo.resources import embedded_data_hint

            raise FileNotFoundError(f"NpzData: {embedded_data_hint(self.path)}")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"NpzData: no file at {self.path!r} (the embedded subset is data/fashion_mnist/"
                "fashion_mnist_subset.npz; rebuild it with tools/fashion_mnist_subset.py)"
            )
        with np.load(self.path) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise ValueError(f"NpzData: {self.path!r} lacks arrays {sorted(missing)}")
            xtr, ytr, xte, yte = z["x_train"], z["y_train"].astype(np.int64), z["x_test"], z["y_test"].astype(np.int64)
            self.classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
        n_found = len(self.classes) if self.classes else None
        self._check_labels("train", ytr, n_found)
        self._check_labels("test", yte, n_found)
        rng = np.random.default_rng(self.seed)
        val_idx = np.array([], dtype=np.int64)
        if self.val_per_class > 0:
            val_idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), self.val_per_class, replace=False)
                                      for c in np.unique(ytr)])
        keep = np.setdiff1d(np.arange(len(ytr)), val_idx)
        if self.train_limit:
            keep = np.sort(rng.choice(keep, min(self.train_limit, len(keep)), replace=False))
        self.train_set = _ArrayDataset(xtr[keep], ytr[keep], self.transform(True))
        if len(val_idx):
            self.val_set = _ArrayDataset(xtr[np.sort(val_idx)], ytr[np.sort(val_idx)], self.transform(False))
        else:
            self.val_set = _ArrayDataset(xte, yte, self.transform(False))
        self.test_set = _ArrayDataset(xte, yte, self.transform(False))


def _scan_folder(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    items = []
    for ci, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
            items += [(os.path.join(dirpath, f), ci) for f in sorted(files) if f.lower().endswith(IMG_EXTS)]
    return items, classes


class ImageFolderData(ClassificationData):
    """``root/{train,val[,test]}/<class>/*.png|jpg...`` (torchvision ImageFolder layout). Unreadable images are
    skipped and counted. ``val``/``test`` default to the folders of those names; test falls back to val."""

    def __init__(self, root: str, train_dir: str = "train", val_dir: str = "val", test_dir: str | None = "test",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.dirs = root, {"train": train_dir, "val": val_dir, "test": test_dir}
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"ImageFolderData: no folder at {self.root!r}")
        sets = {}
        for split, sub in self.dirs.items():
            path = os.path.join(self.root, sub) if sub else None
            if path is None or not os.path.isdir(path):
                if split in ("train", "val"):
                    raise FileNotFoundError(
                        f"ImageFolderData: no {split} folder {path!r} (expected <root>/{sub}/<class>/)"
                    )
                continue
            items, classes = _scan_folder(path)
            if split == "train":
                self.classes = classes
            elif classes != self.classes[: len(classes)] and set(classes) - set(self.classes):
                raise ValueError(f"ImageFolderData: {split} classes {classes} are not among train's {self.classes}")
            self._check_labels(split, [lab for _, lab in items], len(self.classes))
            sets[split] = _FileDataset(items, self.transform(split == "train"), self.skip_counter, split)
            self.skip_counter.set_total(split, len(items))
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets.get("test")


class _Decode:
    """webdataset sample → (transform(PIL RGB), label), or None for a bad sample (no image or label, an
    undecodable image), which is recorded in ``counter`` as ``<shard url>#<key>``; picklable for workers."""

    def __init__(self, transform: Any, counter: SkipCounter, split: str = "train") -> None:
        self.transform, self.counter, self.split = transform, counter, split

    def __call__(self, sample: dict[str, Any]) -> tuple[torch.Tensor, int] | None:
        key = f"{sample.get('__url__')}#{sample.get('__key__')}"
        img_key = next((k for k in ("png", "jpg", "jpeg", "webp") if k in sample), None)
        if img_key is None or "cls" not in sample:
            extra = sorted(k for k in sample if not k.startswith("__"))
            self.counter.add("incomplete shard sample", key, f"no image or .cls label (has {extra})", split=self.split)
            return None
        try:
            with Image.open(io.BytesIO(sample[img_key])) as im:
                img = to_rgb(im)
            label = int(sample["cls"])
        except Exception as e:  # noqa: BLE001 - any decoder failure means: skip this sample
            self.counter.add("unreadable shard sample", key, f"{type(e).__name__}: {e}", split=self.split)
            return None
        return self.transform(img), label


def _stack(batch: tuple[list[Any], list[int]] | list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labels = batch
    return torch.stack(list(imgs)), torch.as_tensor(labels, dtype=torch.int64)


class ShardData(ClassificationData):
    """webdataset tar shards (``tools/make_shards.py``). ``train_shards``/``val_shards``/``test_shards``: a brace
    pattern, glob, folder or list. Corrupt samples are skipped and counted once each (no sleeping); the samples
    a truncated or corrupt shard loses are counted too, against the per-shard counts of ``meta.json``
    (``shard_samples``, written by ``tools/make_shards.py``; without them, one per broken shard). An epoch that
    a short pass cannot fill continues with the next pass (``ResumableShardLoader``), so it always ends with
    validation.

    Each rank reads disjoint shards (``split_by_node``, then ``split_by_worker``); ``resampled=True`` streams
    shards endlessly (new permutation per pass, still split by rank and worker). An epoch is
    ``epoch_samples // (batch_size * world_size)`` batches on every rank (default: the train sample count from
    ``meta.json``), so all ranks take the same number of steps."""

    def __init__(self, train_shards: str | list[str], val_shards: str | list[str] | None = None,
                 test_shards: str | list[str] | None = None, epoch_samples: int | None = None,
                 resampled: bool = False, shuffle_buffer: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs = {"train": train_shards, "val": val_shards, "test": test_shards}
        self.epoch_samples, self.resampled, self.shuffle_buffer = epoch_samples, resampled, shuffle_buffer
        self.urls: dict[str, list[str]] = {}
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.urls:
            return
        for split, spec in self.specs.items():
            if spec:
                self.urls[split] = expand_shards(spec)
        if "train" not in self.urls:
            raise ValueError("ShardData: train_shards is required")
        for split, urls in self.urls.items():
            split_meta = read_meta(urls)
            if split_meta.get("samples") is not None:
                self.skip_counter.set_total(split, int(split_meta["samples"]))
        meta = read_meta(self.urls["train"])
        if meta:
            self.classes = meta.get("classes")
            n = int(meta["num_classes"])
            if self.num_classes is not None and n != self.num_classes:
                raise ValueError(
                    f"ShardData: the shards hold {n} classes (meta.json) but num_classes={self.num_classes}"
                )
            self.num_classes = n
            if self.epoch_samples is None:
                self.epoch_samples = meta.get("samples")
            if self.epoch_samples == 0:
                raise ValueError(f"ShardData: meta.json says the train split is empty ({self.specs['train']!r})")
        if self.num_classes is None:
            raise ValueError("ShardData: no meta.json next to the shards; set num_classes")
        if not self.epoch_samples:
            raise ValueError("ShardData: set epoch_samples (no meta.json with the train sample count)")
        self.skip_counter.totals.setdefault("train", int(self.epoch_samples))

    def _wds_loader(self, split: str, train: bool, seed: int | None = None) -> Any:
        import webdataset as wds

        bs = self.batch_size if train else self.eval_batch_size
        urls = self.urls[split]
        ds = make_pipeline(urls, _Decode(self.transform(train), self.skip_counter, split),
                           CountingHandler(self.skip_counter, split, shard_sizes(urls)), bs, train,
                           self.resampled and train, seed=self.seed if seed is None else seed,
                           shuffle_buffer=self.shuffle_buffer)
        ds = ds.compose(wds.map(_stack))
        if not train:
            return wds.WebLoader(ds, batch_size=None, num_workers=self.num_workers,
                                 persistent_workers=self.num_workers > 0)
        # a fresh loader per epoch (workers see that epoch's seeds), worker RNGs seeded from it
        return wds.WebLoader(ds, batch_size=None, num_workers=self.num_workers,
                             generator=torch.Generator().manual_seed(seed))

    def _epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else 0

    def train_dataloader(self) -> Any:
        _, world = dist_info()
        nb = max(1, int(self.epoch_samples) // (self.batch_size * world))
        return ResumableShardLoader(lambda seed: self._wds_loader("train", True, seed), nb, self.seed,
                                    epoch=self._epoch, progress=self._progress)

    def val_dataloader(self) -> Any:
        return self._wds_loader("val" if "val" in self.urls else "train", False)

    def test_dataloader(self) -> Any:
        split = "test" if "test" in self.urls else ("val" if "val" in self.urls else "train")
        return self._wds_loader(split, False)

