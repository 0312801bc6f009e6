"""Convert an official checkpoint file to a safetensors file in the zoo layout.

    python tools/convert.py official.pth --model crossformer_tiny --out crossformer_tiny.safetensors
    python tools/convert.py nat_mini.pth --model nat_mini --img-size 384 --out nat_mini_384.safetensors

The family's converter maps the keys (strict: every unmatched key is named) and resizes resolution-dependent
tensors for ``--img-size``; the result is loaded strictly into the model, written to a temporary file next to
the output, read back and compared bit for bit (NaN included), and only then renamed to the output (a failed
check leaves no file). The output's metadata names the model and its architecture facts (e.g. DiNAT
dilations), which the zoo's loaders check; a source file written for another model, or an official release
file of another model (by its manifest name), is refused. Load it with ``timm.create_model(name, pretrained=True,
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
    from zoo.models._pretrained import (
        check_official_file_name,
        check_weights_metadata,
        file_metadata,
        read_checkpoint,
        sha256_file,
        weights_metadata,
    )

    zoo.check_model_name(model_name)
    family = sys.modules[model_entrypoint(model_name.split(".")[0]).__module__]
    converter = family.checkpoint_filter_fn
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {str(out)!r} must end in .safetensors")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {str(out.parent)!r} does not exist; create it first")
    check_official_file_name(src, model_name)  # an official file of another model (weights/manifest.json)
    checkpoint = read_checkpoint(src, allow_pickle=allow_pickle)
    kwargs = {}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(model_name, **kwargs)
    # a zoo file written for another model (its metadata says which) is refused, not converted
    check_weights_metadata(file_metadata(src, checkpoint), model_name, model, source=str(src))
    state_dict = converter(checkpoint, model)
    model.load_state_dict(state_dict, strict=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    non_finite = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    metadata = weights_metadata(model, model_name, source=Path(src).name)
    # write next to the output, verify, then rename: no half-written or unverified file under the output name
    tmp = out.with_name(f".{out.name}.partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        back = load_file(str(tmp))
        for key, value in tensors.items():
            if key not in back or not _same_bits(back[key], value):
                raise RuntimeError(f"{out}: tensor {key} differs after writing; nothing was written")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "model": model_name,
        "source": str(src),
        "out": str(out),
        "tensors": len(tensors),
        "params": sum(p.numel() for p in model.parameters()),
        "sha256": sha256_file(out),
        "non_finite": ", ".join(non_finite) or "none",
    }


def _same_bits(a, b) -> bool:
    """Equal dtype, shape and bytes: NaN equals NaN (``torch.equal`` says NaN != NaN), -0.0 differs from 0.0."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        print(f"{key:10s} {value}")
    if report["non_finite"] != "none":
        print(f"convert: warning: the checkpoint holds NaN/Inf in {report['non_finite']} (copied as they are)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
