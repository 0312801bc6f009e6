"""Backend dispatcher for the functional ops: which path runs a call, and why the others did not.

Every op in :mod:`zoo.ops` has a plain-PyTorch ``reference`` implementation and optional fast paths
(``sdpa``, ``flex``, ``natten``, ``triton``, ``onednn``), each registered with a ``supports(device, dtype,
**signature)`` rule that returns the reasons it cannot run a call (an empty list: it can).

How a path is chosen (``docs/dispatch.md`` has the long form):

1. Forced: :func:`use_backend` (a context manager) or ``ZOO_BACKEND`` (read once at import;
   :func:`refresh` re-reads it) names a backend. If the op has it and it can run the call, it runs. If not,
   the call falls back to the default choice below and the fallback, with the reasons, is recorded for
   :func:`explain`; ``use_backend(name, strict=True)`` raises :class:`BackendUnavailableError` with the
   reasons instead (for ops that have that path; an op without it runs its default).
2. Default: the first path of the device's order (``_DEFAULT_ORDER``) that can run the call. The paths in
   ``GATED`` (``triton``, ``natten``, ``flex``) are in the CUDA order but run by default only where the
   validation record ``zoo/ops/validated.json`` says the project's GPU tests passed for that op, GPU
   architecture and dtype. Today the record is empty, so on CUDA they are opt-in and the defaults are
   ``sdpa`` / ``reference``.
3. Self-check: a gated path without a record entry (so: an opted-in one) first checks itself, on its first
   call per (device, dtype), against the reference on a small input; if it disagrees or fails to compile,
   one warning is issued and the call falls back (strict: raises).
4. Export: while a graph is traced for export only the portable paths run (``reference``; ``sdpa`` for the
   TorchScript tracer), whatever is forced other than those two.

A decision is made once per (op, device, dtype, forced backend, call signature) and cached; each later call
with the same key costs a dict lookup. The signature holds what the op's rules read about the call (sizes,
``needs_grad``; for the dense ops the CPU autocast and oneDNN switches). Otherwise the rules may read only what
is installed, the forced backend and the module's constants: after changing a threshold constant, the
environment or the validation record at run time, call :func:`refresh`. :func:`last_path` and :func:`explain`
say what ran.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .sizes import is_capturing, is_torchscript, is_tracing

BACKENDS = ("reference", "sdpa", "flex", "natten", "triton", "onednn")
# Paths that run by default only where the validation record says the project's tests passed on that GPU
# architecture and dtype; elsewhere they run when forced, after a self-check.
GATED = ("triton", "natten", "flex")
VALIDATION_RECORD = Path(__file__).with_name("validated.json")

# Preference order per device type when nothing is forced; the first registered path that can run the call wins.
_DEFAULT_ORDER = {
    "cuda": ("triton", "natten", "flex", "sdpa", "reference"),
    "cpu": ("onednn", "sdpa", "reference"),
}


class BackendUnavailableError(RuntimeError):
    """``use_backend(name, strict=True)`` was asked for a path that cannot run the call; the message says why."""


@dataclass(frozen=True)
class Impl:
    """One implementation of an op. ``supports(device, dtype, **signature)`` returns the reasons it cannot
    run a call (empty: it can)."""

    backend: str
    fn: Callable
    supports: Callable[..., list[str]]


@dataclass(frozen=True)
class Decision:
    """The path chosen for one call signature of an op, and why each other registered path was not chosen."""

    op: str
    impl: Impl
    device: torch.device
    dtype: torch.dtype
    forced: str | None
    refused: tuple[tuple[str, tuple[str, ...]], ...]  # (backend, reasons), in registration order
    mode: str = "eager"  # "eager", "export" or "compile"

    @property
    def fell_back(self) -> bool:
        """True when a backend was forced but another one ran."""
        return self.forced is not None and self.impl.backend != self.forced

    def describe(self) -> str:
        """``ran <backend> (<device>, <dtype>, <forced/auto>)`` and one line per refused path."""
        how = "auto" if self.forced is None else f"forced {self.forced}" + (" -> FELL BACK" if self.fell_back else "")
        lines = [f"ran {self.impl.backend} ({self.device}, {_dtype_name(self.dtype)}, {how}, {self.mode})"]
        lines += [f"{name}: {'; '.join(reasons)}" for name, reasons in self.refused]
        return "\n".join(lines)


def _always(*args, **kwargs) -> list[str]:
    return []


_REGISTRY: dict[str, dict[str, Impl]] = {}
# Bumped by register() and refresh(): a decision a module keeps (zoo.layers.Linear) is valid while it is unchanged.
generation = 0
# op -> sample(device, dtype, backend) -> the positional args of a small call, for the self-check
_SAMPLES: dict[str, Callable[[torch.device, torch.dtype, str], tuple]] = {}


def register(op: str, backend: str, supports: Callable[..., list[str]] = _always):
    """Decorator: register ``fn`` as the ``backend`` implementation of ``op``; ``supports`` returns the reasons
    it cannot run a call (see :class:`Impl`)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")

    def deco(fn: Callable) -> Callable:
        global generation
        _REGISTRY.setdefault(op, {})[backend] = Impl(backend, fn, supports)
        _DECISIONS.clear()
        generation += 1
        return fn

    return deco


