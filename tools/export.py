"""Export a model to ONNX and verify it in onnxruntime (thin CLI over :func:`zoo.export.export_onnx`).

Examples::

    python tools/export.py nat_mini -o nat_mini.onnx                      # dynamic batch + H/W, opset 18
    python tools/export.py maxvit_tiny --checkpoint my.safetensors --head features -o maxvit_feats.onnx
    python tools/export.py runs/seg/last.ckpt -o seg.onnx                 # a recipe (Lightning) checkpoint
    python tools/export.py crossformer_tiny --static-size --img-size 256 --fp16 -o cf.onnx
    python tools/export.py runs/demo/checkpoints/best.ckpt --int8 static --calibration fashion_mnist -o m.int8.onnx
    python tools/export.py nat_nano --int8 dynamic --optimized nat_nano.ort.onnx -o nat_nano.int8.onnx

The file is always checked (onnx.checker, onnxruntime vs PyTorch at two batch sizes and, with dynamic H/W,
sizes far from the export size) unless ``--no-verify``; a mismatch exits with status 1 and says what differed.
``--int8`` verifies the fp32 file first, quantizes it with onnxruntime.quantization and verifies the int8 file
(relative L2 error of the outputs <= ``--int8-tol``). The file's ``zoo.*`` metadata (model, sizes, preprocessing,
class names of a recipe checkpoint, versions; ``zoo.export.read_metadata``) are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import zoo
from zoo.export import EXPORTERS, HEADS, INT8_MODES, OPTIMIZATION_LEVELS, ExportError, export_onnx


def load_recipe_checkpoint(path: Path):
    """``recipes.checkpoint.load_model(path)`` -> (model in eval mode, info dict)."""
    try:
        from recipes.checkpoint import load_model
    except ModuleNotFoundError as e:
        raise ValueError(
            f"{path.name} is a Lightning (recipe) checkpoint, but recipes/checkpoint.py is not available "
            f"({e}); export the zoo state dict instead: tools/export.py <model> --checkpoint <file.pth>"
        ) from e
    return load_model(str(path), map_location="cpu")


def recipe_metadata(path: Path, info: dict) -> dict:
    """What a recipe checkpoint knows beyond the network, for the file's metadata (task, class names, the data's
    preprocessing): :func:`recipes.checkpoint.recipe_preprocessing`."""
    from recipes.checkpoint import recipe_preprocessing

    return recipe_preprocessing(path, info)


def _size(values: list[int] | None):
    if not values:
        return None
    if len(values) > 2:
        raise ValueError(f"--img-size takes one or two ints (H [W]), got {values}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="model name (zoo.list_models(), any timm name) or a recipe .ckpt file")
    ap.add_argument("-o", "--output", help="the .onnx file (default: <model>.onnx)")
    ap.add_argument("--checkpoint", help="zoo state dict (.pth/.pt/.bin/.safetensors) to load strictly")
    ap.add_argument("--pretrained", action="store_true", help="load the model's default pretrained weights")
    ap.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's / model's)")
    ap.add_argument("--img-size", type=int, nargs="+", help="export size H [W] (default: the model's cfg)")
    ap.add_argument("--batch-size", type=int, default=1, help="batch of the export example (default 1)")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--static-batch", action="store_true", help="fixed batch axis (default: dynamic)")
    ap.add_argument("--static-size", action="store_true", help="fixed H/W (default: dynamic)")
    ap.add_argument("--fp16", action="store_true", help="export in float16")
    ap.add_argument("--int8", choices=INT8_MODES,
                    help="quantize with onnxruntime.quantization (static needs --calibration)")
    ap.add_argument("--calibration",
                    help="images for static int8 (and int8 verification): 'fashion_mnist', an .npz or an image folder")
    ap.add_argument("--calibration-count", type=int, default=64, help="calibration images (default 64)")
    ap.add_argument("--int8-tol", type=float, default=0.1,
                    help="int8 pass criterion: relative L2 error of the outputs (default 0.1)")
    ap.add_argument("--optimized", metavar="PATH",
                    help="also save onnxruntime's optimised graph here (runs in onnxruntime only)")
    ap.add_argument("--optimization-level", choices=OPTIMIZATION_LEVELS, default="extended")
    ap.add_argument("--head", choices=HEADS, default="logits")
    ap.add_argument("--exporter", choices=EXPORTERS, default="auto")
    ap.add_argument("--backend", choices=("sdpa", "reference"), help="zoo.ops path while exporting")
    ap.add_argument("--no-verify", action="store_true", help="skip onnx.checker and the onnxruntime comparison")
    ap.add_argument("--atol", type=float)
    ap.add_argument("--rtol", type=float)
    ap.add_argument("--threads", type=int, default=0, help="torch/onnxruntime CPU threads (default: torch's)")
    ap.add_argument("--json", help="also write the report as JSON here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        src = Path(args.source)
        img_size = _size(args.img_size)
        kw = {}
        if src.suffix in (".ckpt", ".pth", ".pt", ".bin", ".safetensors") or src.is_file():
            if not src.is_file():
                raise ValueError(f"checkpoint {args.source!r} does not exist")
            if src.suffix != ".ckpt":
                raise ValueError(
                    f"{src.name} is a zoo state dict: name the architecture, e.g. "
                    f"tools/export.py <model> --checkpoint {args.source}"
                )
            if args.checkpoint:
                raise ValueError("--checkpoint is for a model name; a .ckpt file carries its own weights")
            model, info = load_recipe_checkpoint(src)
            name = str(info.get("model_name") or src.stem)
            if img_size is None and info.get("img_size"):
                img_size = info["img_size"]
            model_or_name = model
            kw = dict(metadata={"model": name, **recipe_metadata(src, info)})
            print(f"recipe checkpoint {src.name}: task {info.get('task')}, model {name}, "
                  f"classes {info.get('num_classes')}, img_size {info.get('img_size')}")
        else:
            name = args.source
            model_or_name = args.source
            kw = dict(checkpoint=args.checkpoint, num_classes=args.num_classes, pretrained=args.pretrained)
        output = args.output or f"{name.replace('/', '_')}.onnx"
        report = export_onnx(
            model_or_name, output, img_size=img_size, batch_size=args.batch_size, opset=args.opset,
            dynamic_batch=not args.static_batch, dynamic_size=not args.static_size, fp16=args.fp16,
            head=args.head, exporter=args.exporter, backend=args.backend, verify=not args.no_verify,
            atol=args.atol, rtol=args.rtol, int8=args.int8, calibration=args.calibration,
            calibration_count=args.calibration_count, int8_tol=args.int8_tol, optimized_path=args.optimized,
            optimization_level=args.optimization_level, **kw,
        )
    except (ValueError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    assert zoo.__version__  # registers the zoo models with timm
    sys.exit(main())
