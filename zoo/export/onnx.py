"""export_onnx: the model prepared for export (head, example input, dynamic axes, the sizes to check), each
exporter tried in turn until one writes a file that verifies, then int8, metadata and the optimised graph.
What it does step by step is in the :mod:`zoo.export` docstring."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import ops
from .._extras import require_extra
from .metadata import _file_metadata, _preprocessing, read_metadata, write_metadata
from .model import (
    HeadWrapper,
    _Flat,
    _flatten,
    build_model,
    load_checkpoint_strict,
    load_state_dict_file,
    replace_adaptive_pools,
    required_input_multiple,
)
from .quantize import INT8_MODES, _quantize_in_place, load_images
from .report import ExportError, ExportReport, _file_size, _short
from .runtime import OPTIMIZATION_LEVELS, save_optimized
from .verify import default_check_sizes, verify_int8, verify_onnx

HEADS = ("logits", "pre_logits", "features")
EXPORTERS = ("auto", "torchscript", "dynamo")
_PROTOBUF_LIMIT = 2**31 - 2**26  # stay ~64 MiB under the 2 GiB protobuf limit (graph + metadata)


def export_onnx(
    model_or_name: str | nn.Module, path: str | os.PathLike, *, img_size: int | tuple[int, int] | None = None,
    batch_size: int = 1, in_chans: int | None = None, opset: int = 18, dynamic_batch: bool = True,
    dynamic_size: bool = True, fp16: bool = False, head: str = "logits", exporter: str = "auto",
    checkpoint: str | os.PathLike | None = None, num_classes: int | None = None, pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None, backend: str | None = None, verify: bool = True,
    check_sizes: Sequence[tuple[int, int]] | None = None, atol: float | None = None, rtol: float | None = None,
    seed: int = 0, int8: str | None = None, calibration: str | os.PathLike | None = None,
    calibration_count: int = 64, int8_tol: float = 0.1, metadata: dict[str, Any] | None = None,
    optimized_path: str | os.PathLike | None = None, optimization_level: str = "extended", verbose: bool = False,
) -> ExportReport:
    """Export a model to ONNX and verify it in onnxruntime; returns an :class:`ExportReport`.

    Args:
        model_or_name: a timm/zoo model name (``"nat_mini"``, ``"maxvit_tiny.official_in1k"``) or an ``nn.Module``
            taking ``[B, C, H, W]`` (a classifier, an smp segmentation model, ...).
        path: the ``.onnx`` file to write (parent folders are created).
        img_size: export size (int or (H, W)); default the model's ``pretrained_cfg["input_size"]`` or 224.
        batch_size: batch of the export example (at least 2 when the batch is dynamic).
        in_chans: input channels; default from the model's cfg, else 3.
        opset: ONNX opset (default 18; the dynamo exporter needs >= 18).
        dynamic_batch, dynamic_size: make batch / H and W dynamic axes; both are verified at two values.
        fp16: a float16 file (weights, input, output): the fp32 graph converted by onnxruntime's float16 converter,
            checked against the fp32 PyTorch model at the same sizes (default tolerance 5e-2 instead of 1e-4).
        head: ``"logits"``, ``"pre_logits"`` or ``"features"`` (stage maps of ``features_only``, NCHW). For a
            module that is not a timm-style backbone only ``"logits"`` (its ``forward``) applies.
        exporter: ``"auto"`` (TorchScript, then dynamo if that fails to export or to verify), ``"torchscript"``
            or ``"dynamo"``.
        checkpoint: a zoo state dict file loaded strictly. num_classes, pretrained, model_kwargs: for
            ``timm.create_model``.
        backend: zoo.ops path while exporting, ``"sdpa"`` or ``"reference"``; default ``"sdpa"`` for TorchScript
            and ``"reference"`` for dynamo (torch.export mis-tracks the strides of SDPA outputs with biases).
        verify: run onnx.checker and onnxruntime (the only guard against graphs silently wrong at other sizes).
        check_sizes: (H, W) sizes to verify when ``dynamic_size``; default :func:`default_check_sizes` (export
            size, ~0.5x, 2x, odd non-square; multiples of :func:`required_input_multiple` where a model insists).
        atol, rtol: tolerance of the comparison (default 1e-4, fp16 5e-2).
        int8: ``"dynamic"`` or ``"static"``: the fp32 file is exported and verified, quantized with onnxruntime's
            tools (:func:`quantize_int8`) and verified again (:func:`verify_int8`: relative L2 error at most
            ``int8_tol`` at the same sizes, on real images with ``calibration``, else random); ``path`` is then
            the int8 file.
        calibration: images for static int8 (and real verification images for either mode): ``"fashion_mnist"``,
            an ``.npz`` or an image folder (:func:`load_images`), preprocessed with the model's mean/std/crop;
            ``calibration_count`` calibrate, the next 8 of the seeded order verify.
        metadata: entries that extend or override the file's ``zoo.*`` metadata (e.g. a recipe's ``class_names``,
            ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``task``; the preprocessing ones also for the
            calibration images).
        optimized_path: also write onnxruntime's optimised graph there (:func:`save_optimized` at
            ``optimization_level``), verified like the file itself. verbose: print the summary.

    The file carries ``zoo.*`` metadata (:func:`read_metadata`): model, export size, valid sizes (``min_size`` from
    ``pretrained_cfg["min_input_size"]``, else 32; ``verified_sizes``; ``dynamic_hw``; no upper bound is claimed),
    preprocessing, class names where known, precision, exporter, opset and versions; :class:`OnnxRunner` enforces
    the size range.

    Raises:
        ValueError: bad arguments (unknown model, checkpoint of another architecture, unwritable path, ...).
        ExportError: no exporter produced a file that matches PyTorch (the message lists each attempt).
    """
    require_extra("export", "zoo.export.export_onnx", ("onnx", "onnxruntime"))
    _check_arguments(head, exporter, backend, opset, int8, fp16, calibration, optimization_level)
    path, optimized_path = _output_paths(path, optimized_path)
    model, model_name = _resolve_model(model_or_name, checkpoint, num_classes, pretrained, model_kwargs, head)
    tol = 5e-2 if fp16 else 1e-4
    job = _Job(path, model, model_name, head, opset, dynamic_batch, dynamic_size, fp16, int8, backend, verify, seed,
               calibration, calibration_count, int8_tol, optimized_path, optimization_level, verbose,
               atol=tol if atol is None else atol, rtol=tol if rtol is None else rtol, overrides=dict(metadata or {}))
    was_training = model.training
    model.eval()
    try:
        _prepare(job, img_size, in_chans, batch_size, check_sizes)
        attempts: list[tuple[str, str]] = []
        for name in _exporter_order(exporter, opset):
            report = _export_once(job, name, attempts)
            if report is not None:
                return _finish(job, report)
        _give_up(job, attempts)
    finally:
        model.train(was_training)


@dataclass
class _Job:
    """One :func:`export_onnx` call: its settings, then what :func:`_prepare` derives from the model."""

    path: Path
    model: nn.Module
    model_name: str
    head: str
    opset: int
    dynamic_batch: bool
    dynamic_size: bool
    fp16: bool
    int8: str | None
    backend: str | None
    verify: bool
    seed: int
    calibration: Any
    calibration_count: int
    int8_tol: float
    optimized_path: Path | None
    optimization_level: str
    verbose: bool
    atol: float = 1e-4
    rtol: float = 1e-4
    overrides: dict[str, Any] = field(default_factory=dict)
    # set by _prepare
    cfg: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)  # (C, H, W) of the export example
    min_size: int = 32
    prep: dict[str, Any] = field(default_factory=dict)  # mean, std, interpolation, crop (for metadata, calibration)
    ref: nn.Module | None = None  # the chosen head, outputs flattened: what the file is compared with
    mod: nn.Module | None = None  # ``ref`` with adaptive pools made exportable (dynamic H/W)
    n_pools: int = 0
    in_names: list[str] = field(default_factory=list)
    out_names: list[str] = field(default_factory=list)
    dyn_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) verified
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # full input shapes verified
    x: torch.Tensor | None = None  # the example input traced
    big: bool = False  # weights over the protobuf limit: external data
    images: Any = None  # calibration (and int8 verification) images

    @property
    def precision(self) -> str:
        return f"int8-{self.int8}" if self.int8 else ("fp16" if self.fp16 else "fp32")


def _check_arguments(head: str, exporter: str, backend: str | None, opset: Any, int8: str | None, fp16: bool,
                     calibration: Any, optimization_level: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if backend not in (None, "sdpa", "reference"):
        raise ValueError(f"backend must be 'sdpa' or 'reference' for export (portable paths), got {backend!r}")
    if not isinstance(opset, int) or opset < 7:
        raise ValueError(f"opset must be an int >= 7 (onnxruntime's oldest), got {opset!r}; default 18")
    if exporter == "dynamo" and opset < 18:
        raise ValueError(f"the dynamo exporter writes opset >= 18, got opset={opset}; use exporter='torchscript'")
    if int8 is not None and int8 not in INT8_MODES:
        raise ValueError(f"int8 must be one of {INT8_MODES} (or None), got {int8!r}")
    if int8 and fp16:
        raise ValueError("give fp16 or int8, not both")
    if int8 == "static" and calibration is None:
        raise ValueError("int8='static' needs calibration images: calibration='fashion_mnist', an .npz or an image "
                         "folder; int8='dynamic' needs none")
    if optimization_level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization_level must be one of {OPTIMIZATION_LEVELS}, got {optimization_level!r}")


def _output_paths(path: str | os.PathLike, optimized_path: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """The output file and the optimised graph's file as Paths, both checked writable."""
    path = Path(path)
    _check_writable(path)
    if optimized_path is None:
        return path, None
    optimized_path = Path(optimized_path)
    if optimized_path.resolve() == path.resolve():
        raise ValueError("optimized_path must differ from path (the portable file is kept as well)")
    _check_writable(optimized_path)
    return path, optimized_path