def register_sample(op: str, sample: Callable[[torch.device, torch.dtype, str], tuple]) -> None:
    """Register the self-check input of ``op``: ``sample(device, dtype, backend)`` returns the positional
    arguments of a small call that ``backend``'s function and the reference both run (deterministic values)."""
    _SAMPLES[op] = sample


# ------------------------------------------------------------------------------------------ forcing a backend
_forced: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar("zoo_forced_backend", default=None)
_BAD_ENV = "<bad ZOO_BACKEND>"
_env_forced: tuple[str | None, bool] = (None, False)
_env_raw = ""


def _read_env() -> None:
    global _env_forced, _env_raw
    _env_raw = os.environ.get("ZOO_BACKEND", "").strip().lower()
    name = _env_raw or None
    _env_forced = (_BAD_ENV if name is not None and name not in BACKENDS else name, False)


def refresh() -> None:
    """Re-read ``ZOO_BACKEND`` and the validation record and forget every cached decision and self-check.

    Needed after changing the environment, a threshold constant of an op or ``zoo/ops/validated.json`` while
    the process runs (tests do); a normal run never needs it.
    """
    global _validated, generation
    _read_env()
    _validated = _read_validated()
    generation += 1
    _DECISIONS.clear()
    _SELF_CHECKED.clear()
    _last.clear()


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``ZOO_BACKEND`` (context manager wins), or None."""
    f = _forced.get()
    name = f[0] if f is not None else _env_forced[0]
    return _env_raw if name == _BAD_ENV else name


@contextlib.contextmanager
def use_backend(name: str | None, strict: bool = False) -> Iterator[None]:
    """Force every op inside the block to run on ``name`` where it can (``None``: what ``ZOO_BACKEND`` says, else
    auto).

    Where an op has the path but it cannot run a call, the call falls back to the op's default (recorded for
    :func:`explain`), or with ``strict=True`` raises :class:`BackendUnavailableError` giving the reasons. Ops
    without that path at all (e.g. ``linear`` under ``"sdpa"``) run their default either way.
    """
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    token = _forced.set((name, strict) if name is not None else None)
    try:
        yield
    finally:
        _forced.reset(token)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """True when autograd will record a call on these tensors (grad mode on and one of them requires grad):
    the paths without a backward (oneDNN) and the CPU-training rules of the attention ops key on it."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ------------------------------------------------------------------------------------------ validation record
