"""Main job (for now): build every registered zoo model, count its parameters and run it once.

Prints a table: model, parameters, output shape and CPU forward time at 224 (batch 1) for the small
models; large models are built on the meta device (parameter count only).
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

import zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="*", help="glob pattern of model names (default: all)")
    ap.add_argument("--max-run-params", type=float, default=40e6, help="run a forward only below this size")
    ap.add_argument("--img-size", type=int, default=224)
    args = ap.parse_args()

    print(zoo.ops.explain())
    names = zoo.list_models(args.model)
    if not names:
        print(f"no registered zoo model matches {args.model!r}; registered: {zoo.list_models()}")
        return
    print(f"\n{'model':<28} {'params (M)':>11} {'output':>14} {'fwd ms':>8}")
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.img_size, args.img_size)
    for name in names:
        with torch.device("meta"):
            meta = timm.create_model(name)
        n = sum(p.numel() for p in meta.parameters())
        shape, ms = "-", "-"
        if n <= args.max_run_params:
            model = timm.create_model(name).eval()
            with torch.inference_mode():
                model(x)
                t0 = time.perf_counter()
                out = model(x)
                ms = f"{(time.perf_counter() - t0) * 1e3:.0f}"
            shape = "x".join(map(str, out.shape))
        print(f"{name:<28} {n / 1e6:>11.2f} {shape:>14} {ms:>8}", flush=True)


if __name__ == "__main__":
    main()
