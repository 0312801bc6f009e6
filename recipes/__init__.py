"""Lightning recipes: classification, detection and segmentation over any timm backbone.

Shared pieces live one per concern in :mod:`recipes.optimization`, :mod:`recipes.callbacks`,
:mod:`recipes.loggers`, :mod:`recipes.skips`, :mod:`recipes.seeding`, :mod:`recipes.cli`,
:mod:`recipes.checkpoint` (``load_model``), :mod:`recipes.deploy` and :mod:`recipes.run_folder`;
:mod:`recipes.common` re-exports them. Task modules are imported on demand.

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