def _resolve_model(model_or_name: str | nn.Module, checkpoint: str | os.PathLike | None, num_classes: int | None,
                   pretrained: bool, model_kwargs: dict[str, Any] | None, head: str) -> tuple[nn.Module, str]:
    """(model, name): built by name (:func:`build_model`) or the given module with ``checkpoint`` loaded strictly;
    a head other than logits needs a timm-style backbone."""
    if isinstance(model_or_name, str):
        model_name = model_or_name
        model = build_model(model_or_name, checkpoint=checkpoint, num_classes=num_classes, pretrained=pretrained,
                            model_kwargs=model_kwargs)
    elif isinstance(model_or_name, nn.Module):
        if checkpoint is not None:
            sd = load_state_dict_file(checkpoint)
            load_checkpoint_strict(model_or_name, sd, what=type(model_or_name).__name__)
        model = model_or_name
        model_name = getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    else:
        raise ValueError(f"model_or_name must be a model name or an nn.Module, got {type(model_or_name).__name__}")
    if head != "logits":
        need = "forward_head/forward_features" if head == "pre_logits" else "forward_intermediates"
        if not all(hasattr(model, a) for a in need.split("/")):
            raise ValueError(f"head={head!r} needs a timm-style backbone with {need}; {model_name} has none")
    return model, model_name


