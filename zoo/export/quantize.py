"""int8 files: calibration images preprocessed as the model expects (:func:`load_images`), onnxruntime's
quantizers (:func:`quantize_int8`) and the step of :func:`zoo.export.export_onnx` that turns its verified fp32 file
into a verified int8 file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .._extras import require_extra
from ..resources import embedded_data_hint
from .report import ExportError, ExportReport, _file_size, _short
from .verify import _resize, verify_int8

FASHION_MNIST_NPZ = Path(__file__).resolve().parents[2] / "data" / "fashion_mnist" / "fashion_mnist_subset.npz"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
INT8_MODES = ("dynamic", "static")


def load_images(
    source: str | os.PathLike,
    count: int,
    input_size: Sequence[int],
    *,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    crop_mode: str = "center",
    offset: int = 0,
    seed: int = 0,
) -> Any:
    """``count`` images of ``source`` preprocessed the way the model expects (timm's eval transform: resize,
    crop, normalise) → float32 ``[count, C, H, W]``.

    ``source``: ``"fashion_mnist"`` (the embedded subset, data/fashion_mnist), an ``.npz`` (array ``x_train``,
    else ``x_test`` / ``x``: uint8 ``[N, H, W]`` or ``[N, H, W, C]``) or a folder searched recursively for image
    files. The images are a seeded random choice; ``offset`` skips the first ``offset`` of that order (the
    verification images after the calibration images are then different images)."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform

    c, h, w = (tuple(input_size) if len(input_size) == 3 else (3, *input_size))
    src = FASHION_MNIST_NPZ if str(source) == "fashion_mnist" else Path(source)
    need = offset + count
    if src.suffix == ".npz":
        if not src.is_file():
            raise ValueError(f"calibration data {str(src)!r} does not exist"
                             + (f" ({embedded_data_hint(src)})" if src == FASHION_MNIST_NPZ else ""))
        with np.load(src) as z:
            key = next((k for k in ("x_train", "x_test", "x") if k in z.files), None)
            if key is None:
                raise ValueError(f"{src.name} has no image array x_train / x_test / x (arrays: {z.files})")
            arr = z[key]
        order = np.random.default_rng(seed).permutation(len(arr))
        items: list[Any] = [arr[i] for i in order[offset:need]]
        n_found = len(arr)
    elif src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        order = np.random.default_rng(seed).permutation(len(files))
        items = [files[i] for i in order[offset:need]]
        n_found = len(files)
    else:
        raise ValueError(f"calibration data {str(source)!r}: expected 'fashion_mnist', an .npz file or a folder of "
                         f"images ({', '.join(_IMAGE_SUFFIXES)})")
    if n_found < need:
        raise ValueError(f"{str(source)!r} holds {n_found} images; {need} are needed ({offset} + {count}); give more "
                         "images or a smaller calibration count")
    tf = create_transform(input_size=(c, h, w), is_training=False, interpolation=interpolation, mean=tuple(mean),
                          std=tuple(std), crop_pct=crop_pct, crop_mode=crop_mode)
    out = []
    for item in items:
        try:
            img = Image.fromarray(item) if isinstance(item, np.ndarray) else Image.open(item)
            img = img.convert("RGB" if c == 3 else "L")
        except Exception as e:
            raise ValueError(f"cannot read image {item if isinstance(item, Path) else 'in ' + str(src)}: "
                             f"{_short(e)}") from e
        out.append(tf(img).numpy())
    return np.stack(out).astype(np.float32)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, mode: str, calibration: Any = None,
                  batch: int = 8) -> dict[str, Any]:
    """Quantize the fp32 file ``src`` to int8 at ``dst`` with onnxruntime's tools; returns what was done.

    Both modes first run ``quant_pre_process`` (ONNX shape inference and onnxruntime's graph optimisation; its
    symbolic shape inference is skipped: it does not complete on graphs with dynamic H/W).

    - ``"dynamic"``: ``quantize_dynamic``: the weights of MatMul/Gemm (the attention and MLP projections, most of
      the parameters) become int8; activations are quantized at run time from their observed range (uint8).
      Convolutions stay fp32. No calibration data needed.
    - ``"static"``: ``quantize_static`` in QDQ format: Conv, MatMul (with a constant weight only:
      ``MatMulConstBOnly``, so the attention products q·kᵀ and p·v stay float) and Gemm; weights int8 per
      channel, activations uint8 with ranges from MinMax calibration over ``calibration`` (float32
      ``[N, C, H, W]``, preprocessed as the model expects, e.g. :func:`load_images`, or a list of such arrays
      of different sizes), in batches of ``batch``.
    """
    require_extra("export", "zoo.export.quantize_int8", ("onnx", "onnxruntime"))
    import logging

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {INT8_MODES}, got {mode!r}")
    if isinstance(calibration, (list, tuple)):
        calibration = [a for a in calibration if len(a)]
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise ValueError("static int8 needs calibration images: an image folder, an .npz or 'fashion_mnist' "
                         "(tools/export.py --calibration); or use --int8 dynamic, which needs none")
    info: dict[str, Any] = {"mode": mode, "tool": f"onnxruntime.quantization {ort.__version__}"}
    src, dst = Path(src), Path(dst)
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs every node it skips at WARNING
    try:
        with tempfile.TemporaryDirectory(prefix=".zoo-int8-", dir=dst.parent) as tmp:
            pre = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                info["pre_process"] = "quant_pre_process (ONNX shape inference + onnxruntime optimisation)"
            except Exception as e:  # quantize the exported graph as it is
                pre = src
                info["pre_process"] = f"skipped (quant_pre_process failed: {_short(e, 200)})"
            if mode == "dynamic":
                quantize_dynamic(str(pre), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=False,
                                 weight_type=QuantType.QInt8)
                info.update(op_types=["MatMul", "Gemm"], weights="int8 per tensor",
                            activations="uint8, range measured at run time")
            else:
                info.update(_quantize_static(src, pre, dst, calibration, batch))
    finally:
        logging.disable(prev)
    return info


