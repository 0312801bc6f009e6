"""The model table (docs/models.md) is generated and up to date, and the README links it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_model_table_up_to_date(load_tool):
    assert load_tool("model_table").main(["--check"]) == 0, "run `python tools/model_table.py`"


def test_every_registered_model_has_a_row():
    import zoo

    text = (ROOT / "docs" / "models.md").read_text()
    missing = [name for name in zoo.list_models() if f"| `{name}` |" not in text]
    assert not missing, f"not in docs/models.md: {missing}"


def test_readme_links_the_model_table_instead_of_holding_it():
    readme = (ROOT / "README.md").read_text()
    assert "docs/models.md" in readme
    assert "| `nat_mini` |" not in readme, "the full table lives in docs/models.md"
