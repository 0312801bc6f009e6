"""tools/export_table.py: docs/onnx.md is exactly what the tool writes from docs/onnx.json, and a --workdir that
does not exist yet is made (it used to fail every model's export and write those failures into the table)."""

from __future__ import annotations

import json
from pathlib import Path

import zoo

ROOT = Path(__file__).resolve().parents[2]


def test_markdown_is_generated_from_the_json(load_tool, tmp_path):
    tool = load_tool("export_table")
    data = json.loads((ROOT / "docs" / "onnx.json").read_text())
    out = tmp_path / "onnx.md"
    tool.write_markdown(data["models"], zoo.list_models(), data["meta"], out, data.get("fashion_mnist"))
    assert out.read_text() == (ROOT / "docs" / "onnx.md").read_text()


def test_missing_workdir_is_created(load_tool, tmp_path):
    tool = load_tool("export_table")
    workdir = tmp_path / "not" / "yet"
    rc = tool.main(["--model", "none", "--workdir", str(workdir), "--json", str(tmp_path / "t.json"),
                    "--md", str(tmp_path / "t.md")])
    assert rc == 0 and workdir.is_dir()
    assert json.loads((tmp_path / "t.json").read_text())["models"] == {}
