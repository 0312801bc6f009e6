"""Fixtures of the recipe tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml


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
