"""The optional dependencies (pyproject extras): a missing one is reported with the extra that installs it."""

from __future__ import annotations

import importlib.util

# extra -> the modules it brings that the code imports
EXTRAS = {
    "train": ("lightning", "torchmetrics", "webdataset", "segmentation_models_pytorch", "pycocotools", "torchdata",
              "tensorboard", "matplotlib"),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "natten": ("natten",),
}


class MissingExtraError(ModuleNotFoundError):
    """A module of an optional extra is not installed; the message names ``pip install 'zoo[<extra>]'``."""


def extra_of(module: str | None) -> str | None:
    """The extra that installs ``module`` (its top-level name decides), or None."""
    top = (module or "").split(".", 1)[0]
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


def message(extra: str, modules: list[str], what: str) -> str:
    return (f"{what} needs {', '.join(modules)}, from the zoo's [{extra}] extra: pip install 'zoo[{extra}]' "
            f"(or `make setup` in a checkout)")


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`MissingExtraError` naming the extra when any of its ``modules`` (default: all) is missing."""
    gone = [m for m in (modules or EXTRAS[extra]) if importlib.util.find_spec(m) is None]
    if gone:
        raise MissingExtraError(message(extra, gone, what), name=gone[0])


def explain_missing(err: ModuleNotFoundError) -> str | None:
    """The pip line for a ModuleNotFoundError of a module that an extra installs (None for any other)."""
    if isinstance(err, MissingExtraError):
        return str(err)
    extra = extra_of(err.name)
    return message(extra, [err.name.split(".", 1)[0]], "this command") if extra else None
