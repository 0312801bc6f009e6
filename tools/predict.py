"""Predict with a trained model on image files and look at the result: JSON + drawn images.

    python tools/predict.py runs/demo/checkpoints/best-*.ckpt shirt.png boots.png    # a recipe checkpoint (any task)
    python tools/predict.py runs/demo_det/crossformer_nano_det.onnx data/scenes/images/validation --out preds
    python tools/predict.py crossformer_nano --checkpoint w.safetensors --class-names names.txt photos/

SOURCE is a recipe ``.ckpt`` (classification, detection or segmentation, from tools/train.py or tools/demo.py),
an ``.onnx`` file, or a timm model name (classification; ``--checkpoint`` loads a zoo/timm state dict,
``--pretrained`` the default pretrained weights). INPUTS are image files and/or folders (their images, sorted,
subfolders included).

What it writes into ``--out`` (default ``runs/predict``; files of the same names are replaced):

- ``predictions.json``: per image its file and the prediction -- classification: the top-k classes with their
  names and probabilities; detection: boxes (xyxy, pixels of the input image), labels, class names and scores
  (at or above ``--score-threshold``); segmentation: the classes present with their pixel counts and the path of
  the label map PNG (``masks/<name>.png``, pixel value = class index);
- ``drawn/<name>.png``: the prediction drawn on the image (torchvision ``draw_bounding_boxes`` /
  ``draw_segmentation_masks``; the top-k as a caption);
- ``grid.png``: all drawn images on one canvas, when more than one image was given.

Preprocessing follows the source: a recipe checkpoint its training settings (classification: input size and the
data's mean/std; detection: the detector's own transform; segmentation: ImageNet normalisation, whole image,
padded to a multiple of 32); an ``.onnx`` written by tools/demo.py carries them in its metadata (``zoo.*``
properties), another ONNX file needs ``--task`` when its outputs do not tell it and ``--img-size/--mean/--std``
(default 224 and ImageNet's); a timm name its ``pretrained_cfg``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TASKS = ("classification", "detection", "segmentation")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files among ``inputs`` and in the folders among them (sorted, recursive); raises SystemExit naming
    a path that does not exist or inputs without any image."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise SystemExit(f"error: folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"error: input {item!r} does not exist (give image files or folders)")
    return files


def read_class_names(value: str | None) -> list[str] | None:
    """``--class-names``: a text file with one name per line, or a comma-separated list."""
    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [v.strip() for v in value.split(",")]


def _pad32(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))


class Predictor:
    """``predictor(image [3, H, W] float 0..1, pil_image)`` -> ``(record, label_map or None)`` for one image."""

    task: str = ""
    class_names: list[str] | None = None
    num_classes: int | None = None
    description: str = ""

    def _classify(self, logits: torch.Tensor, topk: int) -> dict:
        from recipes.predictions import classification_record

        return classification_record(logits.float().softmax(-1)[0], self.class_names, topk)


class TorchPredictor(Predictor):
    """A recipe checkpoint or a timm model, run in PyTorch."""

    def __init__(self, model: torch.nn.Module, task: str, transform: Any = None, mean: Any = IMAGENET_MEAN,
                 std: Any = IMAGENET_STD) -> None:
        self.model, self.task, self.transform = model.eval(), task, transform
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, pil: Any, topk: int = 5, score_threshold: float = 0.3) -> tuple:
        from recipes.predictions import detection_record, segmentation_record

        if self.task == "classification":
            return self._classify(self.model(self.transform(pil)[None]), topk), None
        if self.task == "detection":
            return detection_record(self.model([image])[0], self.class_names, score_threshold), None
        h, w = image.shape[-2:]
        logits = self.model(_pad32((image[None] - self.mean) / self.std))[..., :h, :w]
        label_map = logits.argmax(1)[0]
        return segmentation_record(label_map, self.class_names), label_map


class OnnxPredictor(Predictor):
    """An ``.onnx`` file in onnxruntime; its ``zoo.*`` metadata (tools/demo.py writes them) say the task, the
    class names and the preprocessing, else the outputs and the command-line options do."""

    def __init__(self, path: Path, args: argparse.Namespace) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = self.sess.get_modelmeta().custom_metadata_map
        self.meta = meta
        outs = self.sess.get_outputs()
        task = args.task or meta.get("zoo.task")
        if task is None:
            if len(outs) == 3:
                task = "detection"
            elif len(outs) == 1 and len(outs[0].shape) == 4:
                task = "segmentation"
            elif len(outs) == 1 and len(outs[0].shape) == 2:
                task = "classification"
            else:
                raise SystemExit(f"error: cannot tell the task of {path} from its outputs "
                                 f"({[o.shape for o in outs]}); give --task")
        if task not in TASKS:
            raise SystemExit(f"error: {path} says task {task!r}; expected one of {TASKS}")
        self.task = task
        self.in_name = self.sess.get_inputs()[0].name
        self.class_names = json.loads(meta["zoo.class_names"]) if "zoo.class_names" in meta else None
        self.img_size = args.img_size or int(meta.get("zoo.img_size", 224))
        self.mean = tuple(args.mean or json.loads(meta.get("zoo.mean", json.dumps(IMAGENET_MEAN))))
        self.std = tuple(args.std or json.loads(meta.get("zoo.std", json.dumps(IMAGENET_STD))))
        self.normalized_input = meta.get("zoo.input", "normalized") == "normalized"
        self.multiple = int(meta.get("zoo.size_multiple", 32 if task == "segmentation" else 1))
        if task == "classification":
            from recipes.data.classification import build_transforms

            self.transform = build_transforms(self.img_size, False, self.mean, self.std)

    def _run(self, x: torch.Tensor) -> list:
        return self.sess.run(None, {self.in_name: x.numpy().astype("float32")})

    def __call__(self, image: torch.Tensor, pil: Any, topk: int = 5, score_threshold: float = 0.3) -> tuple:
        from recipes.predictions import detection_record, segmentation_record

        if self.task == "classification":
            return self._classify(torch.from_numpy(self._run(self.transform(pil)[None])[0]), topk), None
        if self.task == "detection":
            boxes, labels, scores = (torch.from_numpy(o) for o in self._run(image[None]))
            pred = {"boxes": boxes, "labels": labels, "scores": scores}
            return detection_record(pred, self.class_names, score_threshold), None
        h, w = image.shape[-2:]
        x = image[None]
        if self.normalized_input:
            x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        logits = torch.from_numpy(self._run(_pad32(x, self.multiple))[0])[..., :h, :w]
        label_map = logits.argmax(1)[0]
        return segmentation_record(label_map, self.class_names), label_map


def load_predictor(source: str, args: argparse.Namespace) -> Predictor:
    """The predictor for SOURCE (a recipe .ckpt, an .onnx file or a timm name); SystemExit with what was wrong."""
    p = Path(source)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise SystemExit(f"error: ONNX file {source!r} does not exist")
        pred = OnnxPredictor(p, args)
        pred.description = f"ONNX {p.name} ({pred.task})"
    elif p.suffix == ".ckpt" or p.is_file():
        from recipes.checkpoint import load_model, read_recipe_checkpoint

        if p.suffix != ".ckpt":
            raise SystemExit(f"error: {source} is a weights file: name the model and pass it as --checkpoint, e.g. "
                             f"tools/predict.py <timm name> --checkpoint {source} images/")
        try:
            model, info = load_model(p)
            dm_hp = read_recipe_checkpoint(p).get("datamodule_hyper_parameters") or {}
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        hp = info["hparams"]
        task = info["task"]
        mean = tuple(hp.get("mean") or dm_hp.get("mean") or IMAGENET_MEAN)
        std = tuple(hp.get("std") or dm_hp.get("std") or IMAGENET_STD)
        transform = None
        if task == "classification":
            from recipes.data.classification import build_transforms

            transform = build_transforms(int(args.img_size or info["img_size"] or 224), False, mean, std)
        pred = TorchPredictor(model, task, transform, mean, std)
        pred.class_names = hp.get("class_names") or _npz_classes(dm_hp)
        pred.num_classes = info.get("num_classes")
        pred.description = f"recipe checkpoint {p.name} ({task}, {info.get('model_name')})"
    else:
        from timm.data import create_transform, resolve_data_config

        from zoo.export import build_model

        try:
            model = build_model(source, checkpoint=args.checkpoint, pretrained=args.pretrained)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        cfg = resolve_data_config({}, model=model)
        if args.img_size:
            cfg["input_size"] = (3, args.img_size, args.img_size)
        pred = TorchPredictor(model, "classification", create_transform(**cfg))
        pred.num_classes = model.num_classes
        if model.num_classes == 1000:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            pred.class_names = [info.index_to_description(i) for i in range(1000)]
        pred.description = f"timm model {source}" + (f" + {args.checkpoint}" if args.checkpoint else "")
    names = read_class_names(args.class_names)
    if names is not None:
        pred.class_names = names
    return pred


def _npz_classes(dm_hp: dict) -> list[str] | None:
    """Class names of the classification npz the checkpoint was trained on (its ``classes`` array), if readable."""
    path = dm_hp.get("path")
    if not path or not str(path).endswith(".npz") or not Path(path).is_file():
        return None
    import numpy as np

    with np.load(path) as z:
        return [str(c) for c in z["classes"]] if "classes" in z.files else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="recipe .ckpt, .onnx file, or timm model name")
    ap.add_argument("inputs", nargs="+", help="image files and/or folders")
    ap.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    ap.add_argument("--topk", type=int, default=5, help="classification: classes per image (default 5)")
    ap.add_argument("--score-threshold", type=float, default=0.3, help="detection: lowest score kept (default 0.3)")
    ap.add_argument("--class-names", help="names file (one per line) or comma-separated list")
    ap.add_argument("--task", choices=TASKS, help="ONNX without zoo metadata: what its outputs mean")
    ap.add_argument("--img-size", type=int, help="classification input size (default: the source's)")
    ap.add_argument("--mean", type=float, nargs=3, help="ONNX without metadata: normalisation mean")
    ap.add_argument("--std", type=float, nargs=3, help="ONNX without metadata: normalisation std")
    ap.add_argument("--checkpoint", help="timm name: a state dict file to load strictly")
    ap.add_argument("--pretrained", action="store_true", help="timm name: its default pretrained weights")
    ap.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.topk < 1:
        ap.error(f"--topk must be >= 1, got {args.topk}")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")

    import numpy as np
    from PIL import Image

    import zoo  # noqa: F401 - registers the zoo models with timm
    from recipes.data.images import to_rgb
    from recipes.predictions import draw, grid, save_png

    files = collect_images(args.inputs)
    predictor = load_predictor(args.source, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, drawn, errors = [], [], []
    stems: dict[str, int] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                pil = to_rgb(im)
        except (OSError, ValueError) as err:
            errors.append({"file": str(f), "error": f"{type(err).__name__}: {err}"})
            print(f"skipped {f}: cannot read it as an image ({err})", file=sys.stderr)
            continue
        image = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        record, label_map = predictor(image, pil, topk=args.topk, score_threshold=args.score_threshold)
        n = stems.get(f.stem, 0)
        stems[f.stem] = n + 1
        name = f.stem if n == 0 else f"{f.stem}_{n}"
        if label_map is not None:
            record["mask_png"] = str(save_png(label_map.to(torch.uint8), out / "masks" / f"{name}.png"))
        picture = draw(predictor.task, image, record, predictor.class_names, label_map=label_map,
                       num_classes=predictor.num_classes)
        record["drawn_png"] = str(save_png(picture, out / "drawn" / f"{name}.png"))
        records.append({"file": str(f), **record})
        drawn.append(picture)
        print(f"{f}: {_summary(predictor.task, record)}")
    if not records:
        raise SystemExit("error: none of the inputs could be read as an image")
    doc: dict[str, Any] = {"source": args.source, "description": predictor.description, "task": predictor.task,
                           "class_names": predictor.class_names, "predictions": records, "unreadable": errors}
    if len(drawn) > 1:
        doc["grid_png"] = str(save_png(grid(drawn), out / "grid.png"))
    (out / "predictions.json").write_text(json.dumps(doc, indent=1))
    print(f"{predictor.description}: {len(records)} images -> {out / 'predictions.json'}, drawn images in "
          f"{out / 'drawn'}" + (f", grid {doc['grid_png']}" if "grid_png" in doc else ""))
    return 0


def _summary(task: str, record: dict) -> str:
    if task == "classification":
        return ", ".join(f"{t['name']} {t['score']:.3f}" for t in record["top"][:3])
    if task == "detection":
        return f"{len(record['boxes'])} boxes" + (": " + ", ".join(
            f"{n} {s:.2f}" for n, s in list(zip(record["names"], record["scores"]))[:5]) if record["boxes"] else "")
    return ", ".join(f"{c['name']} {100 * c['fraction']:.1f}%" for c in record["classes"][:4])


if __name__ == "__main__":
    sys.exit(main())