def _prepare(job: _Job, img_size: int | tuple[int, int] | None, in_chans: int | None, batch_size: int,
             check_sizes: Sequence[tuple[int, int]] | None) -> None:
    """Everything the exporters and the checks need: input size, head, names and dynamic axes, the sizes to
    verify, the example input and the calibration images."""
    cfg = getattr(job.model, "pretrained_cfg", None) or getattr(job.model, "default_cfg", None) or {}
    c0, h0, w0 = cfg.get("input_size", (3, 224, 224))
    if img_size is not None:
        h0, w0 = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    c0 = in_chans or c0
    job.cfg, job.input_size = cfg, (c0, h0, w0)
    job.min_size = (cfg.get("min_input_size") or (3, 32, 32))[-1]
    job.ref = _Flat(HeadWrapper(job.model, job.head)).eval()
    job.mod, job.n_pools = replace_adaptive_pools(job.ref) if job.dynamic_size else (job.ref, 0)
    _names_and_axes(job, batch_size)
    _check_shapes(job, batch_size, check_sizes)
    job.big = sum(p.numel() * p.element_size() for p in job.model.parameters()) >= _PROTOBUF_LIMIT
    # a batch of 1 in the example would be specialised by torch.export (0/1 specialisation): trace with >= 2
    example_batch = max(batch_size, 2) if job.dynamic_batch else batch_size
    job.x = torch.randn(example_batch, c0, h0, w0, generator=torch.Generator().manual_seed(job.seed),
                        dtype=torch.float32)
    job.prep = _preprocessing(cfg, job.overrides)
    if job.int8 and job.calibration is not None:
        job.images = load_images(job.calibration, job.calibration_count + 8, job.input_size, **{
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
            "crop_pct": 1.0, "crop_mode": "center", **job.prep}, seed=job.seed)


