"""Where the zoo's files are: shipped in the installed package, or only in a source checkout.

Shipped (found the same from a checkout and from a pip-installed copy): the pretrained-weights manifest
(``weights/manifest.json``, installed as ``zoo/weights/manifest.json``) and the recipe configs
(``recipes/configs/*.yaml``, installed as ``zoo_recipes/configs``). Checkout only: the embedded data sets under
``data/`` (Fashion-MNIST subset, DeepForest tiles), which :func:`checkout_data` finds or explains.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

__all__ = ["CheckoutDataError", "checkout_data", "manifest_path", "recipe_config", "recipe_configs_dir"]

# the repository root when the zoo runs from a source checkout (site-packages when installed)
CHECKOUT = Path(__file__).resolve().parents[1]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def manifest_path() -> Path:
    """The copy installed inside the package (``zoo/weights/manifest.json``), else ``weights/manifest.json`` of
    the checkout."""
    installed = Path(str(importlib.resources.files("zoo").joinpath("weights", "manifest.json")))
    return installed if installed.is_file() else CHECKOUT / "weights" / "manifest.json"


def recipe_configs_dir() -> Path:
    """The folder of the recipe configs: the installed ``zoo_recipes/configs``, else ``recipes/configs`` of the
    checkout."""
    installed = _package_dir("zoo_recipes")
    if installed is not None and (installed / "configs").is_dir():
        return installed / "configs"
    return CHECKOUT / "recipes" / "configs"


def recipe_config(name: str) -> Path:
    """The shipped config ``name`` (``cls_fashion_mnist``, ``cls_fashion_mnist.yaml`` or
    ``recipes/configs/cls_fashion_mnist.yaml``); FileNotFoundError listing the shipped ones otherwise."""
    folder = recipe_configs_dir()
    stem = Path(name).name
    path = folder / (stem if stem.endswith((".yaml", ".yml")) else f"{stem}.yaml")
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise FileNotFoundError(f"no recipe config {name!r}; the shipped configs: {shipped}")
    return path


class CheckoutDataError(FileNotFoundError):
    """An embedded data set asked for where there is none: the package was installed without the repository."""


def checkout_data(*parts: str) -> Path:
    """``data/<parts>`` of the source checkout; from an installed copy (where the data sets are not shipped) a
    :class:`CheckoutDataError` saying so and what to do instead."""
    path = CHECKOUT.joinpath("data", *parts)
    if path.exists():
        return path
    raise CheckoutDataError(embedded_data_hint(path))


def embedded_data_hint(path: str | Path) -> str:
    """The message for a missing embedded data file ``path`` (``data/...`` of the repository)."""
    rel = "/".join(Path(path).parts[-3:])
    if (CHECKOUT / "pyproject.toml").is_file():
        return f"{path} is missing from this checkout: restore it with git (git checkout -- data/)"
    return (
        f"the embedded data set ({rel}) ships with the zoo's source repository, not with the installed package: "
        "run from a clone of the repository (`make demo`), or give your own data (an image folder, .npz or shards; "
        "see the README's 'Train on your own data')"
    )
