"""Scenes composited from real objects: Fashion-MNIST items pasted on canvases.

Every object in a scene is a real Fashion-MNIST photo (28x28 grey, scaled up and tinted); its
instance mask is the item's own pixels (intensity above a threshold) minus what later items cover,
its box is the tight box of that visible mask, its class is the item's label. Train scenes use items
of the train split only, eval scenes items of the test split only. Scene ``i`` of a split depends on
``(seed, split, i)`` alone, so any subset is reproducible.

The scenes are written in the two formats users bring their own data in, so the recipes read them
through the same code as real COCO / ADE20K folders::

    root/images/{training,validation}/scene_000000.png    RGB scene
    root/annotations/{training,validation}/scene_000000.png semantic mask (0 = background, 1 + item class)
    root/instances_{training,validation}.json               COCO instances (bbox, RLE segmentation)
    root/meta.json                                          classes, seed, counts, provenance

Layering: recipes/data -> numpy, PIL, pycocotools only.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
SPLITS = {"training": ("train", 0), "validation": ("test", 1)}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# Key pairs tried, in order, when reading an npz: (images, labels) per split.
_NPZ_KEYS = {"train": (("x_train", "y_train"), ("train_images", "train_labels"), ("train_x", "train_y")),
             "test": (("x_test", "y_test"), ("test_images", "test_labels"), ("test_x", "test_y"))}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(path: str | Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST as ``{'train': (images [N, 28, 28] uint8, labels [N]), 'test': (...)}``.

    ``path``: a folder with the four idx ``.gz`` files (the Debian ``dataset-fashion-mnist`` package puts
    them in /usr/share/datasets/fashion-mnist), or an ``.npz`` with train/test arrays. ``None`` tries the
    repo's embedded subset (``data/fashion_mnist/*.npz``) and then the Debian folder.
    """
    if path is None:
        repo_data = Path(__file__).resolve().parents[2] / "data" / "fashion_mnist"
        candidates = sorted(repo_data.glob("*.npz")) if repo_data.is_dir() else []
        candidates.append(DEBIAN_DIR)
        for cand in candidates:
            if cand.exists():
                return load_fashion_mnist(cand)
        from zoo.resources import embedded_data_hint

        raise FileNotFoundError(
            f"no Fashion-MNIST found: neither {repo_data}/*.npz nor {DEBIAN_DIR}; install the Debian package "
            "`dataset-fashion-mnist` or pass the folder/npz path explicitly. "
            + embedded_data_hint(repo_data / "fashion_mnist_subset.npz")
        )
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Fashion-MNIST path {path} does not exist")
    out = {}
    if path.is_dir():
        for split, (img_name, lbl_name) in _IDX.items():
            img_path, lbl_path = path / img_name, path / lbl_name
            if not img_path.exists() or not lbl_path.exists():
                raise FileNotFoundError(f"{path} lacks {img_name} / {lbl_name} (Fashion-MNIST idx files)")
            out[split] = (_read_idx(img_path), _read_idx(lbl_path).astype(np.int64))
        return out
    with np.load(path) as npz:
        for split, options in _NPZ_KEYS.items():
            for xk, yk in options:
                if xk in npz and yk in npz:
                    images = npz[xk]
                    out[split] = (images.reshape(-1, 28, 28).astype(np.uint8), npz[yk].astype(np.int64))
                    break
            else:
                raise KeyError(f"{path} has keys {sorted(npz.files)}; expected one of {options} for {split}")
    return out


