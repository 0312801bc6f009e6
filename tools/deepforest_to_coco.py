"""Convert the tree-crown annotations shipped in the ``deepforest`` wheel to COCO, tiled.

The ``deepforest`` 2.1.0 wheel (MIT; NEON imagery CC0) carries aerial RGB images with hand-drawn
tree-crown boxes in Pascal VOC XML under ``deepforest/data/``. This tool reads those files straight
from the wheel (a zip) or from an unpacked folder -- it never imports or installs the package -- cuts
every image into ``tile x tile`` JPEG tiles and writes one COCO json per split. The split is by
SOURCE image, never by tile, so no tree appears in both splits.

    pip download deepforest==2.1.0 --no-deps -d /tmp/df
    python tools/deepforest_to_coco.py /tmp/df/deepforest-2.1.0-py3-none-any.whl --out data/deepforest

Tiles sit on a regular grid; the last row/column is shifted back so every tile lies inside the image
(edge tiles overlap their neighbours). A box cut by a tile edge is clipped and kept when at least
``min_visible`` of its area is inside the tile. All labels become one category, ``tree`` (the wheel's
SOAP_061 marks crowns Alive/Dead; the original label is kept as ``attributes.label``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

DATA_PREFIX = "deepforest/data/"
DEFAULT_VAL = ("2019_YELL_2_541000_4977000_image_crop",)
NOTICE = """\
# data/deepforest

Tree-crown boxes on aerial RGB imagery, converted to COCO by `tools/deepforest_to_coco.py` from the
annotation files shipped in the `deepforest` {version} wheel (`deepforest/data/*.xml` + images).

