"""Lightning recipes: classification, detection and segmentation over any timm backbone.

Shared pieces live in :mod:`recipes.common` (optimizer, callbacks, loggers, CLI) and
:mod:`recipes.checkpoint` (``load_model``). Task modules are imported on demand.
"""

from __future__ import annotations

__all__ = ["load_model"]


def load_model(path, map_location="cpu"):  # noqa: ANN001, ANN201 - thin lazy wrapper
    """See :func:`recipes.checkpoint.load_model`."""
    from recipes.checkpoint import load_model as _load

    return _load(path, map_location=map_location)
