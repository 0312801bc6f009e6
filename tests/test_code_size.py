"""The size limits of docs/design.md's conventions: no source file of the package, the recipes or the tools above
600 lines, no function above 80 (a unit a newcomer can read in one sitting)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("zoo", "recipes", "tools") for p in (ROOT / d).rglob("*.py"))
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 80


def test_sources_are_found():
    assert len(SOURCES) > 50


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_and_function_sizes(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.name}: {text.count(chr(10))} lines; split it by concern"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions above {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
