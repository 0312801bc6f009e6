"""tools/bench_models.py on a tiny setting: rows for inference and training (training after inference mode
used to fail for NAT), JSON written per model, --resume keeps what was measured."""

from __future__ import annotations

import json

import pytest


def test_bench_models_tiny_run_and_resume(tmp_path, capsys, load_tool):
    tool = load_tool("bench_models")
    out, doc = tmp_path / "b.json", tmp_path / "b"
    args = ["--models", "nat_nano", "--batch", "1", "--img-size", "64", "--repeats", "1", "--warmup", "1",
            "--train", "--no-context", "--threads", "1", "--out", str(out), "--doc", str(doc)]
    assert tool.main(args) == 0
    res = json.loads(out.read_text())
    assert res["errors"] == {}
    kinds = {(r["runner"], r["kind"]) for r in res["rows"]}
    assert kinds == {(a, b) for a in ("zoo default", "zoo reference") for b in ("infer", "train")}
    assert all(r["img_per_s"] > 0 and r["gmacs"] > 0 for r in res["rows"])
    # every row's peak memory is real (it used to read 0 after an earlier, larger step): a training step
    # allocates more than an inference step of the same runner
    peak = {(r["runner"], r["kind"]): r["peak_mem_mb"] for r in res["rows"]}
    assert all(v is not None and v > 0 for v in peak.values()), peak
    assert all(peak[(a, "train")] > peak[(a, "infer")] for a in ("zoo default", "zoo reference")), peak
    assert "| — |" not in doc.with_suffix(".md").read_text()
    assert doc.with_suffix(".md").is_file() and doc.with_suffix(".png").is_file()
    assert tool.main(args + ["--resume"]) == 0
    assert "nat_nano: kept from" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == res["rows"]
    assert tool.main([a if a != "64" else "96" for a in args] + ["--resume"]) == 2  # other settings


def test_bench_models_merge_parts(tmp_path, load_tool):
    """Parts run at once (one per core) merge into one table in model order; other settings or overlapping
    models are refused."""
    tool = load_tool("bench_models")
    a = tmp_path / "a.json"
    args = ["--models", "nat_nano", "--batch", "1", "--img-size", "64", "--repeats", "1", "--warmup", "1",
            "--no-context", "--threads", "1", "--out", str(a), "--doc", str(tmp_path / "a")]
    assert tool.main(args) == 0
    part_b = json.loads(a.read_text())
    for r in part_b["rows"]:
        r["model"] = "maxvit_nano"  # a model that comes first in the default order
    part_b["settings"]["models"] = "maxvit_nano"
    part_b["settings"]["merge"] = None  # files written while --merge leaked into the settings still merge
    b = tmp_path / "b.json"
    b.write_text(json.dumps(part_b))
    out, doc = tmp_path / "m.json", tmp_path / "m"
    assert tool.main(["--merge", str(a), str(b), "--out", str(out), "--doc", str(doc)]) == 0
    merged = json.loads(out.read_text())
    assert [r["model"] for r in merged["rows"]] == ["maxvit_nano"] * 2 + ["nat_nano"] * 2
    assert [r["part"] for r in merged["rows"]] == [1, 1, 0, 0]
    assert merged["settings"]["models"] == "maxvit_nano,nat_nano" and merged["machine"]["parts"] == 2
    assert "Merged from 2 runs" in doc.with_suffix(".md").read_text() and doc.with_suffix(".png").is_file()
    assert tool.main(["--merge", str(a), str(a), "--out", str(out)]) == 2  # same model twice
    part_b["settings"]["img_size"] = 96
    b.write_text(json.dumps(part_b))
    assert tool.main(["--merge", str(a), str(b), "--out", str(out)]) == 2  # other settings
    assert json.loads(out.read_text()) == merged  # a refused merge writes nothing


def test_bench_models_peaks_are_per_model_in_fresh_processes(tmp_path, load_tool):
    """A small model measured after a larger one gets its own peak (each row's step runs in a fresh child
    process), the same as when it is measured alone; the larger model's peak is larger."""
    tool = load_tool("bench_models")

    def peaks(models, name):
        out = tmp_path / f"{name}.json"
        args = ["--models", models, "--batch", "1", "--img-size", "64", "--repeats", "1", "--warmup", "1",
                "--no-context", "--no-reference", "--threads", "1", "--out", str(out), "--doc", str(tmp_path / name)]
        assert tool.main(args) == 0
        return {r["model"]: r["peak_mem_mb"] for r in json.loads(out.read_text())["rows"]}

    both = peaks("biformer_small,nat_nano", "both")  # the larger model first
    alone = peaks("nat_nano", "alone")
    assert both["biformer_small"] > both["nat_nano"] > 0, both
    assert abs(both["nat_nano"] - alone["nat_nano"]) <= 0.25 * alone["nat_nano"] + 2, (both, alone)
    spec = {"model": "nat_nano", "backend": None, "kind": "infer", "batch": 1, "size": [64, 96], "threads": 1}
    res = tool.measure_in_child(spec)  # non-square input, as the routed-attention figures of docs/bench_cpu.md
    assert res["peak_bytes"] > 0 and res["process_peak_rss_bytes"] > res["peak_bytes"] and len(res["seconds"]) == 1


