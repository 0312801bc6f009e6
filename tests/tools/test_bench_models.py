"""tools/bench_models.py on a tiny setting: rows for inference and training (training after inference mode
used to fail for NAT), JSON written per model, --resume keeps what was measured."""

from __future__ import annotations

import json


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
    assert doc.with_suffix(".md").is_file() and doc.with_suffix(".png").is_file()
    assert tool.main(args + ["--resume"]) == 0
    assert "nat_nano: kept from" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == res["rows"]
    assert tool.main([a if a != "64" else "96" for a in args] + ["--resume"]) == 2  # other settings
