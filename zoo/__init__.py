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


__all__ = ["layers", "list_models", "models", "ops", "__version__"]