@dataclass
class SceneConfig:
    """How scenes look. ``size``: canvas side (px); items per scene in [min_items, max_items];
    item scale (x28 px) in [min_scale, max_scale]; pixels above ``threshold`` (0..255) are the item;
    a new item may hide at most ``max_occlusion`` of any earlier item."""

    size: int = 128
    min_items: int = 1
    max_items: int = 4
    min_scale: float = 1.0
    max_scale: float = 2.5
    threshold: int = 40
    max_occlusion: float = 0.5


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth coloured background with mild noise, float [H, W, 3] in 0..255."""
    base = rng.uniform(40, 215, size=3)
    grid = rng.uniform(-1, 1, size=(4, 4, 3)).astype(np.float32)
    low = np.stack([np.asarray(Image.fromarray(grid[..., c], mode="F").resize((size, size), Image.BILINEAR))
                    for c in range(3)], -1)
    return np.clip(base + 35 * low + rng.normal(0, 6, size=(size, size, 3)), 0, 255)


def make_scene(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, cfg: SceneConfig
) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """One scene: (RGB uint8 [S, S, 3], visible instance masks [S, S] bool, class indices 0..9)."""
    s = cfg.size
    canvas = _background(rng, s)
    owner = np.full((s, s), -1, dtype=np.int64)  # which instance each pixel shows
    full_areas: list[int] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(cfg.min_items, cfg.max_items + 1))):
        idx = int(rng.integers(len(images)))
        side = int(round(28 * rng.uniform(cfg.min_scale, cfg.max_scale)))
        side = min(side, s)
        item = np.asarray(Image.fromarray(images[idx]).resize((side, side), Image.BILINEAR), dtype=np.float32)
        mask = item > cfg.threshold
        if mask.sum() < 16:
            continue
        for _attempt in range(10):
            y0, x0 = int(rng.integers(0, s - side + 1)), int(rng.integers(0, s - side + 1))
            covered = owner[y0:y0 + side, x0:x0 + side][mask]
            ok = all(
                (covered == k).sum() <= cfg.max_occlusion * (owner == k).sum() for k in np.unique(covered) if k >= 0
            )
            if ok:
                break
        else:
            continue
        tint = rng.uniform(0, 255, size=3)
        shade = (0.35 + 0.65 * item / 255.0)[..., None]
        alpha = np.clip(item / 255.0 * 2.0, 0, 1)[..., None] * mask[..., None]
        patch = canvas[y0:y0 + side, x0:x0 + side]
        canvas[y0:y0 + side, x0:x0 + side] = patch * (1 - alpha) + tint * shade * alpha
        owner[y0:y0 + side, x0:x0 + side][mask] = len(classes)
        full_areas.append(int(mask.sum()))
        classes.append(int(labels[idx]))
    masks, kept = [], []
    for k, cls in enumerate(classes):
        visible = owner == k
        if visible.sum() >= max(16, (1 - cfg.max_occlusion) * full_areas[k] - 1):
            masks.append(visible)
            kept.append(cls)
    return np.clip(canvas, 0, 255).astype(np.uint8), masks, kept


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def write_scenes(
    root: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    seed: int = 0,
    cfg: SceneConfig | None = None,
    fashion_mnist: str | Path | dict | None = None,
) -> dict:
    """Generate scenes into ``root`` (layout in the module docstring); returns the meta dict."""
    from pycocotools import mask as mask_utils

    cfg = cfg or SceneConfig()
    if num_train < 0 or num_val < 0:
        raise ValueError(f"scene counts must be >= 0, got train={num_train} val={num_val}")
    data = fashion_mnist if isinstance(fashion_mnist, dict) else load_fashion_mnist(fashion_mnist)
    root = Path(root)
    categories = [{"id": i + 1, "name": n, "supercategory": "fashion"} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    counts = {}
    for split, n in (("training", num_train), ("validation", num_val)):
        src_split, split_idx = SPLITS[split]
        images, labels = data[src_split]
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": categories,
                "info": {"description": f"scenes composited from real objects (Fashion-MNIST {src_split} split)",
                         "seed": seed}}
        for i in range(n):
            rng = np.random.default_rng([seed, split_idx, i])
            scene, masks, classes = make_scene(rng, images, labels, cfg)
            name = f"scene_{i:06d}.png"
            Image.fromarray(scene).save(root / "images" / split / name)
            semantic = np.zeros((cfg.size, cfg.size), dtype=np.uint8)
            for m, c in zip(masks, classes):
                semantic[m] = c + 1
            Image.fromarray(semantic).save(root / "annotations" / split / name)
            coco["images"].append({"id": i + 1, "file_name": name, "width": cfg.size, "height": cfg.size})
            for m, c in zip(masks, classes):
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": c + 1,
                    "bbox": _box(m), "area": float(m.sum()), "segmentation": rle, "iscrowd": 0,
                })
        (root / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
        counts[split] = {"scenes": n, "objects": len(coco["annotations"])}
    meta = {
        "description": "scenes composited from real objects: Fashion-MNIST items (c) Zalando SE, MIT license",
        "seed": seed, "config": cfg.__dict__, "counts": counts,
        "detection_classes": list(FASHION_MNIST_CLASSES),
        "segmentation_classes": ["background", *FASHION_MNIST_CLASSES],
        "num_classes": len(FASHION_MNIST_CLASSES) + 1,
        "reduce_zero_label": False,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
