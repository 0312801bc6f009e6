"""Backend dispatcher for the functional attention ops.

Every op in :mod:`zoo.ops` has a plain-PyTorch ``reference`` implementation and optional fast paths
(``sdpa``, ``flex``, ``natten``, ``triton``, ``onednn``). The dispatcher picks one per call from the device, the dtype
and what is installed; :func:`use_backend` (a context manager) or the ``ZOO_BACKEND`` environment variable
forces one. A forced backend that an op does not have, or that cannot run the call at hand, falls back to
the op's default choice: a missing accelerator is never an error. :func:`last_path` and :func:`explain`
say what ran.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

BACKENDS = ("reference", "sdpa", "flex", "natten", "triton", "onednn")

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("zoo_forced_backend", default=None)
_last: dict[str, str] = {}


@dataclass(frozen=True)
class Impl:
    """One implementation of an op. ``supports(device, dtype, **kw)`` says whether it can run a call."""

    backend: str
    fn: Callable
    supports: Callable[..., bool]


_REGISTRY: dict[str, dict[str, Impl]] = {}
# Preference order per device type when nothing is forced; the first registered, supporting impl wins.
_DEFAULT_ORDER = {
    "cuda": ("triton", "natten", "flex", "sdpa", "reference"),
    "cpu": ("onednn", "sdpa", "reference"),
}


def _always(*args, **kwargs) -> bool:
    return True


def register(op: str, backend: str, supports: Callable[..., bool] = _always, order: int | None = None):
    """Decorator: register ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = Impl(backend, fn, supports)
        return fn

    return deco


def _env_backend() -> str | None:
    name = os.environ.get("ZOO_BACKEND", "").strip().lower() or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"ZOO_BACKEND={name!r} is not a backend; choose one of {BACKENDS}")
    return name


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``ZOO_BACKEND`` (context manager wins), or None."""
    return _forced.get() or _env_backend()


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force every op inside the block to run on ``name`` where it can (``None`` restores auto)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """True when autograd will record a call on these tensors (grad mode on and one of them requires grad):
    the paths without a backward (oneDNN) and the CPU-training rules of the attention ops key on it."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _is_exporting() -> bool:
    return bool(
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    )


def is_tracing() -> bool:
    """True while a graph is traced for export (ONNX exporters, ``torch.jit.trace``, ``torch.export``).

    Size-dependent Python branches (pad or not, mask or not) must then take the general path: a branch taken
    on the example input's size is baked into the graph and gives wrong results at other sizes.
    """
    return _is_exporting() or torch.compiler.is_exporting()


def select(op: str, device: torch.device, dtype: torch.dtype, **kw) -> Impl:
    """Choose the implementation of ``op`` for this call and remember it for :func:`last_path`."""
    impls = _REGISTRY[op]
    impl = None
    if _is_exporting() or torch.compiler.is_exporting():
        # export: only the portable paths. A forced "reference" (or "sdpa") is honoured; by default sdpa for
        # the TorchScript tracer, and the reference for torch.export (the dynamo ONNX exporter too), which
        # mis-tracks the output strides of SDPA with a learnable bias: the caller need not force anything.
        default = "sdpa" if _is_exporting() else "reference"
        want = forced_backend() if forced_backend() in ("reference", "sdpa") else default
        impl = impls.get(want) if want in impls and impls[want].supports(device, dtype, **kw) else None
        impl = impl or impls["reference"]
    else:
        forced = forced_backend()
        if forced is not None and forced in impls and impls[forced].supports(device, dtype, **kw):
            impl = impls[forced]
        if impl is None:
            order = _DEFAULT_ORDER.get(device.type, ("sdpa", "reference"))
            for name in order:
                cand = impls.get(name)
                if cand is not None and cand.supports(device, dtype, **kw):
                    impl = cand
                    break
        impl = impl or impls["reference"]
    if not torch.compiler.is_compiling():
        _last[op] = impl.backend
    return impl


def last_path(op: str) -> str | None:
    """The backend that ran the most recent call of ``op`` in this process (None if never called)."""
    return _last.get(op)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def backend_status() -> dict[str, tuple[bool, str]]:
    """Whether each backend can run on this machine, with the reason."""
    cuda = torch.cuda.is_available()
    status = {
        "reference": (True, "plain PyTorch, any device"),
        "sdpa": (True, f"torch.nn.functional.scaled_dot_product_attention (torch {torch.__version__})"),
    }
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        status["flex"] = (cuda, "FlexAttention (CUDA)" if cuda else "FlexAttention present; used on CUDA only")
    except ImportError:
        status["flex"] = (False, "torch.nn.attention.flex_attention not importable")
    mkldnn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    status["onednn"] = (mkldnn, "oneDNN fused dense layers (CPU inference)" if mkldnn else "torch built without oneDNN")
    if has_module("natten"):
        status["natten"] = (cuda, "natten installed" + ("" if cuda else "; fused kernels need CUDA"))
    else:
        status["natten"] = (False, "natten not installed (optional: make setup installs it where it builds)")
    if has_module("triton"):
        interp = os.environ.get("TRITON_INTERPRET") == "1"
        ok = cuda or interp
        why = "triton kernels on CUDA" if cuda else (
            "TRITON_INTERPRET=1: kernels run in the interpreter (tests only)" if interp
            else "triton installed; kernels need CUDA (or TRITON_INTERPRET=1 for tests)")
        status["triton"] = (ok, why)
    else:
        status["triton"] = (False, "triton not installed")
    return status


def explain() -> str:
    """A human-readable table: which backends exist here, what is forced, which op ran on what."""
    lines = [f"zoo.ops backends (torch {torch.__version__}, cuda={torch.cuda.is_available()}):"]
    for name, (ok, why) in backend_status().items():
        lines.append(f"  {name:<10} {'yes' if ok else 'no ':<4} {why}")
    lines.append(f"  forced: {forced_backend() or 'none (auto)'}")
    lines.append("ops (registered backends; last path):")
    for op, impls in sorted(_REGISTRY.items()):
        lines.append(f"  {op:<24} {','.join(impls)}; last={_last.get(op, '-')}")
    return "\n".join(lines)
