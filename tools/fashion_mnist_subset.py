"""Build the embedded Fashion-MNIST subset (``data/fashion_mnist/fashion_mnist_subset.npz``) from the full set.

The full set comes from the Debian package ``dataset-fashion-mnist`` (its idx gz files under
``/usr/share/datasets/fashion-mnist``; without root: ``apt-get download dataset-fashion-mnist &&
dpkg -x dataset-fashion-mnist_*.deb /tmp/fmnist`` then ``--src /tmp/fmnist/usr/share/datasets/fashion-mnist``).
The subset is stratified (the same number of images per class, drawn with a fixed seed) from the official
train and test splits, so train and test never share an image.

    python tools/fashion_mnist_subset.py --src /usr/share/datasets/fashion-mnist --train-per-class 1000 \
        --test-per-class 200
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array (uint8 images [N, 28, 28] or labels [N])."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated ({arr.size} values, header says {shape})")
    return arr.reshape(shape)


def load_split(src: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] int64 of the official ``split`` ('train' 60k or 'test' 10k)."""
    src = Path(src)
    img_f, lab_f = FILES[split]
    for f in (img_f, lab_f):
        if not (src / f).is_file():
            raise FileNotFoundError(
                f"{src / f} not found: install the Debian package dataset-fashion-mnist or pass --src to the folder "
                "holding the idx gz files"
            )
    x, y = read_idx(src / img_f), read_idx(src / lab_f).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"{split}: {len(x)} images but {len(y)} labels")
    return x, y


def stratified(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices with ``per_class`` random picks from every class."""
    idx = []
    for c in np.unique(y):
        pool = np.flatnonzero(y == c)
        if per_class > len(pool):
            raise ValueError(f"class {c} has only {len(pool)} images, asked for {per_class}")
        idx.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(idx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=DEBIAN_DIR, help="folder with the Fashion-MNIST idx gz files")
    ap.add_argument("--out", default="data/fashion_mnist/fashion_mnist_subset.npz")
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    xtr, ytr = load_split(args.src, "train")
    xte, yte = load_split(args.src, "test")
    itr, ite = stratified(ytr, args.train_per_class, rng), stratified(yte, args.test_per_class, rng)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        x_train=xtr[itr], y_train=ytr[itr].astype(np.uint8), idx_train=itr.astype(np.int32),
        x_test=xte[ite], y_test=yte[ite].astype(np.uint8), idx_test=ite.astype(np.int32),
        classes=np.array(CLASSES),
    )
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {sha[:16]}): "
          f"train {len(itr)} ({args.train_per_class}/class), test {len(ite)} ({args.test_per_class}/class), "
          f"seed {args.seed}")


if __name__ == "__main__":
    main()
