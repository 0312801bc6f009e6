"""Write webdataset tar shards for classification (read by ``recipes.data.ShardData``).

Sources:
    npz      the embedded Fashion-MNIST subset (or any npz with x_train/y_train/x_test/y_test)
    debian   the full Fashion-MNIST set (60k/10k) from the Debian package dataset-fashion-mnist
    folder   an image folder <root>/<split>/<class>/*.png|jpg (torchvision ImageFolder layout)

    python tools/make_shards.py npz --out shards/fmnist
    python tools/make_shards.py debian --src /usr/share/datasets/fashion-mnist --out shards/fmnist_full
    python tools/make_shards.py folder --src /data/pets --out shards/pets --splits train val

Each split goes to ``<out>/<split>/<split>-NNNNNN.tar`` (``--per-shard`` samples each; samples are shuffled
with ``--seed`` before sharding so every shard holds a mix of classes); each split folder gets a ``meta.json``
(num_classes, classes, shards, sample counts in all and per shard: the reader counts what a truncated shard
loses). Sample: ``<key>.png`` (or the original file bytes for folders) + ``<key>.cls`` (class index).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMG_EXTS = (".png", ".jpg", ".jpeg", ".webp")


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_split(samples: list[tuple[str, bytes, int]], out: Path, split: str, per_shard: int,
                classes: list[str]) -> dict:
    """Write one split's shards + meta.json; ``samples``: (ext, bytes, label)."""
    import webdataset as wds

    d = out / split
    d.mkdir(parents=True, exist_ok=True)
    shards, shard_samples = [], {}
    for s in range(0, len(samples), per_shard):
        name = d / f"{split}-{s // per_shard:06d}.tar"
        with wds.TarWriter(str(name)) as w:
            for i, (ext, data, label) in enumerate(samples[s: s + per_shard], start=s):
                w.write({"__key__": f"{split}_{i:07d}", ext: data, "cls": str(int(label)).encode()})
        shards.append(name.name)
        shard_samples[name.name] = len(samples[s: s + per_shard])
    # shard_samples lets the reader count the samples that a truncated or corrupt shard loses
    info = {"shards": shards, "samples": len(samples), "shard_samples": shard_samples}
    meta = {"num_classes": len(classes), "classes": list(classes), "split": split, **info}
    (d / "meta.json").write_text(json.dumps(meta, indent=2))
    return info


def from_arrays(x: np.ndarray, y: np.ndarray, seed: int) -> list[tuple[str, bytes, int]]:
    order = np.random.default_rng(seed).permutation(len(y))
    return [("png", _png(x[i]), int(y[i])) for i in order]


def from_folder(root: Path, seed: int) -> tuple[list[tuple[str, bytes, int]], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = []
    for ci, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / c)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTS):
                    ext = f.lower().rsplit(".", 1)[1]
                    items.append(("jpg" if ext == "jpeg" else ext, Path(dirpath, f).read_bytes(), ci))
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order], classes


def iter_sources(args: argparse.Namespace) -> Iterator[tuple[str, list[tuple[str, bytes, int]], list[str]]]:
    if args.source in ("npz", "debian"):
        from tools.fashion_mnist_subset import CLASSES, load_split

        if args.source == "npz":
            from recipes.data.classification import DEFAULT_NPZ

            path = args.src or DEFAULT_NPZ
            if not os.path.isfile(path):
                raise SystemExit(f"no npz at {path!r}")
            z = np.load(path)
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else [str(i) for i in range(10)]
            arrays = {"train": (z["x_train"], z["y_train"]), "test": (z["x_test"], z["y_test"])}
        else:
            src = args.src or "/usr/share/datasets/fashion-mnist"
            classes = list(CLASSES)
            arrays = {s: load_split(src, s) for s in ("train", "test")}
        xtr, ytr = arrays["train"]
        if args.val_per_class > 0:  # held out of train, stratified, like recipes.data.NpzData
            rng = np.random.default_rng(args.seed)
            vi = np.sort(np.concatenate([rng.choice(np.flatnonzero(ytr == c), args.val_per_class, replace=False)
                                         for c in np.unique(ytr)]))
            keep = np.setdiff1d(np.arange(len(ytr)), vi)
            arrays["val"] = (xtr[vi], ytr[vi])
            arrays["train"] = (xtr[keep], ytr[keep])
        for split, (x, y) in arrays.items():
            yield split, from_arrays(x, y, args.seed), classes
    else:
        if not args.src or not os.path.isdir(args.src):
            raise SystemExit(f"folder source needs --src <root with {'/'.join(args.splits)} folders>")
        for split in args.splits:
            d = Path(args.src) / split
            if d.is_dir():
                samples, classes = from_folder(d, args.seed)
                yield split, samples, classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", choices=["npz", "debian", "folder"])
    ap.add_argument("--src", default=None, help="npz file / Debian idx folder / image-folder root")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-shard", type=int, default=1000, help="samples per tar shard")
    ap.add_argument("--val-per-class", type=int, default=100, help="npz/debian: train images held out per class")
    ap.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="folder: split subfolders")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    for split, samples, classes in iter_sources(args):
        if not samples:
            raise SystemExit(f"{split}: no samples found")
        info = write_split(samples, out, split, args.per_shard, classes)
        print(f"{split}: {info['samples']} samples in {len(info['shards'])} shards -> {out / split}")

if __name__ == "__main__":
    main()