# (op, backend, arch, dtype) of the validation record: read at the end of this module and by refresh()
_validated: frozenset[tuple[str, str, str, str]] = frozenset()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_arch(device: torch.device) -> str:
    """The architecture a validation record names: ``sm_<major><minor>`` for a CUDA device, else the device type."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"
    return device.type


def validation_records() -> list[dict]:
    """The entries of ``zoo/ops/validated.json`` (empty when the file is absent). Each names ``op``,
    ``backend``, ``arch`` (:func:`device_arch`), ``dtype`` and the run that passed (``gpu``, ``torch``,
    ``commit``, ``date``, ``evidence``)."""
    if not VALIDATION_RECORD.exists():
        return []
    data = json.loads(VALIDATION_RECORD.read_text())
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ValueError(f"{VALIDATION_RECORD}: expected {{'records': [...]}}; see docs/dispatch.md")
    for i, r in enumerate(records):
        missing = [k for k in ("op", "backend", "arch", "dtype") if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"{VALIDATION_RECORD}: record {i} lacks {missing}; see docs/dispatch.md")
    return records


def _read_validated() -> frozenset[tuple[str, str, str, str]]:
    return frozenset((r["op"], r["backend"], r["arch"], r["dtype"]) for r in validation_records())


def is_validated(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the validation record lists ``backend`` of ``op`` on this device's architecture and ``dtype``.
    The record is read when the module loads and by :func:`refresh`, never here: a file read while
    ``torch.compile`` traces a dispatch would break the graph."""
    if not _validated:
        return False
    return (op, backend, device_arch(device), _dtype_name(dtype)) in _validated


# ------------------------------------------------------------------------------------------ self-check
# (op, backend, device, dtype) -> None (passed) or the failure reason
_SELF_CHECKED: dict[tuple[str, str, torch.device, torch.dtype], str | None] = {}
_SELF_CHECK_TOL = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _run_self_check(op: str, impl: Impl, device: torch.device, dtype: torch.dtype) -> str | None:
    sample = _SAMPLES.get(op)
    if sample is None:
        return f"no self-check sample registered for {op} (zoo.ops._dispatch.register_sample)"
    tol = _SELF_CHECK_TOL.get(dtype, 2e-3)
    try:
        with torch.no_grad():
            args = sample(device, dtype, impl.backend)
            got = impl.fn(*args)
            ref_args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
            want = _REGISTRY[op]["reference"].fn(*ref_args)
            torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    except Exception as err:  # a kernel that fails to compile or launch is refused like a wrong one
        first = str(err).strip().splitlines()
        return f"self-check failed ({type(err).__name__}: {first[0][:300] if first else ''})"
    return None


def _self_check(op: str, impl: Impl, device: torch.device, dtype: torch.dtype, eager: bool) -> list[str]:
    """Reasons to refuse a gated path that has no validation record: its self-check on a small input against
    the reference failed (checked once per device and dtype; the first failure warns)."""
    if impl.backend not in GATED or is_validated(op, impl.backend, device, dtype):
        return []
    key = (op, impl.backend, device, dtype)
    if key not in _SELF_CHECKED:
        if not eager:
            return [f"not self-checked on {device}/{_dtype_name(dtype)} yet: inside torch.compile a path without a "
                    "validation record runs only after one eager call checked it"]
        _SELF_CHECKED[key] = failure = _run_self_check(op, impl, device, dtype)
        if failure is not None:
            warnings.warn(
                f"zoo.ops: the {impl.backend} path of {op} failed its self-check on {device} "
                f"({device_arch(device)}), {_dtype_name(dtype)}: {failure}. Calls there fall back to the next "
                f"path; zoo.ops.explain() shows which.",
                RuntimeWarning,
                stacklevel=5,
            )
    failure = _SELF_CHECKED[key]
    return [] if failure is None else [failure]


# ------------------------------------------------------------------------------------------ choosing a path
_DECISIONS: dict[tuple, Decision] = {}
_DECISIONS_MAX = 4096
_last: dict[str, Decision] = {}


