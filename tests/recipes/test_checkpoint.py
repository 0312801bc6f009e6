"""recipes.checkpoint + the checkpoint I/O of recipes.common: no code runs while loading a checkpoint, a file
that is no checkpoint is called unreadable, a full disk leaves no temp file and says so, and a resume with no or
a corrupt checkpoint says what it does instead of starting over."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import zoo
from recipes.checkpoint import NothingToResumeError, load_model, read_recipe_checkpoint, resume_checkpoint
from recipes.classification import ClassificationModule
from recipes.common import AtomicCheckpointIO, CheckpointWriteError, default_callbacks
from recipes.data import NpzData


class _CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: stands for any code a crafted checkpoint could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _fit(root: Path, max_steps: int = 2, **trainer_kw) -> pl.Trainer:
    pl.seed_everything(0)
    dm = NpzData(num_classes=10, img_size=32, batch_size=16, eval_batch_size=32, num_workers=0, train_limit=32)
    cbs = default_callbacks(root, every_n_train_steps=1, monitor="val/acc1", mode="max", progress_bar=False,
                            lr_monitor=False)
    trainer = pl.Trainer(default_root_dir=root, max_steps=max_steps, limit_val_batches=1, callbacks=cbs,
                         logger=False, plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, **trainer_kw)
    trainer.fit(ClassificationModule("test_resnet", num_classes=10, img_size=32), dm)
    return trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-step recipe run (test_resnet, 32 px): checkpoints/last.ckpt + best-*.ckpt."""
    root = tmp_path_factory.mktemp("run")
    _fit(root)
    return root


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(run_dir / "checkpoints", tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


# ---------------------------------------------------------------------------------------------- item 1: no pickle


def test_recipe_checkpoint_loads_with_weights_only(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["task"] == "classification"
    model, info = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert info["model_name"] == "test_resnet" and not model.training


def test_crafted_checkpoint_runs_no_code(tmp_path, monkeypatch, load_tool):
    monkeypatch.delenv("ZOO_ALLOW_PICKLE", raising=False)
    marker = tmp_path / "pwned"
    bad = tmp_path / "crafted.ckpt"
    torch.save({"hyper_parameters": {"task": "classification", "model_name": "test_resnet"},
                "state_dict": {}, "payload": _CreatesFile(marker)}, bad)
    with pytest.raises(ValueError, match=r"pickled Python objects \(io\.open\).*ZOO_ALLOW_PICKLE=1"):
        load_model(bad)
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickled Python objects"):  # what Lightning's resume/test loads through
        AtomicCheckpointIO().load_checkpoint(bad)
    assert not marker.exists()
    # the export CLI (and the main job's export step) fails with the message instead of running the payload
    assert load_tool("export").main([str(bad), "-o", str(tmp_path / "m.onnx")]) == 1
    assert not marker.exists()
    # the explicit opt-in still works for a file the user trusts
    with zoo.models.allow_pickle():
        read_recipe_checkpoint(bad)
    assert marker.exists()


# seeds 0 and 2 of random.Random(seed).randbytes(4096) make torch's unpickler raise UnpicklingError and
# IndexError; tests/models/test_pretrained.py sweeps 400 seeds through read_checkpoint
@pytest.mark.parametrize("kind", ["random0", "random2", "truncated", "empty"])
def test_unreadable_file_is_called_unreadable(tmp_path, run_dir, kind, monkeypatch):
    import random

    monkeypatch.delenv("ZOO_ALLOW_PICKLE", raising=False)
    path = tmp_path / "x.ckpt"
    good = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    data = {"truncated": good[: len(good) // 2], "empty": b""}
    path.write_bytes(random.Random(int(kind[-1])).randbytes(4096) if kind.startswith("random") else data[kind])
    with pytest.raises(ValueError, match="unreadable as a checkpoint") as err:
        load_model(path)
    assert "ZOO_ALLOW_PICKLE" not in str(err.value) and "pickled Python objects" not in str(err.value)
    with pytest.raises(ValueError, match="unreadable as a checkpoint"):
        zoo.models.read_checkpoint(path)


# ----------------------------------------------------------------------------------- item 5: disk full, resume


class _FullDisk(io.FileIO):
    """A file whose writes fail with ENOSPC once ``room`` bytes were written."""

    room = 4096

    def write(self, b) -> int:
        if self.tell() + len(memoryview(b)) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def _full_disk(monkeypatch, room: int = 4096) -> None:
    import recipes.common

    def fake_open(path, mode="r", *args, **kw):
        if "w" in mode and ".partial" in str(path):
            return _FullDisk(path, "wb")
        return open(path, mode, *args, **kw)

    monkeypatch.setattr(_FullDisk, "room", room)
    monkeypatch.setattr(recipes.common, "open", fake_open, raising=False)


def test_disk_full_removes_the_temp_file_and_says_so(tmp_path, monkeypatch):
    cio = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    cio.save_checkpoint({"w": torch.ones(8)}, path)
    before = path.read_bytes()
    _full_disk(monkeypatch)
    with pytest.raises(CheckpointWriteError, match=f"disk full while writing {path}") as err:
        cio.save_checkpoint({"w": torch.zeros(100_000)}, path)
    assert err.value.errno == errno.ENOSPC
    assert not (path.parent / ".partial").exists() or not list((path.parent / ".partial").iterdir())
    assert path.read_bytes() == before  # the previous checkpoint is intact


def test_disk_full_during_training_ends_with_the_clear_error(tmp_path, monkeypatch):
    _full_disk(monkeypatch, room=1 << 16)  # test_resnet's checkpoint is ~ 1 MB
    with pytest.raises(CheckpointWriteError, match=r"disk full while writing .*\.ckpt"):
        _fit(tmp_path, max_steps=1)
    partial = tmp_path / "checkpoints" / ".partial"
    assert not partial.exists() or not list(partial.iterdir())


def test_temp_file_of_a_killed_writer_is_removed_at_the_next_save(tmp_path):
    partial = tmp_path / ".partial"
    partial.mkdir()
    dead = partial / "last.ckpt.999999999"  # no such pid
    dead.write_bytes(b"x" * 100)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert not dead.exists()


def test_nothing_to_resume_is_an_error(tmp_path):
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(NothingToResumeError, match="nothing to resume"):
        resume_checkpoint(ckpts)
    (ckpts / ".partial").mkdir(parents=True)  # the first write was killed: only a temp file
    (ckpts / ".partial" / "last.ckpt.12345").write_bytes(b"\x00" * 64)
    with pytest.raises(NothingToResumeError, match="first checkpoint write"):
        resume_checkpoint(ckpts)


def test_corrupt_last_falls_back_to_newest_intact(tmp_path, run_dir):
    ckpts = _copy_run(run_dir, tmp_path)
    best = next(ckpts.glob("best-*.ckpt"))
    last = ckpts / "last.ckpt"
    assert resume_checkpoint(ckpts) == last
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"resuming from .*best-.*last\.ckpt: .*unreadable"):
        assert resume_checkpoint(ckpts) == best
    best.write_bytes(b"garbage")
    with pytest.raises(NothingToResumeError, match="last.ckpt.*unreadable"):
        resume_checkpoint(ckpts)


def test_cli_fit_ckpt_path_last_without_checkpoint_refuses(tmp_path, load_tool, cli_config):
    cfg = cli_config(max_steps=1)  # into tmp_path/run
    with pytest.raises(NothingToResumeError, match="nothing to resume"):
        load_tool("train").main(["fit", "--config", str(cfg), "--ckpt_path", "last"])
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # it did not train from scratch