def test_bench_models_memory_only_refreshes_the_peak_column(tmp_path, load_tool, monkeypatch):
    """--memory-only re-measures each row's peak in a fresh child (rows that predate the child method show '—'
    and get a real figure), leaves the timings alone, says so in the table, and --resume skips refreshed rows."""
    tool = load_tool("bench_models")
    out, doc = tmp_path / "m.json", tmp_path / "m"
    args = ["--models", "nat_nano", "--batch", "1", "--img-size", "64", "--repeats", "1", "--warmup", "1",
            "--train", "--no-context", "--threads", "1", "--out", str(out), "--doc", str(doc)]
    assert tool.main(["--memory-only"] + args) == 2  # nothing to refresh yet
    assert tool.main(args) == 0
    stale = json.loads(out.read_text())
    for r in stale["rows"]:  # as a row of the earlier, process-wide method
        r.update(peak_mem_mb=0.0, peak_mem_method=None)
    out.write_text(json.dumps(stale))
    tool.main(["--doc", str(doc), "--out", str(out), "--merge", str(out)])
    assert "| — |" in doc.with_suffix(".md").read_text()
    assert tool.main(["--memory-only", "--out", str(out), "--doc", str(doc)]) == 0
    fresh = json.loads(out.read_text())
    peak = {(r["runner"], r["kind"]): r["peak_mem_mb"] for r in fresh["rows"]}
    assert all(v > 0 for v in peak.values()) and peak[("zoo default", "train")] > peak[("zoo default", "infer")]
    assert [r["median_s"] for r in fresh["rows"]] == [r["median_s"] for r in stale["rows"]]
    table = doc.with_suffix(".md").read_text()
    assert "| — |" not in table and "re-measured on its own" in table
    calls = []
    monkeypatch.setattr(tool, "measure_in_child", lambda spec: calls.append(spec) or {"peak_bytes": 2**20})
    assert tool.main(["--memory-only", "--resume", "--out", str(out), "--doc", str(doc)]) == 0
    assert calls == []  # every row was refreshed already
    assert tool.main(["--memory-only", "--out", str(out), "--doc", str(doc)]) == 0
    assert {(s["model"], s["backend"], s["kind"], s["threads"]) for s in calls} == {
        ("nat_nano", b, k, 1) for b in (None, "reference") for k in ("infer", "train")}
    # a part measured later merged with a refreshed result: the note says which rows the refresh covers
    refreshed = json.loads(out.read_text())
    later = json.loads(out.read_text())
    for r in later["rows"]:
        r.update(model="nat_mini", peak_mem_refreshed=None)
    later.pop("memory_refreshed")
    (tmp_path / "a.json").write_text(json.dumps(refreshed))
    (tmp_path / "b.json").write_text(json.dumps(later))
    assert tool.main(["--out", str(out), "--doc", str(doc), "--merge", str(tmp_path / "a.json"),
                      str(tmp_path / "b.json")]) == 0
    assert json.loads(out.read_text())["memory_refreshed"] == refreshed["memory_refreshed"]
    assert "The peak column of 4 of the 8 rows (the others: measured in their own run) was re-measured" in (
        doc.with_suffix(".md").read_text())


def test_child_spec_of_a_timm_runner_builds_timm_architecture(load_tool):
    tool = load_tool("bench_models")
    row = {"model": "maxvit_tiny", "runner": "timm maxvit_tiny_tf_224", "kind": "train", "batch": 8, "img_size": 224}
    spec = tool._child_spec(row, {"device": "cpu", "dtype": "fp32", "threads": None}, {"threads": 2})
    assert spec["model"] == "maxvit_tiny_tf_224" and spec["backend"] is None and spec["threads"] == 2
    with pytest.raises(ValueError, match="unknown runner"):
        tool._child_spec(dict(row, runner="onnxruntime"), {}, {})