def _not_validated(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    where = device_arch(device) if device.type == "cuda" else device.type
    return (f"not validated on {where}/{_dtype_name(dtype)} (no entry in zoo/ops/validated.json: "
            f"tools/device_check.sh has not passed there); opt in with use_backend({backend!r}) or "
            f"ZOO_BACKEND={backend}")


def decide(op: str, device: torch.device, dtype: torch.dtype, forced: str | None = None, strict: bool = False,
           eager: bool = True, **signature) -> Decision:
    """Choose the path of ``op`` for a call with this ``signature`` (uncached; :func:`select` caches it).

    Raises :class:`BackendUnavailableError` when ``strict`` and the op has the ``forced`` path but it cannot
    run the call, and ``ValueError`` for a ``ZOO_BACKEND`` that names no backend.
    """
    if forced == _BAD_ENV:
        raise ValueError(f"ZOO_BACKEND={_env_raw!r} is not a backend; choose one of {BACKENDS} (or unset it)")
    impls = _REGISTRY[op]
    order = _DEFAULT_ORDER.get(device.type, ("sdpa", "reference"))
    refused: dict[str, list[str]] = {}
    chosen: Impl | None = None

    def reasons_of(name: str, impl: Impl, run_check: bool) -> list[str]:
        why = list(impl.supports(device, dtype, **signature))
        if not why and name in GATED and name != forced and not is_validated(op, name, device, dtype):
            why.append(_not_validated(name, device, dtype))
        if not why and run_check:
            why = _self_check(op, impl, device, dtype, eager)
        return why

    if forced is not None:
        impl = impls.get(forced)
        if impl is None:
            refused[forced] = [f"{op} has no {forced} path (its paths: {', '.join(impls)})"]
        else:
            why = reasons_of(forced, impl, run_check=True)
            if not why:
                chosen = impl
            else:
                refused[forced] = why
                if strict:
                    raise BackendUnavailableError(
                        f"{op}: use_backend({forced!r}, strict=True) cannot run this call on {device}, "
                        f"{_dtype_name(dtype)}: {'; '.join(why)}. Without strict=True the call falls back to the "
                        f"default path (zoo.ops.explain() shows which)."
                    )
    for name in order:
        if chosen is not None:
            break
        impl = impls.get(name)
        if impl is None or name in refused:
            continue
        why = reasons_of(name, impl, run_check=True)
        if why:
            refused[name] = why
        else:
            chosen = impl
    chosen = chosen or impls["reference"]
    for name, impl in impls.items():
        if name == chosen.backend or name in refused:
            continue
        why = reasons_of(name, impl, run_check=False)
        if not why:
            why = [f"ranked below {chosen.backend} in the {device.type} order" if name in order else
                   f"not in the {device.type} default order: runs only when forced (use_backend({name!r}))"]
        refused[name] = why
    ranked = [n for n in impls if n in refused] + [n for n in refused if n not in impls]
    return Decision(op, chosen, device, dtype, forced, tuple((n, tuple(refused[n])) for n in ranked),
                    "eager" if eager else "compile")


def _decide_export(op: str, device: torch.device, dtype: torch.dtype, forced: str | None, signature) -> Decision:
    # export: only the portable paths. A forced "reference" (or "sdpa") is honoured; by default sdpa for the
    # TorchScript tracer, and the reference for torch.export (the dynamo ONNX exporter too), which mis-tracks
    # the output strides of SDPA with a learnable bias: the caller need not force anything.
    impls = _REGISTRY[op]
    want = forced if forced in ("reference", "sdpa") else ("sdpa" if is_torchscript() else "reference")
    impl = impls.get(want)
    why = ["exporting: only the portable paths run (sdpa for TorchScript, reference for torch.export)"]
    if impl is not None and not impl.supports(device, dtype, **signature):
        chosen = impl
    else:
        chosen = impls["reference"]
    refused = tuple((n, tuple(why)) for n in impls if n != chosen.backend)
    return Decision(op, chosen, device, dtype, forced, refused, "export")


def select(op: str, device: torch.device, dtype: torch.dtype, signature_of: Callable[[], dict] | None = None,
           **signature) -> Impl:
    """The implementation of ``op`` for this call (cached per key), remembered for :func:`last_path`.

    ``signature``: what the op's ``supports`` rules need to know about the call, as hashable values (sizes,
    flags such as ``needs_grad``), never tensors. ``signature_of``: a function returning more of it, called
    only in eager mode, for facts that must not be computed while a graph is captured (arithmetic on sizes
    there guards the graph on them: ``torch.export`` with a dynamic batch would refuse other batch sizes).
    """
    f = _forced.get()
    forced, strict = f if f is not None else _env_forced
    if is_capturing():
        if not is_tracing():  # torch.compile: decided afresh while dynamo traces, never recorded
            return decide(op, device, dtype, forced, strict, eager=False, **signature).impl
        d = _decide_export(op, device, dtype, forced, signature)
        if torch.compiler.is_compiling():  # torch.export: no side effect in the traced code
            return d.impl
    else:
        if signature_of is not None:
            signature.update(signature_of())
        return decision(op, device, dtype, forced, strict, **signature).impl
    _last[op] = d
    return d.impl


def forced_now() -> tuple[str | None, bool]:
    """``(backend, strict)`` forced for the calls made now: by :func:`use_backend`, else by ``ZOO_BACKEND``."""
    f = _forced.get()
    return f if f is not None else _env_forced


def decision(op: str, device: torch.device, dtype: torch.dtype, forced: str | None, strict: bool,
             **signature) -> Decision:
    """The cached eager :class:`Decision` of ``op`` for a call with this ``signature``, with ``forced, strict``
    from :func:`forced_now` (no graph capture may be under way: :func:`select` checks that), remembered for
    :func:`last_path`."""
    key = (op, device, dtype, forced, strict, *signature.items())
    d = _DECISIONS.get(key)
    if d is None:
        d = decide(op, device, dtype, forced, strict, **signature)
        if len(_DECISIONS) >= _DECISIONS_MAX:
            _DECISIONS.clear()
        _DECISIONS[key] = d
    _last[op] = d
    return d


def last_path(op: str) -> str | None:
    """The backend that ran the most recent call of ``op`` in this process (None if never called)."""
    d = _last.get(op)
    return None if d is None else d.impl.backend


def last_decision(op: str) -> Decision | None:
    """The :class:`Decision` of the most recent call of ``op`` (None if never called)."""
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
    """A human-readable report: which backends exist here, what is forced, what the validation record holds,
    and for the last call of each op which path ran and why each other path did not."""
    lines = [f"zoo.ops backends (torch {torch.__version__}, cuda={torch.cuda.is_available()}):"]
    for name, (ok, why) in backend_status().items():
        lines.append(f"  {name:<10} {'yes' if ok else 'no ':<4} {why}")
    f = _forced.get()
    forced, strict = f if f is not None else _env_forced
    src = "use_backend" if f is not None and forced is not None else f"ZOO_BACKEND={_env_raw!r}"
    lines.append(f"  forced: {forced_backend() or 'none (auto)'}" + (f" by {src}" if forced else "")
                 + (", strict" if strict else ""))
    records = validation_records()
    seen = sorted({f"{r['op']}/{r['backend']}/{r['arch']}/{r['dtype']}" for r in records})
    lines.append(f"  validation record ({VALIDATION_RECORD.name}): {len(records)} entries"
                 + (f": {', '.join(seen)}" if seen else f"; on CUDA the {'/'.join(GATED)} paths are opt-in"))
    lines.append("ops (registered paths; the last call):")
    for op, impls in sorted(_REGISTRY.items()):
        lines.append(f"  {op:<24} {','.join(impls)}")
        d = _last.get(op)
        if d is None:
            lines.append("    not called yet")
            continue
        for i, line in enumerate(d.describe().splitlines()):
            lines.append(("    " if i == 0 else "      ") + line)
    return "\n".join(lines)


_read_env()
_validated = _read_validated()
