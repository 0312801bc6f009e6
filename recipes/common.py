"""Shared recipe infrastructure, one module per concern, all of it importable from here as before:

- :mod:`recipes.optimization`: ``RecipeModule`` (LightningModule base: subclasses keep the network at
  ``self.model``, save ``task`` among their hparams, set ``monitor``/``monitor_mode`` and get
  ``configure_optimizers``: AdamW + warmup/cosine, no weight decay on norms/biases/``no_weight_decay()``),
  ``build_param_groups`` / ``build_optimizer`` / ``cosine_warmup_scheduler`` (torch's schedulers) /
  ``adamw_cosine`` / ``total_training_steps``.
- :mod:`recipes.callbacks`: ``default_callbacks(root_dir, ...)``: best + last checkpoint at epoch end,
  ``last.ckpt`` every N steps, rich progress bar, LR monitor, ``SkippedSamplesLogger``, ``FinalMetrics`` (metrics
  JSON + curves PNG), ``StepSeeding``, ``ValidateAtMaxSteps``.
- :mod:`recipes.loggers`: ``default_loggers(root_dir)``: CSV (appends on resume) + TensorBoard under
  ``<root_dir>/logs``; ``read_csv_log``, ``plot_curves``, ``find_run_files``.
- :mod:`recipes.skips`: ``SkipCounter`` (skipped bad samples recorded once per sample with reasons, shared with
  DataLoader workers; a datamodule exposes it as ``skip_counter``) and ``DataSkipError``.
- :mod:`recipes.seeding`: ``derived_seed``, ``seeded_rngs``, ``SeededItems``, ``StepSeeding`` (a resumed run
  draws what the uninterrupted one drew).
- :mod:`recipes.cli`: ``RecipeCLI``, LightningCLI that adds all of the above unless the config sets its own.
- here: ``AtomicCheckpointIO``: checkpoints are written to a temp file and renamed, so a kill never leaves a
  corrupt ``last.ckpt``; ``CheckpointWriteError`` when the disk is full. Reading checkpoints is
  ``recipes.checkpoint``'s.

Layout of a run directory (``trainer.default_root_dir``)::

    checkpoints/last.ckpt, checkpoints/best-*.ckpt
    logs/metrics.csv, logs/hparams.yaml, logs/tb/events.*
    metrics.json, curves.png
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from recipes.callbacks import FinalMetrics, SkippedSamplesLogger, ValidateAtMaxSteps, default_callbacks
from recipes.cli import RecipeCLI
from recipes.loggers import ResumableCSVLogger, default_loggers, find_run_files, plot_curves, read_csv_log
from recipes.optimization import (
    RecipeModule,
    adamw_cosine,
    build_optimizer,
    build_param_groups,
    cosine_warmup_scheduler,
    no_weight_decay_names,
    total_training_steps,
)
from recipes.seeding import SeededItems, StepSeeding, derived_seed, seeded_rngs
from recipes.skips import DataSkipError, SkipCounter, skip_summary

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "DataSkipError",
    "FinalMetrics",
    "RecipeCLI",
    "RecipeModule",
    "ResumableCSVLogger",
    "SeededItems",
    "SkipCounter",
    "SkippedSamplesLogger",
    "StepSeeding",
    "ValidateAtMaxSteps",
    "adamw_cosine",
    "build_optimizer",
    "build_param_groups",
    "cosine_warmup_scheduler",
    "default_callbacks",
    "default_loggers",
    "derived_seed",
    "find_run_files",
    "no_weight_decay_names",
    "plot_curves",
    "read_csv_log",
    "seeded_rngs",
    "skip_summary",
    "total_training_steps",
]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, file too large, I/O error); the message names the
    file and the cause, ``errno`` is the cause's, and no partial file is left behind."""


_FULL_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}


def _os_cause(err: BaseException) -> OSError | None:
    """The first ``OSError`` in ``err``'s cause/context chain (torch's zip writer wraps the file object's
    ``OSError`` in a ``RuntimeError`` that only says 'unexpected pos')."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _remove_stale_partials(tmp_dir: Path) -> None:
    """Remove ``<name>.<pid>`` temp files of processes that no longer run (a SIGKILL during a write)."""
    for f in tmp_dir.glob("*.*"):
        pid = f.suffix[1:]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except PermissionError:  # a live process of another user
            pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to ``<dir>/.partial/<name>.<pid>`` and renames it into place (``os.replace``), so
    a kill while saving leaves the previous file intact. A failed write (disk full, ...) removes the temp file
    and raises :class:`CheckpointWriteError` ("disk full while writing <path>"); temp files of killed
    processes are removed at the next save. Reads go through ``recipes.checkpoint.read_recipe_checkpoint``
    (``weights_only=True``; pickled objects only with ``ZOO_ALLOW_PICKLE=1`` / ``zoo.models.allow_pickle()``).
    Remote paths fall back to Lightning's reader and writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        fs = get_filesystem(path)
        if type(fs).__name__ != "LocalFileSystem":
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp_dir = path.parent / ".partial"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(tmp_dir)
        tmp = tmp_dir / f"{path.name}.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                tmp_dir.rmdir()  # only if empty
            cause = _os_cause(err)
            if cause is None:
                raise
            what = _FULL_ERRNOS.get(cause.errno, cause.strerror or "write failed")
            raise CheckpointWriteError(
                cause.errno,
                f"{what} while writing {path} ({os.strerror(cause.errno)}); the partial file was removed and the "
                f"previous checkpoints are intact. Free space under {path.parent} (or point the run elsewhere) "
                "and resume from the last checkpoint",
            ) from err
        with contextlib.suppress(OSError):
            tmp_dir.rmdir()

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        fs = get_filesystem(path)
        if type(fs).__name__ != "LocalFileSystem":
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        from recipes.checkpoint import read_recipe_checkpoint

        # weights_only=False passed explicitly by the caller's code is its opt-in to unpickling
        return read_recipe_checkpoint(path, allow_pickle=True if weights_only is False else None)
