"""Verification of exported files against PyTorch in onnxruntime: the sizes to check (:func:`default_check_sizes`),
elementwise comparison for fp32/fp16 files (:func:`verify_onnx`) and relative L2 error for int8 files
(:func:`verify_int8`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._extras import require_extra
from .model import _flatten
from .report import Check, _short
from .runtime import OnnxRunner


def default_check_sizes(h: int, w: int, min_size: int = 32, multiple: int = 1) -> list[tuple[int, int]]:
    """The sizes an export with dynamic H/W is verified at: the export size, about half of it, twice it and an
    odd, non-square size in between (about ``0.75·h × 1.25·w``, both odd).

    A block that picks its structure from the map size (windows that shrink to small maps, groups that
    change) makes a different choice far from the export size, so the checks must reach there: sizes near
    the export size alone cannot see a graph that baked the example's choice. Sizes stay >= ``min_size``.
    ``multiple > 1``: the model only takes sizes divisible by it (e.g. smp segmentation models, whose input
    must be a multiple of the encoder's output stride): every size is rounded to a multiple instead (the
    odd one becomes ``(h + m, w + 2m)``)."""
    lo = max(min_size, 1)
    if multiple > 1:
        def mult(v: int) -> int:
            return max(multiple, -(-max(v, lo) // multiple) * multiple)

        sizes = [(h, w), (mult(h // 2), mult(w // 2)), (2 * h, 2 * w), (h + multiple, w + 2 * multiple)]
    else:
        def odd(v: int) -> int:
            v = max(v, lo)
            return v if v % 2 else v + 1

        half = (max(h // 2, lo), max(w // 2, lo))
        sizes = [(h, w), half, (2 * h, 2 * w), (odd(round(0.75 * h)), odd(round(1.25 * w)))]
    return list(dict.fromkeys(sizes))  # unique, in order


def verify_onnx(
    path: str | os.PathLike,
    module: nn.Module,
    shapes: Sequence[tuple[int, ...]],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    fp16: bool = False,
    seed: int = 0,
) -> list[Check]:
    """Run ``path`` in onnxruntime (CPU) on random inputs of each shape and compare with ``module`` (fp32).

    Pass criterion per element: ``|a - b| <= atol + rtol·|b|`` (as ``torch.allclose``). ``max_rel`` is
    ``max |a - b| / (|b| + atol)``. onnxruntime failures are recorded in :attr:`Check.error`.
    """
    require_extra("export", "zoo.export.verify_onnx", ("onnx", "onnxruntime"))
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 4  # failures are caught and reported per check
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            refs = [r.float().numpy() for r in _flatten(module(x))]
        try:
            outs = sess.run(None, {in_name: x.numpy().astype(np.float16 if fp16 else np.float32)})
        except Exception as e:  # a graph baked to the export size fails here (reshape/broadcast)
            checks.append(Check(tuple(shape), float("inf"), float("inf"), False, [], _short(e, 240)))
            continue
        if len(outs) != len(refs):
            checks.append(Check(tuple(shape), float("inf"), float("inf"), False, [],
                                f"{len(outs)} outputs, PyTorch gives {len(refs)}"))
            continue
        max_abs = max_rel = 0.0
        ok, err = True, ""
        for o, r in zip(outs, refs):
            o = o.astype(np.float32)
            if o.shape != r.shape:
                ok, err = False, f"output shape {o.shape} != PyTorch {r.shape}"
                max_abs = max_rel = float("inf")
                break
            d = np.abs(o - r)
            max_abs = max(max_abs, float(d.max(initial=0.0)))
            max_rel = max(max_rel, float((d / (np.abs(r) + atol)).max(initial=0.0)))
            ok = ok and bool(np.all(d <= atol + rtol * np.abs(r)))
        checks.append(Check(tuple(shape), max_abs, max_rel, ok, [tuple(o.shape) for o in outs], err))
    return checks


def verify_int8(
    path: str | os.PathLike,
    module: nn.Module,
    sizes: Sequence[tuple[int, int]],
    in_chans: int,
    *,
    images: Any = None,
    batch: int = 8,
    tol: float = 0.1,
    seed: int = 0,
) -> list[Check]:
    """Run an int8 file in onnxruntime next to ``module`` (fp32 PyTorch) at each (H, W) of ``sizes``.

    Inputs: ``images`` (float32 ``[N, C, H, W]``, preprocessed, resized bilinearly to each size) or, without
    them, ``batch`` random normal images. Pass criterion per check: the relative L2 error
    ``||a - b|| / ||b||`` of every output is at most ``tol`` (int8 rounding is spread over all values, so an
    elementwise tolerance would have to be loose everywhere); for ``[B, classes]`` outputs the share of rows
    whose top-1 class agrees is reported too."""
    import numpy as np

    run = OnnxRunner(path)
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for h, w in sizes:
        if images is not None:
            x = torch.from_numpy(_resize(images[:batch], (h, w)))
        else:
            x = torch.randn(batch, in_chans, h, w, generator=gen)
        with torch.no_grad():
            refs = [r.float().numpy() for r in _flatten(module(x))]
        try:
            outs = run.session.run(None, {run.input_name: x.numpy()})
        except Exception as e:
            checks.append(Check(tuple(x.shape), float("inf"), float("inf"), False, [], _short(e, 240)))
            continue
        rel = max_abs = max_rel = 0.0
        agree = None
        for o, r in zip(outs, refs):
            o = o.astype(np.float32)
            if o.shape != r.shape:
                checks.append(Check(tuple(x.shape), float("inf"), float("inf"), False, [],
                                    f"output shape {o.shape} != PyTorch {r.shape}"))
                break
            d = np.abs(o - r)
            max_abs = max(max_abs, float(d.max(initial=0.0)))
            max_rel = max(max_rel, float((d / (np.abs(r) + 1e-4)).max(initial=0.0)))
            rel = max(rel, float(np.linalg.norm(o - r) / max(float(np.linalg.norm(r)), 1e-12)))
            if r.ndim == 2 and r.shape[1] > 1 and agree is None:
                agree = float((o.argmax(1) == r.argmax(1)).mean())
        else:
            checks.append(Check(tuple(x.shape), max_abs, max_rel, rel <= tol, [tuple(o.shape) for o in outs], "",
                                rel_l2=rel, top1_agree=agree))
    return checks


def _resize(images: Any, hw: tuple[int, int]) -> Any:
    """float32 ``[N, C, H, W]`` resized bilinearly to ``hw`` (as the int8 checks feed other sizes)."""
    import numpy as np
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if len(x) and tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)
    return x.numpy()
