"""Running exported files in onnxruntime: :class:`OnnxRunner` (checks inputs against the file's metadata),
:func:`save_optimized` (onnxruntime's optimised graph) and :func:`measure_latency`."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import require_extra
from .metadata import check_input_size, read_metadata

OPTIMIZATION_LEVELS = ("basic", "extended", "all")


class OnnxRunner:
    """An exported file in onnxruntime that checks every input against the file's metadata first
    (:func:`check_input_size`: a clear ValueError instead of an answer outside the valid size range) and feeds
    it in the file's input type (float16 files take float32 arrays too).

    >>> run = OnnxRunner("m.onnx")
    >>> logits = run(x)[0]          # x: [B, C, H, W] numpy array or torch tensor
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        require_extra("export", "zoo.export.OnnxRunner", ("onnx", "onnxruntime"))
        import numpy as np
        import onnxruntime as ort

        self.path = str(path)
        self.meta = read_metadata(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or max(1, torch.get_num_threads())
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(self.path, opts, providers=list(providers))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def __call__(self, x: Any) -> list:
        import numpy as np

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        check_input_size(self.meta, x.shape)
        return self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})


def save_optimized(src: str | os.PathLike, dst: str | os.PathLike, level: str = "extended") -> None:
    """Write onnxruntime's optimised graph of ``src`` to ``dst`` (``SessionOptions.optimized_model_filepath``):
    constant folding and node fusions done once instead of at every session start. ``"basic"`` keeps standard
    ONNX ops; ``"extended"`` (default) adds onnxruntime's fused contrib ops, so the file runs in onnxruntime only;
    ``"all"`` also adds layout changes specific to the CPU it was made on. Load it with the same onnxruntime
    version on the same kind of machine."""
    require_extra("export", "zoo.export.save_optimized", ("onnx", "onnxruntime"))
    import onnxruntime as ort

    if level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization level must be one of {OPTIMIZATION_LEVELS}, got {level!r}")
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def measure_latency(
    path: str | os.PathLike, module: nn.Module, shape: tuple[int, ...], *, runs: int = 10, warmup: int = 2,
    threads: int | None = None,
) -> tuple[float, float]:
    """Median CPU latency in ms of onnxruntime (``path``) and of PyTorch eager (``module``) on ``shape``."""
    require_extra("export", "zoo.export.measure_latency", ("onnx", "onnxruntime"))
    import numpy as np
    import onnxruntime as ort

    threads = threads or torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(*shape)
    inp = sess.get_inputs()[0]
    feed = {inp.name: x.numpy().astype(np.float16 if inp.type == "tensor(float16)" else np.float32)}

    def median_ms(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    ort_ms = median_ms(lambda: sess.run(None, feed))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            pt_ms = median_ms(lambda: module(x))
    finally:
        torch.set_num_threads(prev)
    return ort_ms, pt_ms