def _names_and_axes(job: _Job, batch_size: int) -> None:
    """Input/output names (``features.i`` for stage maps, ``output`` or ``output.i`` otherwise) and the dynamic
    axes: batch on every tensor, H/W on the input and on every 4-D output."""
    with torch.no_grad():
        outs = _flatten(job.ref(torch.zeros(batch_size, *job.input_size)))
    if job.head == "features":
        job.out_names = [f"features.{i}" for i in range(len(outs))]
    else:
        job.out_names = ["output"] if len(outs) == 1 else [f"output.{i}" for i in range(len(outs))]
    job.in_names = ["input"]
    job.dyn_axes = {}
    if not (job.dynamic_batch or job.dynamic_size):
        return
    batch = {0: "batch"} if job.dynamic_batch else {}
    job.dyn_axes["input"] = {**batch, **({2: "height", 3: "width"} if job.dynamic_size else {})}
    for n, o in zip(job.out_names, outs):
        job.dyn_axes[n] = dict(batch)
        if job.dynamic_size and o.dim() == 4:
            job.dyn_axes[n].update({2: f"{n}_height", 3: f"{n}_width"})


def _check_shapes(job: _Job, batch_size: int, check_sizes: Sequence[tuple[int, int]] | None) -> None:
    """The (H, W) sizes and full input shapes the file is verified at: two batch sizes at the first size when the
    batch is dynamic, then every other size (far from the export size when H/W are dynamic)."""
    c0, h0, w0 = job.input_size
    if check_sizes:
        sizes = list(check_sizes)
    elif job.dynamic_size:
        sizes = default_check_sizes(h0, w0, job.min_size, multiple=required_input_multiple(job.ref))
    else:
        sizes = [(h0, w0)]
    batches = [1, 2] if job.dynamic_batch else [batch_size]
    shapes = [(b, c0) + tuple(sizes[0]) for b in batches]
    shapes += [(batches[-1], c0) + tuple(s) for s in sizes[1:]]
    job.sizes, job.shapes = sizes, shapes


def _exporter_order(exporter: str, opset: int) -> list[str]:
    if exporter != "auto":
        return [exporter]
    return ["torchscript", "dynamo"] if opset >= 18 else ["torchscript"]


def _export_once(job: _Job, name: str, attempts: list[tuple[str, str]]) -> ExportReport | None:
    """Export with ``name`` and verify the file; the report when it passes (or is not verified), else None with
    the reason appended to ``attempts``."""
    backend = job.backend or ("sdpa" if name == "torchscript" else "reference")
    written = _write_file(job, name, backend, attempts)
    if written is None:
        return None
    seconds, external = written
    files = [job.path] + ([job.path.with_name(external)] if external else [])
    report = ExportReport(
        path=str(job.path), model=job.model_name, exporter=name, opset=job.opset, head=job.head,
        input_size=tuple(job.input_size), dynamic_batch=job.dynamic_batch, dynamic_size=job.dynamic_size,
        fp16=job.fp16, backend=backend, input_names=job.in_names, output_names=job.out_names,
        file_size=sum(f.stat().st_size for f in files), external_data=external, export_seconds=seconds,
        atol=job.atol, rtol=job.rtol, attempts=list(attempts), replaced_pools=job.n_pools, precision=job.precision,
    )
    if not job.verify:
        return report
    why = _verify(job, report)
    if why is None:
        return report
    attempts.append((name, why))
    if job.verbose and report.verified:
        print(report.summary())
    return None


