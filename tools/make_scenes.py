"""Write scenes composited from real objects (Fashion-MNIST items on canvases) as COCO + ADE20K-style folders.

    python tools/make_scenes.py --out data/scenes --train 2000 --val 500 --seed 0
    python tools/make_scenes.py --fashion-mnist /usr/share/datasets/fashion-mnist --out /tmp/scenes

Train scenes use the Fashion-MNIST train split only, val scenes the test split only; the same seed gives
the same files. Layout and details: ``recipes/data/composite.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.data.composite import SceneConfig, write_scenes  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--train", type=int, default=2000, help="number of training scenes")
    p.add_argument("--val", type=int, default=500, help="number of validation scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="canvas side in px")
    p.add_argument("--min-items", type=int, default=1)
    p.add_argument("--max-items", type=int, default=4)
    p.add_argument("--min-scale", type=float, default=1.0, help="item scale (x28 px), lower bound")
    p.add_argument("--max-scale", type=float, default=2.5, help="item scale (x28 px), upper bound")
    p.add_argument("--fashion-mnist", default=None,
                   help="folder with the idx .gz files or an .npz (default: data/fashion_mnist/*.npz, then "
                        "/usr/share/datasets/fashion-mnist)")
    a = p.parse_args(argv)
    if a.min_items < 1 or a.max_items < a.min_items:
        p.error(f"need 1 <= --min-items <= --max-items, got {a.min_items}, {a.max_items}")
    cfg = SceneConfig(size=a.size, min_items=a.min_items, max_items=a.max_items, min_scale=a.min_scale,
                      max_scale=a.max_scale)
    meta = write_scenes(a.out, a.train, a.val, a.seed, cfg, a.fashion_mnist)
    for split, c in meta["counts"].items():
        print(f"{split}: {c['scenes']} scenes, {c['objects']} objects")
    print(f"wrote {a.out} (COCO: instances_training.json / instances_validation.json; masks: annotations/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
