"""tools/bench_cpu.py (side-by-side CPU ratios) and tools/timm_benchmark.py (timm's benchmark.py with the zoo's
models): the timing loop, the tables written into the doc, one real efficiency row, and the launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import bench_cpu, timm_benchmark

ROOT = Path(__file__).resolve().parents[2]


def test_interleaved_calls_each_runner_once_per_round_after_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = bench_cpu.interleaved(fns, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())


def _result(rows_key, rows):
    machine = {"processor": "cpu-x", "platform": "p", "cpu_count": 2, "torch": "t", "timm": "m", "onnxruntime": "o"}
    return {"machine": machine, "settings": {"repeats": 5, "warmup": 2, "load_start": 0.1}, "load_end": 0.2,
            "started": "2026-12-03 22:00 UTC", rows_key: rows}


EFF_ROW = {"model": "nat_mini", "threads": 1, "batch": 8, "gmacs": 2.7, "seconds": {"zoo": 0.5, "convnext": 0.4,
           "onnxruntime": 0.25}, "time_vs_convnext": 1.25, "per_gmac_vs_convnext": 2.06, "eager_over_ort": 2.0,
           "exporter": "torchscript"}


def test_write_doc_replaces_only_between_markers(tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text("# prose before\n<!-- bench_cpu:efficiency -->\nold\n<!-- /bench_cpu:efficiency -->\nmiddle\n"
                   "<!-- bench_cpu:onnxruntime -->\n<!-- /bench_cpu:onnxruntime -->\nafter\n")
    written = bench_cpu.write_doc(doc, [_result("efficiency", [EFF_ROW])])
    text = doc.read_text()
    assert written == ["efficiency", "onnxruntime"]
    assert text.startswith("# prose before\n") and "\nmiddle\n" in text and text.endswith("after\n")
    assert "old" not in text
    assert "| `nat_mini` | 1 | 8 | 2.70 | 500 | 400 | 1.25 | 2.06 |" in text
    assert "| `nat_mini` | 1 | 8 | 500 | 250 | 2.00 | torchscript |" in text
    assert "load average at start 0.1, at end 0.2" in text
    bench_cpu.write_doc(doc, [_result("efficiency", [EFF_ROW])])
    assert doc.read_text() == text  # rewriting is idempotent


def test_write_doc_without_markers_says_where_the_table_goes(tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text("no markers here\n")
    with pytest.raises(ValueError, match="bench_cpu:compile"):
        bench_cpu.write_doc(doc, [_result("compile", [{"model": "m", "threads": 1, "batch": 1, "seconds": {
            "eager": 1.0, "compiled": 0.5}, "speedup": 2.0, "compile_s": 30.0, "graphs": 1, "graph_breaks": 0}])])


def test_efficiency_row_is_measured_side_by_side(tmp_path):
    """One real row: the per-GMAC ratio is the time ratio scaled by the GMACs, from the same run's medians."""
    out = tmp_path / "r.json"
    assert bench_cpu.main(["--sections", "efficiency", "--models", "agent_pvt_t", "--threads", "1", "--batch", "1",
                           "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["efficiency"]
    s = row["seconds"]
    assert row["time_vs_convnext"] == pytest.approx(s["zoo"] / s["convnext"])
    assert row["per_gmac_vs_convnext"] == pytest.approx(row["time_vs_convnext"] * row["baseline_gmacs"] / row["gmacs"])
    assert 1.5 < row["gmacs"] < 2.5 and 4.0 < row["baseline_gmacs"] < 5.0  # agent_pvt_t 2.0, ConvNeXt-T 4.5 GMACs


def test_unknown_section_is_refused():
    with pytest.raises(SystemExit):
        bench_cpu.main(["--sections", "gpu"])


def test_timm_benchmark_launcher_registers_the_zoo_first(tmp_path):
    script = tmp_path / "benchmark.py"
    script.write_text("import sys, timm\nprint('zoo registered:', timm.is_model('biformer_tiny'), sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "timm_benchmark.py"), str(script), "--model", "x"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "zoo registered: True ['--model', 'x']" in proc.stdout


def test_timm_benchmark_launcher_says_where_the_script_comes_from(capsys):
    assert timm_benchmark.main(["--model", "x"]) == 2
    assert "pytorch-image-models" in capsys.readouterr().err
