"""zoo: vision backbones with multi-scale attention, registered in timm.

``import zoo`` registers every family with timm; then ``timm.create_model("biformer_tiny")`` works.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import layers, models, ops  # noqa: E402


def list_models(pattern: str = "*") -> list[str]:
    """Names of the timm models this package registers (optionally filtered by a glob pattern)."""
    import fnmatch

    import timm
    from timm.models import model_entrypoint

    names = [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("zoo.")]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def check_model_name(name: str) -> str:
    """Return ``name`` if timm knows it (with or without a pretrained tag), else raise a ValueError that
    lists the closest registered names."""
    import difflib

    import timm

    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return name
    close = difflib.get_close_matches(arch, list_models(), n=5, cutoff=0.6)
    close += [n for n in difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.75) if n not in close]
    hint = f"; close names: {', '.join(close[:6])}" if close else "; see zoo.list_models() for the zoo's names"
    raise ValueError(f"unknown model {name!r}{hint}")


def create_model(name: str, **kwargs):
    """``timm.create_model`` with a clear error (close names) for an unknown model name."""
    import timm

    return timm.create_model(check_model_name(name), **kwargs)


__all__ = ["check_model_name", "create_model", "layers", "list_models", "models", "ops", "__version__"]
