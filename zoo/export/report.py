"""What an export produced and how it was checked: :class:`ExportReport`, one :class:`Check` per compared input,
and :class:`ExportError`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not match PyTorch."""


@dataclass
class Check:
    """One onnxruntime-vs-PyTorch comparison: input shape, worst errors over all outputs."""

    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    error: str = ""  # onnxruntime failure (e.g. a reshape baked to the export size)
    rel_l2: float | None = None  # int8 checks: ||a - b|| / ||b|| over each output (worst), the pass criterion
    top1_agree: float | None = None  # int8 checks of [B, classes] outputs: share of rows with the same argmax

    def line(self) -> str:
        shp = "x".join(map(str, self.shape))
        if self.error:
            return f"  input {shp:<16} FAILED in onnxruntime: {self.error}"
        outs = ", ".join("x".join(map(str, s)) for s in self.output_shapes)
        extra = "" if self.rel_l2 is None else f"  rel L2 {self.rel_l2:.2e}"
        extra += "" if self.top1_agree is None else f"  top-1 agree {100 * self.top1_agree:.0f}%"
        return (f"  input {shp:<16} -> {outs:<24} max abs {self.max_abs:.2e}  max rel {self.max_rel:.2e}{extra}  "
                f"{'ok' if self.ok else 'MISMATCH'}")


@dataclass
class ExportReport:
    """What :func:`export_onnx` produced and how it was checked."""

    path: str
    model: str
    exporter: str  # "torchscript" or "dynamo": the exporter that produced the file
    opset: int
    head: str
    input_size: tuple[int, int, int]  # (C, H, W) of the export example
    dynamic_batch: bool
    dynamic_size: bool
    fp16: bool
    backend: str  # zoo.ops path forced while exporting ("sdpa" or "reference")
    input_names: list[str]
    output_names: list[str]
    file_size: int  # bytes, .onnx plus external data
    external_data: str | None  # name of the .onnx.data file, or None when self-contained
    export_seconds: float
    checks: list[Check] = field(default_factory=list)
    atol: float = 1e-4
    rtol: float = 1e-4
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (exporter, why it was rejected)
    verified: bool = False
    replaced_pools: int = 0  # nn.AdaptiveAvgPool2d(size > 1) exported as pooling-matrix products (dynamic H/W)
    precision: str = "fp32"  # "fp32", "fp16", "int8-dynamic" or "int8-static"
    metadata: dict[str, Any] = field(default_factory=dict)  # what read_metadata(path) returns
    int8_tol: float | None = None  # int8: pass criterion rel L2 <= int8_tol (see export_onnx)
    fp32_file_size: int | None = None  # int8: size of the verified fp32 file it was quantized from
    fp32_checks: list[Check] = field(default_factory=list)  # int8: the fp32 file's checks before quantizing
    optimized_path: str | None = None  # onnxruntime's optimised graph, when asked for
    optimized_checks: list[Check] = field(default_factory=list)
    quantization: dict[str, Any] = field(default_factory=dict)  # int8: what quantize_int8 did

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks), default=float("nan"))

    @property
    def ok(self) -> bool:
        return (bool(self.checks) and all(c.ok for c in self.checks)
                and all(c.ok for c in self.fp32_checks + self.optimized_checks))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_abs"], d["max_rel"], d["ok"] = self.max_abs, self.max_rel, self.ok
        return d

    def summary(self) -> str:
        dyn = [n for n, on in (("batch", self.dynamic_batch), ("H/W", self.dynamic_size)) if on]
        size = f"{self.file_size / 2**20:.1f} MiB" + (f" (+ {self.external_data})" if self.external_data else "")
        lines = [
            f"{self.model} -> {self.path}",
            f"  exporter {self.exporter}, opset {self.opset}, head {self.head}, input {self.input_size}, "
            f"dynamic {', '.join(dyn) or 'none'}, {self.precision}, zoo.ops path {self.backend}",
            f"  {size}, exported in {self.export_seconds:.1f} s",
        ]
        if self.fp32_file_size:
            lines[-1] += (f"; the fp32 file was {self.fp32_file_size / 2**20:.1f} MiB "
                          f"({self.file_size / self.fp32_file_size:.2f}x)")
        if self.replaced_pools:
            lines.append(f"  {self.replaced_pools} AdaptiveAvgPool2d(size > 1) exported as pooling-matrix products")
        for exporter, why in self.attempts:
            lines.append(f"  (rejected {exporter}: {why})")
        if self.fp32_checks:
            lines.append(f"  fp32 file before quantizing, onnxruntime vs PyTorch (pass: |a-b| <= {self.atol:g} + "
                         f"{self.rtol:g}·|b|):")
            lines += [c.line() for c in self.fp32_checks]
        if self.checks:
            crit = (f"rel L2 = ||a-b||/||b|| <= {self.int8_tol:g}" if self.int8_tol is not None
                    else f"|a-b| <= {self.atol:g} + {self.rtol:g}·|b|")
            lines.append(f"  {self.precision} file, onnxruntime vs PyTorch fp32 (pass: {crit}):")
            lines += [c.line() for c in self.checks]
        elif not self.verified:
            lines.append("  not verified (verify=False)")
        if self.optimized_path:
            lines.append(f"  onnxruntime's optimised graph -> {self.optimized_path} (runs in onnxruntime only):")
            lines += [c.line() for c in self.optimized_checks]
        if self.metadata:
            lines.append("  metadata (zoo.export.read_metadata):")
            lines += [f"    {k}: {_short(json.dumps(v) if not isinstance(v, str) else v, 200)}"
                      for k, v in self.metadata.items()]
        return "\n".join(lines)


def _short(msg: str, n: int = 300) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def _file_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
