"""Predictions of the three recipe tasks as JSON records and as drawn images.

Used by ``tools/predict.py`` (any image files, a recipe ``.ckpt``, an ``.onnx`` or a timm name) and by the
LightningCLI ``predict`` subcommand (``PredictionWriter``: the datamodule's predict split, written to
``<root>/predictions/predictions.json``).

Records (one per image, JSON-able):

- classification: ``{"top": [{"label": i, "name": str, "score": p}, ...]}`` (softmax probabilities, best first);
- detection: ``{"boxes": [[x0, y0, x1, y1], ...], "labels": [1..K], "names": [...], "scores": [...]}`` in the
  image's pixel frame, labels as the detection recipe numbers them (0 is the background; ``class_names[label-1]``);
- segmentation: ``{"height", "width", "classes": [{"label", "name", "pixels", "fraction"}, ...]}`` (the classes
  present in the predicted label map, largest first; the map itself is written as a PNG by the callers).

Drawing uses torchvision's ``draw_bounding_boxes`` / ``draw_segmentation_masks``; classification writes the
top-k as a caption under the image. ``grid`` puts drawn images of different sizes on one canvas
(``torchvision.utils.make_grid``).
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = [
    "PredictionWriter",
    "classification_record",
    "detection_record",
    "draw",
    "grid",
    "palette",
    "save_png",
    "segmentation_record",
    "write_onnx_metadata",
]


# Kelly's 20 colours of maximum contrast (white and black left out), then golden-ratio hues
_DISTINCT = [(243, 195, 0), (135, 86, 146), (243, 132, 0), (161, 202, 241), (190, 0, 50), (194, 178, 128),
             (0, 136, 86), (230, 143, 172), (0, 103, 165), (249, 133, 121), (96, 78, 151), (246, 166, 0),
             (179, 68, 108), (220, 211, 0), (136, 45, 23), (141, 182, 0), (101, 69, 34), (226, 88, 34),
             (43, 61, 38), (132, 132, 130)]


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well separated RGB colours: Kelly's contrast colours, then evenly spread hues (golden-ratio walk)."""
    out = list(_DISTINCT[:n])
    for i in range(len(out), max(n, 1)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _name(names: Sequence[str] | None, index: int) -> str:
    return str(names[index]) if names is not None and 0 <= index < len(names) else str(index)


def classification_record(probs: torch.Tensor, class_names: Sequence[str] | None = None, topk: int = 5) -> dict:
    """``probs`` [C] (softmax) -> the ``topk`` classes, best first."""
    probs = probs.detach().float().flatten()
    k = min(int(topk), probs.numel())
    scores, idx = probs.topk(k)
    return {"top": [{"label": int(i), "name": _name(class_names, int(i)), "score": round(float(s), 6)}
                    for s, i in zip(scores, idx)]}


def detection_record(pred: dict[str, torch.Tensor], class_names: Sequence[str] | None = None,
                     score_threshold: float = 0.0) -> dict:
    """A torchvision detection output (``boxes`` xyxy, ``labels`` 1..K, ``scores``) -> record; detections scoring
    below ``score_threshold`` are left out."""
    keep = pred["scores"] >= score_threshold
    boxes, labels, scores = pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep]
    return {
        "boxes": [[round(float(v), 2) for v in b] for b in boxes],
        "labels": [int(v) for v in labels],
        "names": [_name(class_names, int(v) - 1) for v in labels],
        "scores": [round(float(v), 6) for v in scores],
    }


