"""tools/demo.py run-folder handling: user files survive, another run is refused (unless --overwrite, which deletes
only what that run wrote), a folder in use is locked, and --resume takes the run's settings from its checkpoint.
Tiny runs: test_resnet, 32 train images, 1 epoch, no export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--model", "test_resnet", "--epochs", "1", "--train-limit", "32", "--batch-size", "16", "--workers", "0",
        "--threads", "1", "--no-export"]


@pytest.fixture
def demo(load_tool):
    return load_tool("demo")


def _user_files(out: Path) -> dict[Path, bytes]:
    files = {out / "notes.txt": b"my notes", out / "data" / "keep.bin": b"\x00\x01", out / "best.onnx": b"mine"}
    for p, b in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b)
    return files


def test_user_files_survive_and_a_second_run_is_refused(tmp_path, demo):
    out = tmp_path / "out"
    files = _user_files(out)
    demo.main([*TINY, "--out", str(out)])
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts
    assert set(json.loads((out / ".zoo-run.json").read_text())["created"]) >= {"checkpoints", "logs", "metrics.json"}
    assert all(p.read_bytes() == b for p, b in files.items())

    with pytest.raises(SystemExit, match="holds another run.*--overwrite"):  # would destroy the first run
        demo.main([*TINY, "--out", str(out)])
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == ckpts

    (out / "checkpoints" / "last.ckpt").write_bytes(b"stale")
    demo.main([*TINY, "--out", str(out), "--overwrite"])  # replaces the run, and only the run
    assert (out / "checkpoints" / "last.ckpt").stat().st_size > 1000
    assert all(p.read_bytes() == b for p, b in files.items())


def test_output_names_no_run_recorded_are_not_deleted(tmp_path, demo):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "mine.ckpt").write_bytes(b"user checkpoint")
    (out / "metrics.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="checkpoints, metrics.json, which no zoo run recorded"):
            demo.main([*TINY, "--out", str(out), *extra])
    assert (out / "checkpoints" / "mine.ckpt").read_bytes() == b"user checkpoint"
    assert (out / "metrics.json").read_text() == "{}"


def test_folder_in_use_is_refused(tmp_path, demo):
    out = tmp_path / "out"
    holder = subprocess.Popen(  # another run: holds the lock until it is told to stop
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import importlib.util as u; "
         "s = u.spec_from_file_location('d', sys.argv[1] + '/tools/demo.py'); m = u.module_from_spec(s); "
         "s.loader.exec_module(m); from pathlib import Path; lock = m.lock_out(Path(sys.argv[2])); print('locked', "
         "flush=True); sys.stdin.read()", str(Path(demo.__file__).parents[1]), str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=rf"another run \(pid {holder.pid}\) is using this folder"):
            demo.main([*TINY, "--out", str(out)])
        assert not (out / "checkpoints").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    demo.lock_out(out).close()  # free again once the holder is gone


def test_resume_takes_the_settings_from_the_checkpoint(tmp_path, demo, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="nothing to resume"):
        demo.main(["--out", str(out), "--resume", "--no-export"])
    demo.main([*TINY, "--out", str(out), "--lr", "0.01"])
    capsys.readouterr()
    demo.main(["--out", str(out), "--resume", "--no-export", "--workers", "0", "--threads", "1"])  # no --model
    printed = capsys.readouterr().out
    assert "zoo demo: test_resnet" in printed and "lr 0.01" in printed and "1 epochs" in printed
    with pytest.raises(SystemExit, match=r"--model 'nat_nano' \(the run has 'test_resnet'\)"):
        demo.main(["--out", str(out), "--resume", "--model", "nat_nano"])


def test_unreadable_training_data_ends_with_one_clear_line(tmp_path, demo):
    """A folder whose every image is unreadable stops the run with the data error as one line (SystemExit with
    the message), not a traceback or 'trained 0 steps' and a score."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = data / split / cls
            d.mkdir(parents=True)
            for i in range(4):
                (d / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exc:
        demo.main([*TINY, "--data", str(data), "--out", str(tmp_path / "out")])
    msg = str(exc.value.code)
    assert msg.startswith("error: ") and "skipped" in msg and "train" in msg, msg
    assert "\n" not in msg.strip() or len(msg.splitlines()) < 15, msg
