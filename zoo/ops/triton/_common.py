"""Helpers shared by the Triton kernel modules (imports Triton: load only through ``zoo.ops.triton.load``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

LOG2E = 1.4426950408889634

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def mma(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``a @ b`` accumulated in fp32. ``UPCAST`` (bf16 in the interpreter) multiplies in fp32: the
    interpreter's bf16 dot is wrong. ``PREC`` is the fp32 input precision ("ieee" or "tf32"; ignored for fp16/bf16)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


def dot_flags(dtype: torch.dtype) -> dict:
    """Kernel constexprs for the matmuls: fp32 inputs multiply exactly ("ieee") unless torch allows TF32 for
    CUDA matmuls (``torch.backends.cuda.matmul.allow_tf32``), the same choice torch makes for ``@``."""
    prec = "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"
    # Only bf16 is upcast in the interpreter, so its fp32/fp16 runs take the same code path as on GPU.
    return {"PREC": prec, "UPCAST": interpreting() and dtype == torch.bfloat16}


def block(n: int, lo: int = 16, hi: int = 64) -> int:
    """Power-of-two tile size covering ``n``, clamped to ``[lo, hi]`` (``tl.dot`` needs dims >= 16)."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def num_programs_target(device: torch.device) -> int:
    """How many programs a launch should have to fill the device (4 per SM on CUDA; few in the interpreter)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


# Row reductions and zeros written with core builtins only: triton.language's own ``tl.sum``/``tl.max``/
# ``tl.zeros`` are @jit functions decorated when triton.language is first imported, and in the interpreter
# they only work if that import happened with TRITON_INTERPRET=1 already set (timm/torch may import Triton
# earlier, e.g. when a test session collects other modules first). These work either way.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def row_sum(x):
    """``x.sum(1)`` of a 2-D block."""
    return tl.reduce(x, 1, _add)


@triton.jit
def row_max(x):
    """``x.max(1)`` of a 2-D block."""
    return tl.reduce(x, 1, _maximum)