def segmentation_record(label_map: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """A label map [h, w] -> the classes present with their pixel counts, largest first."""
    h, w = label_map.shape[-2:]
    values, counts = torch.unique(label_map.flatten(), return_counts=True)
    order = counts.argsort(descending=True)
    return {"height": int(h), "width": int(w), "classes": [
        {"label": int(values[i]), "name": _name(class_names, int(values[i])), "pixels": int(counts[i]),
         "fraction": round(float(counts[i]) / (h * w), 6)} for i in order]}


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] float 0..1 or uint8 -> uint8 (grey [1, H, W] repeated to 3 channels)."""
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _upscale(image: torch.Tensor, min_side: int) -> tuple[torch.Tensor, float]:
    """Nearest-neighbour upscale so the short side is at least ``min_side`` (tiny images stay readable)."""
    h, w = image.shape[-2:]
    s = max(1, -(-min_side // max(1, min(h, w))))
    if s == 1:
        return image, 1.0
    return image.repeat_interleave(s, -2).repeat_interleave(s, -1), float(s)


def _caption(image: torch.Tensor, lines: list[str]) -> torch.Tensor:
    """The image with ``lines`` of text in a white band under it (PIL's default font)."""
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = image.shape[-2:]
    band = 12 * len(lines) + 4
    canvas = Image.new("RGB", (max(w, 150), h + band), (255, 255, 255))
    canvas.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), (0, 0))
    d = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        d.text((2, h + 2 + 12 * i), line, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def draw(task: str, image: torch.Tensor, record: dict, class_names: Sequence[str] | None = None,
         label_map: torch.Tensor | None = None, min_side: int = 128, num_classes: int | None = None) -> torch.Tensor:
    """The prediction drawn on ``image`` ([3, H, W], float 0..1 or uint8) -> uint8 [3, H', W'].

    classification: top-k caption; detection: boxes with "name score" ("name" for a record without scores, e.g.
    the ground truth; one colour per class); segmentation:
    ``label_map`` [H, W] as coloured masks (alpha 0.5), classes named ``background`` left clear. Images
    smaller than ``min_side`` are upscaled (nearest) first."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    img, scale = _upscale(_to_uint8(image), min_side)
    if task == "classification":
        return _caption(img, [f"{t['name']} {t['score']:.2f}" for t in record["top"][:3]])
    if task == "detection":
        if not record["boxes"]:
            return img
        n = num_classes or (len(class_names) if class_names else max(record["labels"]))
        colors = palette(n + 1)
        boxes = torch.tensor(record["boxes"], dtype=torch.float32) * scale
        labels = ([f"{nm} {s:.2f}" for nm, s in zip(record["names"], record["scores"])] if "scores" in record
                  else list(record["names"]))  # ground truth: names only
        return draw_bounding_boxes(img, boxes, labels=labels, colors=[colors[v] for v in record["labels"]],
                                   width=2)
    if task == "segmentation":
        if label_map is None:
            raise ValueError("draw(task='segmentation') needs the label_map")
        lm = label_map
        if scale != 1.0:
            lm = lm.repeat_interleave(int(scale), -2).repeat_interleave(int(scale), -1)
        n = num_classes or (len(class_names) if class_names else int(lm.max()) + 1)
        colors = palette(n)
        present = [int(v) for v in torch.unique(lm) if 0 <= int(v) < n
                   and _name(class_names, int(v)).lower() != "background"]
        if not present:
            return img
        masks = torch.stack([lm == v for v in present])
        return draw_segmentation_masks(img, masks, alpha=0.5, colors=[colors[v] for v in present])
    raise ValueError(f"unknown task {task!r}; expected classification, detection or segmentation")


def grid(images: list[torch.Tensor], nrow: int | None = None, cell: int = 256) -> torch.Tensor:
    """uint8 images of any sizes -> one uint8 grid: each scaled to fit ``cell`` x ``cell`` (aspect kept),
    padded white, ``nrow`` per row (default about square)."""
    import math

    import torch.nn.functional as F
    from torchvision.utils import make_grid

    if not images:
        raise ValueError("grid() needs at least one image")
    cells = []
    for im in images:
        h, w = im.shape[-2:]
        s = min(cell / h, cell / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        x = F.interpolate(im[None].float(), size=(nh, nw), mode="nearest" if s >= 1 else "area")[0]
        cells.append(F.pad(x, (0, cell - nw, 0, cell - nh), value=255.0))
    nrow = nrow or math.ceil(math.sqrt(len(cells)))
    return make_grid(torch.stack(cells), nrow=nrow, padding=4, pad_value=255.0).round().to(torch.uint8)


def write_onnx_metadata(path: str | Path, task: str, class_names: Sequence[str] | None = None, **extra: Any) -> None:
    """Record in an ``.onnx`` file (its ``metadata_props``) what ``tools/predict.py`` needs to use it: ``zoo.task``,
    ``zoo.class_names`` and ``extra`` (e.g. ``img_size``, ``mean``, ``std``, ``input`` = ``"0..1"`` when the graph
    takes raw 0..1 RGB, ``size_multiple``) as ``zoo.<key>``, values JSON-encoded unless strings."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {"zoo.task": task, **({"zoo.class_names": json.dumps(list(class_names))} if class_names else {})}
    props.update({f"zoo.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """uint8 [3, H, W] (or a label map [H, W] as 8-bit grey) -> PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image.cpu().numpy()
    if image.dim() == 3:
        arr = arr.transpose(1, 2, 0)
    Image.fromarray(arr.astype("uint8")).save(path)
    return path


class PredictionWriter(BasePredictionWriter):
    """Writes what ``trainer.predict`` returned as ``<out_dir>/predictions.json`` (one record per image, see the
    module docstring, in the order of the predict loader) at the end of the predict epoch; segmentation label
    maps also go to ``<out_dir>/masks/<index>.png``. ``out_dir`` defaults to ``<default_root_dir>/predictions``.
    Class names: the model's ``class_names`` hparam, else the datamodule's ``class_names`` / ``classes``."""

    def __init__(self, out_dir: str | Path | None = None, topk: int = 5, score_threshold: float = 0.05) -> None:
        super().__init__(write_interval="epoch")
        self.out_dir = out_dir
        self.topk, self.score_threshold = topk, score_threshold
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        if trainer.global_rank != 0:
            return
        out = Path(self.out_dir or Path(trainer.default_root_dir) / "predictions")
        out.mkdir(parents=True, exist_ok=True)
        task = pl_module.hparams.get("task", getattr(pl_module, "task", ""))
        dm = getattr(trainer, "datamodule", None)
        names = (pl_module.hparams.get("class_names") or getattr(dm, "class_names", None)
                 or getattr(dm, "classes", None))
        records: list[dict] = []
        for batch in predictions:  # one predict loader: its batch outputs (tensor [B, C] rows, or lists)
            for item in batch:
                i = len(records)
                if task == "classification":
                    rec = classification_record(item, names, self.topk)
                elif task == "detection":
                    rec = detection_record(item, names, self.score_threshold)
                elif task == "segmentation":
                    rec = segmentation_record(item, names)
                    rec["mask_png"] = str(save_png(item.to(torch.uint8), out / "masks" / f"{i:06d}.png"))
                else:
                    raise ValueError(f"PredictionWriter: unknown task {task!r}")
                records.append({"index": i, **rec})
        self.path = out / "predictions.json"
        self.path.write_text(json.dumps({"task": task, "class_names": list(names) if names else None,
                                         "predictions": records}, indent=1))
        print(f"predictions of {len(records)} images: {self.path}")
