"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``) each worker gets an equal share of the cores for torch's
    intra-op threads, so two workers on two cores do not fight over four threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (a folder of scripts, not a package) as the module ``tools_<name>``."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool("export")`` -> the module of ``tools/export.py``, to call its ``main(argv)`` in-process."""
    return _load_tool


@pytest.fixture(scope="session")
def make_scenes(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """``make_scenes(n_train, n_val)`` -> a folder of 64 px scenes composited from the embedded Fashion-MNIST
    items (1-3 per scene; COCO boxes and masks), seed 0. Missing data fails the test (never a skip): the
    subset ``data/fashion_mnist/fashion_mnist_subset.npz`` is tracked in the repository."""
    from recipes.data.composite import SceneConfig, load_fashion_mnist, write_scenes

    def make(n_train: int, n_val: int) -> Path:
        try:
            fmnist = load_fashion_mnist()
        except FileNotFoundError as err:
            pytest.fail(
                f"make_scenes: the embedded Fashion-MNIST subset is missing ({err}). It ships in the repository "
                f"as {ROOT / 'data' / 'fashion_mnist' / 'fashion_mnist_subset.npz'}: restore it with "
                "`git checkout -- data/fashion_mnist` (rebuild: tools/fashion_mnist_subset.py)",
                pytrace=False,
            )
        root = tmp_path_factory.mktemp("scenes")
        cfg = SceneConfig(size=64, max_items=3, max_scale=1.5)
        write_scenes(root, n_train, n_val, seed=0, cfg=cfg, fashion_mnist=fmnist)
        return root

    return make


@pytest.fixture(scope="session")
def parity_model() -> Callable[[dict], object]:
    """``parity_model(case)`` -> the zoo model for an official-parity case (``tests/parity_models.py``: test
    glue, kept out of the family modules)."""
    spec = importlib.util.spec_from_file_location("parity_models", ROOT / "tests" / "parity_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parity_model
