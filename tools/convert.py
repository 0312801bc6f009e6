"""Convert an official checkpoint file to a safetensors file in the zoo layout.

    python tools/convert.py official.pth --model crossformer_tiny --out crossformer_tiny.safetensors
    python tools/convert.py nat_mini.pth --model nat_mini --img-size 384 --out nat_mini_384.safetensors

The family's converter maps the keys (strict: every unmatched key is named) and resizes resolution-dependent
tensors for ``--img-size``; the result is loaded strictly into the model before it is written, then read
back and compared. Load it with ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file="out.safetensors"))`` — zoo-layout files pass through the converter
unchanged — or ``model.load_state_dict(safetensors.torch.load_file(...))``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def convert(
    src: str | Path,
    model_name: str,
    out: str | Path,
    img_size: int | None = None,
    num_classes: int | None = None,
    allow_pickle: bool = False,
) -> dict:
    """Convert ``src`` for ``model_name`` and write ``out`` (safetensors). Returns a small report dict."""
    import timm
    import torch
    from safetensors.torch import load_file, save_file
    from timm.models import model_entrypoint

    import zoo
    from zoo.models._pretrained import read_checkpoint, sha256_file

    zoo.check_model_name(model_name)
    family = sys.modules[model_entrypoint(model_name.split(".")[0]).__module__]
    converter = family.checkpoint_filter_fn
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {str(out)!r} must end in .safetensors")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {str(out.parent)!r} does not exist; create it first")
    checkpoint = read_checkpoint(src, allow_pickle=allow_pickle)
    kwargs = {}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(model_name, **kwargs)
    state_dict = converter(checkpoint, model)
    model.load_state_dict(state_dict, strict=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(out), metadata={"model": model_name, "source": Path(src).name, "format": "zoo"})
    back = load_file(str(out))
    for key, value in tensors.items():
        if not torch.equal(back[key], value):
            raise RuntimeError(f"{out}: tensor {key} differs after writing; the file is not usable")
    return {
        "model": model_name,
        "source": str(src),
        "out": str(out),
        "tensors": len(tensors),
        "params": sum(p.numel() for p in model.parameters()),
        "sha256": sha256_file(out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="official checkpoint file (.pth/.pt/.safetensors)")
    parser.add_argument("--model", required=True, help="registered model name, e.g. crossformer_tiny")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--img-size", type=int, default=None, help="resize resolution-dependent tensors for this size")
    parser.add_argument("--num-classes", type=int, default=None, help="class count of the checkpoint's head")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="the file needs pickled Python objects (e.g. saved argparse args); only for files you trust",
    )
    args = parser.parse_args(argv)
    try:
        report = convert(args.checkpoint, args.model, args.out, args.img_size, args.num_classes, args.allow_pickle)
    except Exception as err:  # one clear line for the user, not a traceback
        print(f"convert: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for key, value in report.items():
        print(f"{key:8s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