- Images: National Ecological Observatory Network (NEON) airborne RGB imagery, public domain (CC0).
- Annotations and the package: DeepForest, MIT License, Copyright (c) 2019, Ben Weinstein
  (https://github.com/weecology/DeepForest). The MIT notice follows.

Split by source image (tiles of one image never cross splits):
{splits}

Tiles: {tile}x{tile} px, JPEG quality {quality}; boxes clipped at tile edges, kept if >= {min_visible:.0%} visible.
One category, `tree` (id 1); the original VOC label is kept in `attributes.label`.

---
{license}
"""


class Source:
    """Files under ``deepforest/data/`` of a wheel (zip) or an unpacked folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file() and zipfile.is_zipfile(path):
            self.zip: zipfile.ZipFile | None = zipfile.ZipFile(path)
            self.names = [n[len(DATA_PREFIX):] for n in self.zip.namelist() if n.startswith(DATA_PREFIX)]
        elif path.is_dir():
            self.zip = None
            root = path / "deepforest" / "data" if (path / "deepforest" / "data").is_dir() else path
            self.root = root
            self.names = sorted(p.name for p in root.iterdir() if p.is_file())
        else:
            raise FileNotFoundError(
                f"{path} is neither the deepforest wheel nor a folder; get it with "
                "`pip download deepforest==2.1.0 --no-deps -d /tmp/df`"
            )

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(DATA_PREFIX + name)
        return (self.root / name).read_bytes()

    def license_text(self) -> tuple[str, str]:
        """(version, MIT license text) from the wheel's dist-info, or placeholders for a folder."""
        if self.zip is None:
            return "2.1.0", "MIT License, Copyright (c) 2019, Ben Weinstein"
        lic = [n for n in self.zip.namelist() if n.endswith("dist-info/licenses/LICENSE") or n.endswith("/LICENSE")]
        meta = [n for n in self.zip.namelist() if n.endswith("dist-info/METADATA")]
        version = "unknown"
        if meta:
            for line in self.zip.read(meta[0]).decode().splitlines():
                if line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                    break
        text = self.zip.read(lic[0]).decode().strip() if lic else "MIT License, Copyright (c) 2019, Ben Weinstein"
        return version, text


def parse_voc(xml_bytes: bytes) -> tuple[str, int, int, list[tuple[float, float, float, float, str]]]:
    """Pascal VOC XML -> (filename, width, height, [(xmin, ymin, xmax, ymax, label)])."""
    root = ET.fromstring(xml_bytes)
    size = root.find("size")
    width, height = int(size.findtext("width")), int(size.findtext("height"))
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        coords = tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((*coords, obj.findtext("name") or "tree"))
    return root.findtext("filename"), width, height, boxes


def tile_origins(size: int, tile: int) -> list[int]:
    """Start offsets covering ``[0, size)`` with tiles of ``tile`` px; the last one is shifted inside."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, tile))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def tiles(
    width: int, height: int, boxes: list, tile: int, min_visible: float
) -> Iterator[tuple[tuple[int, int, int, int], list]]:
    """Yield ((x0, y0, w, h), [(x, y, w, h, label) in tile coordinates]) for every tile."""
    for y0 in tile_origins(height, tile):
        for x0 in tile_origins(width, tile):
            tw, th = min(tile, width - x0), min(tile, height - y0)
            kept = []
            for xmin, ymin, xmax, ymax, label in boxes:
                area = max(xmax - xmin, 0) * max(ymax - ymin, 0)
                cx0, cy0 = max(xmin, x0), max(ymin, y0)
                cx1, cy1 = min(xmax, x0 + tw), min(ymax, y0 + th)
                if cx1 - cx0 < 2 or cy1 - cy0 < 2 or area <= 0:
                    continue
                if (cx1 - cx0) * (cy1 - cy0) < min_visible * area:
                    continue
                kept.append((cx0 - x0, cy0 - y0, cx1 - cx0, cy1 - cy0, label))
            yield (x0, y0, tw, th), kept


def convert(
    src: Path, out: Path, tile: int = 400, quality: int = 90, min_visible: float = 0.5,
    val_images: tuple[str, ...] = DEFAULT_VAL,
) -> dict:
    """Write ``out/images/*.jpg``, ``out/train.json``, ``out/val.json``, ``out/NOTICE.md``; return a summary."""
    source = Source(src)
    xmls = sorted(n for n in source.names if n.endswith(".xml"))
    if not xmls:
        raise ValueError(f"no VOC .xml files under {DATA_PREFIX} in {src}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "tree", "supercategory": "plant"}]
    coco = {s: {"images": [], "annotations": [], "categories": categories} for s in ("train", "val")}
    summary: dict = {"train": {}, "val": {}}
    for xml_name in xmls:
        filename, width, height, boxes = parse_voc(source.read(xml_name))
        stem = Path(xml_name).stem
        candidates = [filename, stem + ".png", stem + ".tif", stem + ".jpg"]
        img_name = next((c for c in candidates if c in source.names), None)
        if img_name is None:
            print(f"skip {xml_name}: none of {candidates} in the source", file=sys.stderr)
            continue
        image = Image.open(io.BytesIO(source.read(img_name))).convert("RGB")
        if image.size != (width, height):
            raise ValueError(f"{img_name} is {image.size}, its XML says {(width, height)}")
        split = "val" if stem in val_images else "train"
        doc = coco[split]
        n_tiles = n_boxes = 0
        for (x0, y0, tw, th), kept in tiles(width, height, boxes, tile, min_visible):
            tile_name = f"{stem}_x{x0:04d}_y{y0:04d}.jpg"
            image.crop((x0, y0, x0 + tw, y0 + th)).save(out / "images" / tile_name, quality=quality)
            image_id = len(coco["train"]["images"]) + len(coco["val"]["images"]) + 1
            doc["images"].append({"id": image_id, "file_name": tile_name, "width": tw, "height": th,
                                  "source": img_name, "offset": [x0, y0]})
            for x, y, w, h, label in kept:
                ann_id = len(coco["train"]["annotations"]) + len(coco["val"]["annotations"]) + 1
                doc["annotations"].append({
                    "id": ann_id, "image_id": image_id, "category_id": 1,
                    "bbox": [round(v, 2) for v in (x, y, w, h)], "area": round(w * h, 2), "iscrowd": 0,
                    "attributes": {"label": label},
                })
            n_tiles += 1
            n_boxes += len(kept)
        summary[split][img_name] = {"size": [width, height], "boxes": len(boxes), "tiles": n_tiles,
                                    "tile_boxes": n_boxes}
    for split, doc in coco.items():
        (out / f"{split}.json").write_text(json.dumps(doc, separators=(",", ":")))
    version, license_text = source.license_text()
    split_lines = "\n".join(
        f"- {split}: " + ", ".join(f"{k} ({v['size'][0]}x{v['size'][1]}, {v['boxes']} boxes, {v['tiles']} tiles)"
                                   for k, v in items.items())
        for split, items in summary.items()
    )
    (out / "NOTICE.md").write_text(NOTICE.format(version=version, splits=split_lines, tile=tile, quality=quality,
                                                 min_visible=min_visible, license=license_text))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="deepforest-2.1.0-py3-none-any.whl, or its unpacked folder")
    parser.add_argument("--out", type=Path, default=Path("data/deepforest"))
    parser.add_argument("--tile", type=int, default=400)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--min-visible", type=float, default=0.5)
    parser.add_argument("--val-images", nargs="+", default=list(DEFAULT_VAL),
                        help="source image stems that go to the val split")
    args = parser.parse_args(argv)
    summary = convert(args.src, args.out, args.tile, args.quality, args.min_visible, tuple(args.val_images))
    for split, items in summary.items():
        n_tiles = sum(v["tiles"] for v in items.values())
        n_boxes = sum(v["tile_boxes"] for v in items.values())
        print(f"{split}: {len(items)} source images, {n_tiles} tiles, {n_boxes} boxes")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
