"""Fixtures of the recipe tests."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import yaml
from lightning.pytorch.utilities.warnings import PossibleUserWarning


@pytest.fixture
def cli_config(tmp_path: Path) -> Callable[..., Path]:
    """``cli_config(**trainer)`` -> ``tmp_path/cfg.yaml``, a LightningCLI config for ``tools/train.py``: a 2-step
    ``test_resnet`` classification run at 32 px on the embedded Fashion-MNIST subset (32 training images), on the
    CPU, into ``tmp_path/run``; ``trainer`` keys override or add trainer options (e.g. ``max_steps=1``)."""

    def write(**trainer) -> Path:
        config = {
            "trainer": {"default_root_dir": str(tmp_path / "run"), "accelerator": "cpu", "max_steps": 2,
                        "limit_val_batches": 1, "limit_test_batches": 1, "enable_model_summary": False, **trainer},
            "no_progress_bar": True,
            "model": {"class_path": "recipes.classification.ClassificationModule",
                      "init_args": {"model_name": "test_resnet", "num_classes": 10, "img_size": 32}},
            "data": {"class_path": "recipes.data.NpzData",
                     "init_args": {"num_classes": 10, "img_size": 32, "batch_size": 16, "eval_batch_size": 32,
                                   "num_workers": 0, "train_limit": 32}},
        }
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


class _Killed(RuntimeError):
    pass


class _KillAt(L.Callback):
    """Dies as the step after ``step`` starts, as a killed run: its last.ckpt is the one of step ``step`` (a
    graceful stop would end the epoch and save again)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise _Killed(f"killed at step {trainer.global_step}")


@pytest.fixture
def killed_and_resumed(tmp_path: Path) -> Callable[..., tuple]:
    """``run(make_module, make_trainer, make_data, steps, kill_at)`` -> ``(uninterrupted, resumed)`` modules:
    one run of ``steps`` steps, and one killed after step ``kill_at`` and resumed from its last.ckpt to
    ``steps``, each from ``seed_everything(0)``. ``make_trainer(root, max_steps)`` must checkpoint every step.
    Lightning's "dataloader is not resumable" warning fails the run."""

    def one(make_module, make_trainer, make_data, root: Path, steps: int, stop: int | None = None,
            ckpt: Path | None = None):
        L.seed_everything(0)
        module, trainer = make_module(), make_trainer(root, steps)
        if stop is not None:
            trainer.callbacks.append(_KillAt(stop))
        with warnings.catch_warnings(), pytest.raises(_Killed) if stop else contextlib.nullcontext():
            warnings.simplefilter("error", PossibleUserWarning)
            trainer.fit(module, datamodule=make_data(), ckpt_path=None if ckpt is None else str(ckpt))
        assert trainer.global_step == (stop or steps)
        return module

    def run(make_module, make_trainer, make_data, steps: int, kill_at: int) -> tuple:
        made = (make_module, make_trainer, make_data)
        whole = one(*made, tmp_path / "whole", steps)
        one(*made, tmp_path / "cut", steps, stop=kill_at)
        return whole, one(*made, tmp_path / "cut", steps, ckpt=tmp_path / "cut" / "checkpoints" / "last.ckpt")

    return run
