"""Triton kernels for the zoo ops (fast paths registered as the ``triton`` backend).

Nothing here imports Triton at ``import zoo`` time: the registered paths in ``zoo/ops/*.py`` import a kernel
module (:func:`load`) on first use. ``TRITON_INTERPRET=1`` must be set before that first import (Triton reads
it when ``@triton.jit`` runs); then the kernels run on CPU tensors in Triton's interpreter (tests only: far
slower than torch; docs/bench_ops.md#triton-interpreter). Modules:

- ``window_attention``: dense attention over small groups (windows / grids) with an additive bias, forward
  and backward including the bias gradient; the ``triton`` path of ``zoo.ops.attention``.
- ``routed_attention``: BiFormer's bi-level routing attention without the gather (indexed K/V).
- ``neighborhood``: 2-D (dilated) neighborhood attention with relative position bias, legacy NATTEN semantics.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch

from .._dispatch import forced_backend, has_module

_KERNELS = ("window_attention", "routed_attention", "neighborhood")
_loaded_interpreted: bool | None = None  # interpreter mode the kernel modules were first imported in


@functools.cache
def _has_triton() -> bool:
    return has_module("triton")


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set (kernels run in Triton's CPU interpreter)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run here (on ``device``): Triton installed and either a CUDA device or
    ``TRITON_INTERPRET=1`` (CPU tensors, tests). Kernel modules already imported without the interpreter
    cannot run on CPU, so CPU is refused then. While ``torch.compile`` traces, only a forced backend counts."""
    if not _has_triton():
        return False
    if torch.compiler.is_compiling() and not forced():
        return False  # inside torch.compile the kernels are not auto-chosen (untested there); force to use
    if device is None:
        return torch.cuda.is_available() or interpreting()
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available()
    if dev.type == "cpu":
        return interpreting() and _loaded_interpreted is not False
    return False


def unavailable_reason(device: torch.device | str) -> str:
    """Why :func:`available` is False for ``device`` (for the dispatcher's reasons)."""
    dev = torch.device(device)
    if not _has_triton():
        return "triton not installed"
    if torch.compiler.is_compiling() and not forced():
        return "inside torch.compile the kernels run only when forced"
    if dev.type == "cuda":
        return "no CUDA device"
    if dev.type == "cpu":
        if not interpreting():
            return "CPU needs TRITON_INTERPRET=1 (the interpreter, tests only)"
        return "kernels were imported without the interpreter; set TRITON_INTERPRET=1 before the first use"
    return f"no kernels for device type {dev.type}"


def forced() -> bool:
    """Whether the ``triton`` backend is forced (``use_backend('triton')`` or ``ZOO_BACKEND=triton``)."""
    return forced_backend() == "triton"


def load(name: str) -> ModuleType:
    """Import the kernel module ``zoo.ops.triton.<name>`` (lazily, on first use)."""
    global _loaded_interpreted
    if name not in _KERNELS:
        raise ValueError(f"unknown triton kernel module {name!r}; choose one of {_KERNELS}")
    if _loaded_interpreted is None:
        _loaded_interpreted = interpreting()
    return importlib.import_module(f"{__name__}.{name}")


__all__ = ["available", "forced", "interpreting", "load", "unavailable_reason"]
