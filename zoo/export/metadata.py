"""The ``zoo.*`` metadata an exported file carries (model, valid sizes, preprocessing, class names, versions) and
the guard that checks an input against it (:func:`check_input_size`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import require_extra
from .report import ExportReport, _short

METADATA_PREFIX = "zoo."
# values stored as plain strings; every other zoo.* value is JSON
_STRING_KEYS = {"model", "task", "head", "exporter", "precision", "version", "torch_version", "onnxruntime_version",
                "interpolation", "crop_mode", "input", "size_note", "tolerance", "ort_optimization"}


def write_metadata(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Record ``meta`` in the file's ``metadata_props`` as ``zoo.<key>``: strings as they are, anything else as
    JSON (the convention of ``recipes.predictions.write_onnx_metadata``, which tools/predict.py reads). Keys
    already there are replaced, other entries kept; the graph and the weights are not touched."""
    require_extra("export", "zoo.export.write_metadata", ("onnx", "onnxruntime"))
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    props = {METADATA_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in [*kept, *props.items()]:
        model.metadata_props.add(key=k, value=v)
    tmp = path.with_name(f".{path.name}.meta-tmp")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``zoo.*`` metadata of an exported file as a dict (prefix dropped, JSON values decoded): ``model``,
    ``input_size`` [C, H, W], ``img_size``, ``dynamic_batch``, ``dynamic_hw``, ``min_size`` [H, W],
    ``verified_sizes`` [[H, W], ...], ``size_note``, ``mean``, ``std``, ``interpolation``, ``crop_pct``,
    ``crop_mode``, ``class_names`` / ``num_classes`` where known, ``precision``, ``exporter``, ``opset``, ``version``
    (zoo), ``torch_version``, ``onnxruntime_version``, ``tolerance`` and, for int8 files, ``quantization``.
    Entries other tools wrote without the prefix are returned under their full key, as strings."""
    require_extra("export", "zoo.export.read_metadata", ("onnx", "onnxruntime"))
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no ONNX file at {str(path)!r}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"cannot read {str(path)!r} as an ONNX file: {_short(e)}") from e
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if not p.key.startswith(METADATA_PREFIX):
            out[p.key] = p.value
            continue
        key = p.key[len(METADATA_PREFIX):]
        if key in _STRING_KEYS:
            out[key] = p.value
            continue
        try:
            out[key] = json.loads(p.value)
        except ValueError:
            out[key] = p.value
    return out


def check_input_size(meta: dict[str, Any], shape: Sequence[int]) -> None:
    """Raise ValueError when an input of ``shape`` ``[B, C, H, W]`` is outside what the file (its metadata,
    :func:`read_metadata`) accepts: another channel count, a size below ``min_size``, another size than a
    static export's, or a size that is not a multiple of ``size_multiple``. The graph itself would run at a
    size below the minimum and answer something; this is the guard that says no."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 4:
        raise ValueError(f"the model takes images as [batch, channels, height, width]; got an input of shape {shape}")
    _, c, h, w = shape
    c0, h0, w0 = (meta.get("input_size") or (None, None, None))[-3:]
    if c0 is not None and c != c0:
        raise ValueError(f"input {'x'.join(map(str, shape))} has {c} channels; the model takes {c0}")
    if meta.get("dynamic_hw") is False and h0 is not None and (h, w) != (h0, w0):
        raise ValueError(f"input {h}x{w}: this file was exported with a static size {h0}x{w0} and takes only that; "
                         f"resize the images to {h0}x{w0}, or export with dynamic H/W (tools/export.py without "
                         "--static-size)")
    mh, mw = (meta.get("min_size") or (0, 0))[-2:]
    if h < mh or w < mw:
        raise ValueError(f"input {h}x{w} is smaller than the model's minimum size {mh}x{mw} (zoo.min_size in the "
                         f"file's metadata); resize or pad the images to at least {mh}x{mw}")
    m = int(meta.get("size_multiple") or 1)
    if m > 1 and (h % m or w % m):
        raise ValueError(f"input {h}x{w}: this model takes sizes that are multiples of {m} (zoo.size_multiple); "
                         f"pad the images to {-(-h // m) * m}x{-(-w // m) * m}")


def _preprocessing(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """mean, std, interpolation, crop_pct, crop_mode: ``overrides`` (e.g. a recipe's data settings) first,
    else the model's pretrained_cfg; only what is known."""
    out = {}
    for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
        v = overrides.get(k, cfg.get(k))
        if v is not None:
            out[k] = list(v) if isinstance(v, (tuple, list)) else v
    return out


def _file_metadata(report: ExportReport, model: nn.Module, cfg: dict[str, Any], prep: dict[str, Any],
                   overrides: dict[str, Any], min_size: int, sizes: list[tuple[int, int]], multiple: int,
                   calibration: Any, head: str) -> dict[str, Any]:
    """The ``zoo.*`` entries of an exported file (see :func:`read_metadata`)."""
    import onnxruntime as ort

    from .. import __version__

    c0, h0, w0 = report.input_size
    min_hw = list((cfg.get("min_input_size") or (c0, min_size, min_size))[-2:])
    if not report.dynamic_size:
        min_hw = [h0, w0]
    verified = [list(s) for s in sizes] if report.verified else []
    if not report.dynamic_size:
        note = f"static H/W: takes {h0}x{w0} only"
    elif verified:
        note = (f"dynamic H/W: the graph takes any size >= {min_hw[0]}x{min_hw[1]}; checked against PyTorch at "
                f"{', '.join(f'{h}x{w}' for h, w in verified)}; no upper bound was checked")
    else:
        note = f"dynamic H/W, not verified: sizes >= {min_hw[0]}x{min_hw[1]} are accepted"
    meta: dict[str, Any] = {"model": report.model, "head": head}
    if head == "logits" and getattr(model, "num_classes", 0) and hasattr(model, "pretrained_cfg"):
        meta["task"] = "classification"
        meta["num_classes"] = int(model.num_classes)
    meta.update({
        "input_size": [c0, h0, w0], "img_size": h0 if h0 == w0 else [h0, w0],
        "dynamic_batch": report.dynamic_batch, "dynamic_hw": report.dynamic_size,
        "min_size": min_hw, "verified_sizes": verified, "size_note": note,
    })
    if multiple > 1:
        meta["size_multiple"] = multiple
    meta.update(prep)
    if prep.get("mean") is not None:
        meta["input"] = "normalized"
    meta.update({
        "precision": report.precision, "exporter": report.exporter, "opset": report.opset, "version": __version__,
        "torch_version": torch.__version__, "onnxruntime_version": ort.__version__,
    })
    if report.verified:
        meta["tolerance"] = (f"rel L2 <= {report.int8_tol:g} (int8)" if report.int8_tol is not None
                             else f"|a-b| <= {report.atol:g} + {report.rtol:g}*|b|")
    info = report.quantization
    if info:
        meta["quantization"] = {**info, **({"calibration": str(calibration)} if calibration is not None else {})}
    meta.update({k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items() if v is not None})
    if isinstance(meta.get("class_names"), list):
        meta.setdefault("num_classes", len(meta["class_names"]))
    return meta