def _write_file(job: _Job, name: str, backend: str, attempts: list[tuple[str, str]]) -> tuple[float, str | None] | None:
    """Run exporter ``name`` into a temp folder next to the output and move the file into place; returns
    (seconds, external data file name or None), or None with the failure appended to ``attempts``."""
    tmpdir = Path(tempfile.mkdtemp(prefix=".zoo-export-", dir=job.path.parent))
    tmp = tmpdir / job.path.name
    try:
        t0 = time.perf_counter()
        try:
            with torch.no_grad(), ops.use_backend(backend):
                if name == "torchscript":
                    _export_torchscript(job.mod, job.x, tmp, job.opset, job.in_names, job.out_names, job.dyn_axes)
                else:
                    _export_dynamo(job.mod, job.x, tmp, job.opset, job.in_names, job.out_names, job.dynamic_batch,
                                   job.dynamic_size, job.big)
            if job.fp16:
                _to_fp16(tmp)
        except Exception as e:
            msg = str(e)
            attempts.append((name, _opset_hint(msg, job.opset) or f"export failed: {type(e).__name__}: {_short(msg)}"))
            return None
        seconds = time.perf_counter() - t0
        return seconds, _write_final(tmp, job.path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _verify(job: _Job, report: ExportReport) -> str | None:
    """onnx.checker, then onnxruntime against PyTorch at ``job.shapes`` (into ``report.checks``); None when the
    file passes, else why it was rejected."""
    import onnx

    try:
        onnx.checker.check_model(str(job.path), full_check=True)
    except Exception as e:
        return f"onnx.checker failed: {_short(e)}"
    report.checks = verify_onnx(job.path, job.ref, job.shapes, atol=job.atol, rtol=job.rtol, fp16=job.fp16,
                                seed=job.seed + 1)
    report.verified = True
    if report.ok:
        return None
    why = "; ".join(
        f"input {'x'.join(map(str, c.shape))}: " + (c.error or f"max abs {c.max_abs:.2e}, rel {c.max_rel:.2e}")
        for c in report.checks if not c.ok
    )
    return f"onnxruntime does not match PyTorch: {why}"


def _finish(job: _Job, report: ExportReport) -> ExportReport:
    """The accepted file: quantized (int8), its metadata written, the optimised graph next to it."""
    c0 = job.input_size[0]
    if job.int8:
        _quantize_in_place(report, job.ref, job.sizes, c0, job.int8, job.images, job.calibration_count,
                           job.int8_tol, job.seed)
    meta = _file_metadata(report, job.model, job.cfg, job.prep, job.overrides, job.min_size,
                          job.sizes if job.verify else [], required_input_multiple(job.ref), job.calibration, job.head)
    write_metadata(job.path, meta)
    report.metadata = read_metadata(job.path)
    report.file_size = _file_size(job.path)
    if job.optimized_path is not None:
        _optimize(report, job.optimized_path, job.optimization_level, job.ref, job.shapes, job.sizes, c0,
                  job.images, job.int8_tol, meta, job.verify, job.seed)
    if job.verbose:
        print(report.summary())
    return report


def _give_up(job: _Job, attempts: list[tuple[str, str]]) -> None:
    """No exporter gave a verified file: remove what is left and raise ExportError listing every attempt."""
    job.path.unlink(missing_ok=True)
    job.path.with_name(job.path.name + ".data").unlink(missing_ok=True)
    lines = "\n".join(f"  {n}: {why}" for n, why in attempts)
    raise ExportError(f"could not export {job.model_name} to a verified ONNX file (opset {job.opset}, "
                      f"dynamic batch={job.dynamic_batch}, H/W={job.dynamic_size}, head={job.head}):\n{lines}")


def _optimize(report: ExportReport, dst: Path, level: str, ref: nn.Module, shapes: list, sizes: list, c0: int,
              images: Any, tol: float, meta: dict[str, Any], verify: bool, seed: int) -> None:
    """onnxruntime's optimised graph of the final file at ``dst``, verified like the file, with its metadata."""
    dst.unlink(missing_ok=True)
    save_optimized(report.path, dst, level)
    report.optimized_path = str(dst)
    if verify:
        if report.int8_tol is not None:
            vimgs = images[-8:] if images is not None else None
            report.optimized_checks = verify_int8(dst, ref, sizes, c0, images=vimgs, tol=tol, seed=seed + 2)
        else:
            report.optimized_checks = verify_onnx(dst, ref, shapes, atol=report.atol, rtol=report.rtol,
                                                  fp16=report.fp16, seed=seed + 1)
        if not all(c.ok for c in report.optimized_checks):
            bad = "; ".join(f"input {'x'.join(map(str, c.shape))}: "
                            + (c.error or f"max abs {c.max_abs:.2e}") for c in report.optimized_checks if not c.ok)
            dst.unlink(missing_ok=True)
            raise ExportError(f"onnxruntime's optimised graph ({level}) of {report.model} differs from PyTorch: {bad}; "
                              "the unoptimised file is fine: use it, or a lower optimization level")
    write_metadata(dst, {**meta, "ort_optimization": level})


def _check_writable(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise ValueError(f"output path {str(path)!r} is a directory; give a file name such as model.onnx")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as e:
        raise ValueError(f"cannot write the output path {str(path)!r}: {e.strerror or e}") from e


def _opset_hint(msg: str, opset: int) -> str | None:
    """A clear message when an exporter failed because the opset is too old for an op."""
    m = re.search(r"[Ss]upport for this operator was added in version (\d+)|try opset version (\d+)", msg)
    if m:
        need = int(m.group(1) or m.group(2))
        op = re.search(r"operator '([^']+)'|export of (\w+) in opset", msg)
        what = f"operator {op.group(1) or op.group(2)}" if op else "an operator of this model"
        return f"opset {opset} is too old: {what} needs opset >= {need}; export with opset >= {need} (default 18)"
    if re.search(r"opset.{0,40}(not supported|unsupported)|(not supported|unsupported).{0,60}opset", msg, re.I):
        return f"opset {opset} is too old for an operator of this model ({_short(msg)}); use the default 18"
    return None


def _export_torchscript(mod, x, path, opset, names_in, names_out, dyn_axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape branches are expected; verification decides
        torch.onnx.export(
            mod, (x,), str(path), dynamo=False, opset_version=opset, input_names=names_in,
            output_names=names_out, dynamic_axes=dyn_axes or None, do_constant_folding=True,
        )


def _export_dynamo(mod, x, path, opset, names_in, names_out, dynamic_batch, dynamic_size, big):
    D = torch.export.Dim.DYNAMIC
    axes = {}
    if dynamic_batch:
        axes[0] = D
    if dynamic_size:
        axes[2], axes[3] = D, D
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            mod, (x,), None, dynamo=True, opset_version=opset, input_names=names_in, output_names=names_out,
            dynamic_shapes={"x": axes} if axes else None, verbose=False, optimize=True,
        )
    prog.save(str(path), external_data=big)
    _name_input_dims(path, {0: "batch", 2: "height", 3: "width"})


def _name_input_dims(path, labels: dict[int, str]) -> None:
    """Rename the dynamo exporter's symbolic input dims (``s0``, ``s1``...) to the names the TorchScript
    path writes (``batch``, ``height``, ``width``), everywhere the same symbol appears in the graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    mapping = {dims[i].dim_param: name for i, name in labels.items() if i < len(dims) and dims[i].dim_param}
    if not mapping:
        return
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]
    onnx.save_model(model, str(path))


def _write_final(tmp: Path, path: Path) -> str | None:
    """Move the exported file to ``path``: self-contained if it fits, else with one ``<name>.data`` file."""
    import onnx

    extra = [p for p in tmp.parent.iterdir() if p != tmp]
    for stale in (path, path.with_name(path.name + ".data")):
        if stale.exists():
            stale.unlink()
    if not extra:
        shutil.move(str(tmp), str(path))
        return None
    model = onnx.load(str(tmp), load_external_data=True)
    if model.ByteSize() < _PROTOBUF_LIMIT:
        onnx.save_model(model, str(path))
        return None
    data = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return data


def _to_fp16(path: Path) -> None:
    """Convert the fp32 file at ``path`` (and any external data next to it) to float16 in place with
    onnxruntime's converter (inputs and outputs float16 too). Converting the verified fp32 graph instead of
    tracing a ``.half()`` model: the TorchScript exporter writes SDPA with a bool mask (BiFormer's small-region
    routed attention) with float32 constants, which turns part of a half graph float32 and makes it invalid."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(path), load_external_data=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values beyond the float16 range are clamped (the check decides)
        model = convert_float_to_float16(model, keep_io_types=False)
    om = OnnxModel(model)
    om.topological_sort()  # the converter appends its Cast nodes out of order
    for extra in path.parent.iterdir():
        if extra != path:
            extra.unlink()
    if om.model.ByteSize() < _PROTOBUF_LIMIT:
        onnx.save_model(om.model, str(path))
    else:
        onnx.save_model(om.model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
