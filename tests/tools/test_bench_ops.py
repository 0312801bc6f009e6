"""tools/bench_ops.py: a short run writes timings and CPU peak memory for every path that ran."""

from __future__ import annotations

import json

import torch


def test_peak_cpu_memory_counts_what_a_run_allocates(load_tool):
    tool = load_tool("bench_ops")
    x = torch.randn(512, 512)  # allocated before the run: not counted

    def two_buffers():
        a = x @ x  # 1 MiB
        b = a + 1  # 1 MiB more, both alive
        return b.sum()

    peak = tool._peak_cpu_mib(two_buffers, backward=False)
    assert 1.9 <= peak <= 2.5


def test_bench_ops_short_run(tmp_path, load_tool):
    tool = load_tool("bench_ops")
    out, md = tmp_path / "ops.json", tmp_path / "ops.md"
    tool.main(["--ops", "attention", "--repeats", "1", "--threads", "1", "--device", "cpu",
               "--out", str(out), "--md", str(md)])
    res = json.loads(out.read_text())
    paths = {(r["shape"], r["path"]) for r in res["results"]}
    assert {p for _, p in paths} == {"reference", "sdpa"}
    assert all(r["ms"] > 0 and r["peak_mib"] is not None and r["peak_mib"] > 0 for r in res["results"])
    assert "| peak MiB |" in md.read_text()
