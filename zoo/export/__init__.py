"""Export a model (a zoo/timm name or any ``nn.Module``) to ONNX and verify the file in onnxruntime.

>>> from zoo.export import export_onnx
>>> report = export_onnx("nat_mini", "nat_mini.onnx", dynamic_size=True)
>>> print(report.summary())

What :func:`export_onnx` does:

1. builds the model (``timm.create_model``; an unknown name lists the close ones), loads an optional zoo
   checkpoint strictly (``.pth``/``.pt``/``.bin``/``.safetensors`` state dict in zoo layout, optionally wrapped
   in ``{"state_dict": ...}``), and picks the head: ``"logits"``, ``"pre_logits"`` (pooled features before
   the classifier) or ``"features"`` (the stage maps of ``features_only``, NCHW, strides 4/8/16/32);
2. exports with the reference/SDPA paths of :mod:`zoo.ops` (the dispatcher allows nothing else while
   exporting: no custom ops in the graph). While tracing, the mixers take their padded path at every size
   (:func:`zoo.ops.is_tracing`), so one graph serves every input size of the same regime (see below);
3. with ``exporter="auto"`` tries the TorchScript exporter first (fast, keeps the traced shape arithmetic)
   and falls back to the dynamo exporter (``torch.export``) when the first fails to export *or to verify*;
4. writes one self-contained ``.onnx`` file while the weights fit the 2 GB protobuf limit, else the graph
   plus one ``<name>.onnx.data`` file next to it (the dynamo exporter's default of a separate data file is
   overridden);
5. runs ``onnx.checker`` and then onnxruntime (CPU) on random inputs: two batch sizes when the batch is
   dynamic, and when H/W are dynamic sizes far from the export size (about 0.5x and 2x, and an odd,
   non-square size: :func:`default_check_sizes`); compares with PyTorch (fp32) and fails with
   :class:`ExportError` beyond ``atol + rtol·|ref|``.

Regimes: a few blocks choose their structure from the map size the way the official code does (CrossFormer
and Agent-Swin windows shrink to the whole map when the map is not larger than the group/window, and
Swin drops its shift there; NAT/DiNAT pad maps smaller than ``kernel·dilation``). While tracing, these
choices are written as arithmetic on the traced size (:mod:`zoo.ops.sizes`, :func:`zoo.ops.roll_map`), not
as Python branches, so one graph makes the right choice at every input size; padding, masks and crops are
in the graph at every size. The verification at far sizes is what shows it (and catches any graph that
silently isn't right, e.g. the dynamo exporter's trap with ``adaptive_avg_pool2d`` to a fixed size; the zoo
pools agents with matrices instead).

Modules: :mod:`.onnx` (``export_onnx``: prepare, try each exporter, verify, finish), :mod:`.model` (build and
load the model, heads, exportable pools), :mod:`.verify` (checks against PyTorch), :mod:`.quantize` (int8),
:mod:`.metadata` (the file's ``zoo.*`` entries and the size guard), :mod:`.runtime` (onnxruntime runners),
:mod:`.report` (``ExportReport``, ``Check``, ``ExportError``). Import from ``zoo.export``; the module split is
private.
"""

from __future__ import annotations

from .metadata import METADATA_PREFIX, check_input_size, read_metadata, write_metadata
from .model import (
    HeadWrapper,
    MatmulAdaptiveAvgPool2d,
    build_model,
    load_checkpoint_strict,
    load_state_dict_file,
    replace_adaptive_pools,
    required_input_multiple,
    resolve_model_name,
)
from .onnx import EXPORTERS, HEADS, export_onnx
from .quantize import FASHION_MNIST_NPZ, INT8_MODES, load_images, quantize_int8
from .report import Check, ExportError, ExportReport
from .runtime import OPTIMIZATION_LEVELS, OnnxRunner, measure_latency, save_optimized
from .verify import default_check_sizes, verify_int8, verify_onnx

__all__ = [
    "EXPORTERS",
    "FASHION_MNIST_NPZ",
    "HEADS",
    "INT8_MODES",
    "METADATA_PREFIX",
    "OPTIMIZATION_LEVELS",
    "Check",
    "ExportError",
    "ExportReport",
    "HeadWrapper",
    "MatmulAdaptiveAvgPool2d",
    "OnnxRunner",
    "build_model",
    "check_input_size",
    "default_check_sizes",
    "export_onnx",
    "load_checkpoint_strict",
    "load_images",
    "load_state_dict_file",
    "measure_latency",
    "quantize_int8",
    "read_metadata",
    "replace_adaptive_pools",
    "required_input_multiple",
    "resolve_model_name",
    "save_optimized",
    "verify_int8",
    "verify_onnx",
    "write_metadata",
]
