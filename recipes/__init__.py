"""Lightning recipes: classification, detection and segmentation over any timm backbone.

Shared pieces live in :mod:`recipes.common` (optimizer, callbacks, loggers, CLI) and
:mod:`recipes.checkpoint` (``load_model``). Task modules are imported on demand.

In the repository this package is ``recipes``; the wheel installs it as ``zoo_recipes`` and makes ``recipes.*``
resolve to it (``recipes/_alias.py``), so configs and checkpoints that name ``recipes.<module>.<Class>`` work in
both. Its dependencies are the zoo's ``[train]`` extra.
"""

from __future__ import annotations

from zoo._extras import require_extra

from ._alias import alias

require_extra("train", "the recipes (zoo-train, zoo-demo, zoo-predict)", ("lightning", "torchmetrics"))
alias(__name__)

__all__ = ["load_model"]


def load_model(path, map_location="cpu"):  # noqa: ANN001, ANN201 - thin lazy wrapper
    """See :func:`recipes.checkpoint.load_model`."""
    from recipes.checkpoint import load_model as _load

    return _load(path, map_location=map_location)
