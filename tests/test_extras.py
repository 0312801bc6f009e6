"""zoo/_extras.py knows every import an extra of pyproject installs, and names the extra when one is missing."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import tomllib

from zoo._extras import EXTRAS, MissingExtraError, explain_missing, extra_of, require_extra

ROOT = Path(__file__).resolve().parents[1]


def _requirements(extra: str) -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    return [re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0] for d in deps]


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_every_distribution_of_an_extra_has_its_import_listed(extra):
    """Each distribution in pyproject's extra provides at least one top-level module listed in EXTRAS[extra]
    (a dependency added to pyproject but not here would fail with a bare ModuleNotFoundError)."""
    provided = importlib.metadata.packages_distributions()  # top-level module -> distributions
    for dist in _requirements(extra):
        norm = dist.lower().replace("-", "_")
        modules = {m for m, ds in provided.items() if norm in {d.lower().replace("-", "_") for d in ds}}
        if not modules and extra == "natten":
            pytest.skip("natten is optional and not installed here (it needs CUDA to build)")
        if not modules:
            raise AssertionError(f"{dist} of [{extra}] is not installed: make setup installs every extra but natten")
        assert modules & set(EXTRAS[extra]), f"[{extra}] installs {dist} ({sorted(modules)}); none is in EXTRAS"


def test_a_missing_module_names_its_extra():
    assert extra_of("torchdata.stateful_dataloader") == "train"
    assert extra_of("onnxruntime") == "export"
    assert extra_of("numpy") is None
    with pytest.raises(MissingExtraError, match=r"pip install 'zoo\[train\]'") as err:
        require_extra("train", "the test", modules=("zoo_no_such_module_for_the_test",))
    assert err.value.name == "zoo_no_such_module_for_the_test"
    assert "zoo[export]" in explain_missing(ModuleNotFoundError("x", name="onnx.helper"))
    assert explain_missing(ModuleNotFoundError("x", name="no_such_module")) is None