def _quantize_in_place(report: ExportReport, ref: nn.Module, sizes: list[tuple[int, int]], c0: int, mode: str,
                       images: Any, calibration_count: int, tol: float, seed: int) -> None:
    """The verified fp32 file at ``report.path`` becomes the int8 file (:func:`quantize_int8`), verified with
    :func:`verify_int8`; ExportError (and no file) when it differs from PyTorch beyond ``tol``."""
    path = Path(report.path)
    if report.external_data:
        raise ExportError(f"{report.model}: int8 quantization of a file with external data (weights over 2 GB) is "
                          "not supported here; quantize it with onnxruntime.quantization directly")
    tmp = path.with_name(f".{path.stem}.int8-tmp.onnx")
    calib = None
    if images is not None:  # spread over the sizes the file claims: activation ranges differ with the size
        calib = [_resize(images[:calibration_count][k::len(sizes)], hw) for k, hw in enumerate(sizes)]
    try:
        info = quantize_int8(path, tmp, mode, calibration=calib)
        report.fp32_checks, report.fp32_file_size = report.checks, report.file_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    report.file_size = _file_size(path)
    report.int8_tol = tol
    report.quantization = info
    if not report.verified:
        return
    verify_images = images[calibration_count:] if images is not None else None
    report.checks = verify_int8(path, ref, sizes, c0, images=verify_images, tol=tol, seed=seed + 2)
    info["verified_on"] = "images after the calibration ones" if verify_images is not None else "random images"
    if not all(c.ok for c in report.checks):
        bad = "; ".join(f"input {'x'.join(map(str, c.shape))}: " + (c.error or f"rel L2 {c.rel_l2:.3f}")
                        for c in report.checks if not c.ok)
        path.unlink(missing_ok=True)
        raise ExportError(f"the {mode} int8 file of {report.model} differs from PyTorch beyond rel L2 {tol:g}: {bad}. "
                          "Try the other int8 mode, more or more typical calibration images, or fp16")


def _quantize_static(src: Path, pre: Path, dst: Path, calibration: Any, batch: int) -> dict[str, Any]:
    """``quantize_static`` of ``pre`` (the pre-processed ``src``) to ``dst`` in QDQ format with MinMax calibration
    over ``calibration`` (one array or a list of arrays of different sizes) in batches of ``batch``; returns what
    it did, for :func:`quantize_int8`'s record."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    in_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    arrays = calibration if isinstance(calibration, (list, tuple)) else [calibration]
    batches = [a[i:i + batch] for a in arrays for i in range(0, len(a), batch)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict | None:
            b = next(self._it, None)
            return None if b is None else {in_name: b}

    quantize_static(str(pre), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
    return dict(op_types=["Conv", "MatMul (constant weight)", "Gemm"], format="QDQ", weights="int8 per channel",
                activations="uint8, MinMax calibration", calibration_images=int(sum(len(a) for a in arrays)),
                calibration_sizes=[list(a.shape[-2:]) for a in arrays])
