"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
