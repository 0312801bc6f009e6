"""Keep freed memory in the process on CPU (glibc): an opt-in, process-wide allocator setting.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves allocations above its mmap threshold
(dynamic, at most 32 MiB) with fresh ``mmap`` pages and unmaps them on free, and trims the top of its heap when
enough is free; so the activations of each forward pass land on pages the kernel must fault in and zero again.
On a virtual machine that first touch costs several times the arithmetic done on the memory (docs/bench_cpu.md
measures it and its effect on whole models); onnxruntime keeps its own arena and does not pay it.

:func:`retain_freed_memory` tells glibc never to use ``mmap`` for allocations and never to trim its heap, so
freed memory is reused by the next pass. The cost: the process keeps its peak memory (resident set) until it
exits. It changes the whole process and cannot be undone for memory already kept; call it once, early, in a
process that runs inference or training in a loop. jemalloc or tcmalloc (``LD_PRELOAD``) are the alternative
where they are installed. Where the C library is not glibc it does nothing and says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory", "retain_freed_memory_unavailable"]

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # the largest int: the heap's free top is never returned to the system


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (raises AttributeError on musl and other C libraries)
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory_unavailable() -> str | None:
    """Why :func:`retain_freed_memory` cannot work here, or None when it can."""
    if _glibc() is None:
        return f"needs Linux with glibc (platform {sys.platform!r}); use jemalloc/tcmalloc through LD_PRELOAD"
    return None


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no ``mmap`` allocations, no heap trimming) for the rest of the
    process; returns True when both settings were accepted, False (doing nothing) where the C library is not
    glibc (:func:`retain_freed_memory_unavailable` says why)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER))
