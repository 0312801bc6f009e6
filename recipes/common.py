"""Shared recipe infrastructure: optimizer/scheduler, callbacks, loggers, checkpoint I/O and the CLI.

Every task recipe (classification, detection, segmentation) builds on these pieces:

- ``RecipeModule``: LightningModule base. Subclasses keep the network at ``self.model``, save ``task`` among
  their hparams, set ``monitor``/``monitor_mode`` (the metric that picks the best checkpoint) and get
  ``configure_optimizers`` (AdamW + cosine with warmup, no weight decay on norms/biases/``no_weight_decay()``).
- ``build_param_groups`` / ``build_optimizer`` / ``cosine_warmup_scheduler`` / ``adamw_cosine``.
- ``default_callbacks(root_dir, ...)``: best + last checkpoint at epoch end, ``last.ckpt`` every N steps,
  rich progress bar, LR monitor, skipped-sample logger, final metrics JSON + curves PNG, per-step seeding
  (``StepSeeding``: a resumed run draws what the uninterrupted one drew; ``SeededItems``: per-sample
  augmentation seeds).
- ``default_loggers(root_dir)``: CSV (appends on resume) + TensorBoard under ``<root_dir>/logs``.
- ``AtomicCheckpointIO``: checkpoints are written to a temp file and renamed, so a kill never leaves a corrupt
  ``last.ckpt``.
- ``SkipCounter``: skipped bad samples recorded once per sample with reasons, shared with DataLoader workers; a
  datamodule exposes it as ``skip_counter``; ``SkippedSamplesLogger`` logs it as ``data/skipped`` and stops a
  run (``DataSkipError``) that trains on nothing or skips more than the counter's ``max_fraction``.
- ``RecipeCLI``: LightningCLI that adds all of the above unless the config sets its own.

Layout of a run directory (``trainer.default_root_dir``)::

    checkpoints/last.ckpt, checkpoints/best-*.ckpt
    logs/metrics.csv, logs/hparams.yaml, logs/tb/events.*
    metrics.json, curves.png
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import math
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _FabricExperimentWriter
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

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
    "total_training_steps",
    "find_run_files",
    "plot_curves",
    "read_csv_log",
    "seeded_rngs",
    "skip_summary",
]

log = logging.getLogger("recipes")


# ----------------------------------------------------------------------------------------------------------
# optimizer + schedule


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that every module's ``no_weight_decay()`` lists, prefixed with the module's path:
    a backbone nested in a detection or segmentation model (``backbone.body.…``, ``encoder.model.…``)
    keeps its exclusions, not only the top-level model's."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names.update(f"{prefix}.{n}" if prefix else n for n in fn())
    return names


def build_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Parameter groups as timm makes them: no weight decay for 1-D params (norms, biases) and for the names
    that ``no_weight_decay()`` of the model or of any submodule lists (:func:`no_weight_decay_names`);
    optional layer-wise LR decay (needs ``model.group_matcher``)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    no_wd = no_weight_decay_names(model)
    if layer_decay is not None and hasattr(model, "group_matcher"):
        return param_groups_layer_decay(
            model, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=no_wd
        )
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_wd)


def build_optimizer(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layer_decay: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``build_param_groups(model, ...)`` (a group's ``lr_scale`` multiplies ``lr``)."""
    groups = build_param_groups(model, weight_decay, layer_decay)
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def cosine_warmup_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine down to
    ``min_lr_ratio`` at ``total_steps`` (held there afterwards)."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_training_steps(trainer: pl.Trainer) -> float:
    """Optimizer steps the fit will take, like ``trainer.estimated_stepping_batches`` but computed from a fresh
    ``datamodule.train_dataloader()``'s length: Lightning's property builds (and starts iterating) the fit
    loop's loader before a checkpoint's loader state is restored, which would break a mid-epoch resume."""
    dm = trainer.datamodule
    n = None
    if dm is not None:
        try:
            n = len(dm.train_dataloader())
        except TypeError:  # no __len__
            n = None
    if n is None:
        return trainer.estimated_stepping_batches
    lim = trainer.limit_train_batches
    n = int(n * lim) if isinstance(lim, float) else min(n, int(lim))
    per_epoch = math.ceil(n / max(1, trainer.accumulate_grad_batches))
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
    total = per_epoch * epochs if epochs is not None else math.inf
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        total = min(total, trainer.max_steps)
    return total


def adamw_cosine(
    module: pl.LightningModule,
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
    min_lr_ratio: float = 0.01,
    layer_decay: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
) -> dict[str, Any]:
    """``configure_optimizers`` result: AdamW + per-step cosine schedule over ``trainer.estimated_stepping_batches``.
    ``warmup`` < 1 is a fraction of the total steps, >= 1 a number of steps."""
    opt = build_optimizer(model, lr=lr, weight_decay=weight_decay, betas=betas, layer_decay=layer_decay)
    total = total_training_steps(module.trainer) if module._trainer is not None else 1000
    if not math.isfinite(total):
        raise ValueError(
            "the cosine schedule needs a finite number of steps: set trainer.max_steps or give the train data a length"
        )
    warm = int(warmup * total) if warmup < 1 else int(warmup)
    sched = cosine_warmup_scheduler(opt, int(total), warm, min_lr_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


class RecipeModule(pl.LightningModule):
    """Base of the task modules. Subclasses: set ``self.model`` (the network), call ``save_hyperparameters``
    with ``task`` among the hparams, and set ``monitor``/``monitor_mode``. Optimizer hparams read here (all
    optional): ``lr``, ``weight_decay``, ``warmup``, ``min_lr_ratio``, ``layer_decay``."""

    task: str = ""
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_cosine(
            self,
            self.model,
            lr=hp.get("lr", 1e-3),
            weight_decay=hp.get("weight_decay", 0.05),
            warmup=hp.get("warmup", 0.05),
            min_lr_ratio=hp.get("min_lr_ratio", 0.01),
            layer_decay=hp.get("layer_decay", None),
        )


# ----------------------------------------------------------------------------------------------------------
# skipped bad samples


class DataSkipError(RuntimeError):
    """The run stops because of its data: an epoch trained on no sample, or more of a split was skipped (bad
    files, lost shard samples) than the skip counter's ``max_fraction`` allows. The message gives the counts, the
    reasons and the first files."""


def _remove_if_owner(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        with contextlib.suppress(OSError):
            os.unlink(path)


class SkipCounter:
    """Records skipped bad samples once per sample, with reasons, across DataLoader workers and epochs.

    ``add(reason, key, detail, n=1, split="train")`` records the sample ``key`` (its file, or shard URL + sample
    key) of ``split`` once: adding it again (the next epoch, another worker) neither counts nor warns again, except with
    a larger ``n`` (how many samples the record stands for, e.g. the samples lost to a truncated shard), which
    replaces the old count. ``value`` is the number of skipped samples, ``summary()`` the counts by split and
    reason with the first keys of each reason.

    Records are appended as JSON lines to a private temp file (``path``): DataLoader workers, forked or spawned,
    write to it without locks or queues, and every process reads the same records. The file is removed when
    the counter that created it is garbage collected.

    ``max_fraction`` (default 0.05) and ``set_total(split, n)``: ``check(split)`` raises :class:`DataSkipError`
    when more than ``max_fraction`` of a split's samples were skipped (``SkippedSamplesLogger`` calls it during
    training). A split named ``"<split>/<what>"`` (e.g. ``train/annotations``) is checked with ``<split>``.
    """

    def __init__(self, max_fraction: float = 0.05) -> None:
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ValueError(f"max_fraction must be within 0..1 (a fraction of a split), got {max_fraction}")
        self.max_fraction = float(max_fraction)
        self.totals: dict[str, int] = {}
        fd, self.path = tempfile.mkstemp(prefix="recipes-skips-", suffix=".jsonl")
        os.close(fd)
        self._records: dict[str, dict[str, Any]] = {}
        self._offset = 0
        self._finalizer: Any = weakref.finalize(self, _remove_if_owner, self.path, os.getpid())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_finalizer"] = None  # only the creating process removes the file
        return state

    def _sync(self) -> None:
        """Read the records other processes appended since the last read (complete lines only)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            rec = json.loads(line)
            ident = f"{rec['split']}\0{rec['key']}"
            old = self._records.get(ident)
            if old is None or rec["n"] > old["n"]:
                self._records[ident] = rec
        self._offset += end

    def add(self, reason: str, key: str, detail: str = "", n: int = 1, split: str = "train") -> bool:
        """Record ``key`` as skipped for ``reason``; True when it is new (then one warning is logged)."""
        self._sync()
        ident = f"{split}\0{key}"
        old = self._records.get(ident)
        if old is not None and old["n"] >= n:
            return False
        rec = {"key": str(key), "reason": reason, "detail": str(detail)[:500], "n": int(n), "split": split}
        with open(self.path, "a", encoding="utf-8") as f:  # one short O_APPEND write: whole lines, any process
            f.write(json.dumps(rec) + "\n")
        self._records[ident] = rec
        log.warning("skipped %d bad %s sample%s (%s): %s%s", n, split, "" if n == 1 else "s", reason, key,
                    f": {detail}" if detail else "")
        return True

    def set_total(self, split: str, n: int) -> None:
        """The number of samples in ``split`` (the base of ``check``'s fraction)."""
        self.totals[split] = int(n)

    def records(self) -> list[dict[str, Any]]:
        """Every record: ``{"key", "reason", "detail", "n", "split"}``, in the order they were first added."""
        self._sync()
        return list(self._records.values())

    def skipped(self, split: str | None = None, exact: bool = False) -> int:
        """Skipped samples of ``split`` (``"train"`` also sums ``"train/..."`` unless ``exact``), or of all
        splits."""
        return sum(r["n"] for r in self.records() if split is None or r["split"] == split
                   or (not exact and r["split"].startswith(f"{split}/")))

    @property
    def value(self) -> int:
        """Skipped samples, all splits."""
        return self.skipped()

    def summary(self, examples: int = 5, split: str | None = None) -> dict[str, Any]:
        """``{"total", "by_split": {split: n}, "by_reason": {reason: n}, "examples": {reason: [key: detail,
        ...]}, "totals": {split: size}}`` (of one ``split`` only, when given): what a run's summary prints and
        ``metrics.json`` keeps."""
        out: dict[str, Any] = {"total": 0, "by_split": {}, "by_reason": {}, "examples": {}, "totals": dict(self.totals)}
        for r in self.records():
            if split is not None and r["split"] != split:
                continue
            out["total"] += r["n"]
            out["by_split"][r["split"]] = out["by_split"].get(r["split"], 0) + r["n"]
            out["by_reason"][r["reason"]] = out["by_reason"].get(r["reason"], 0) + r["n"]
            ex = out["examples"].setdefault(r["reason"], [])
            if len(ex) < examples:
                ex.append(f"{r['key']}: {r['detail']}" if r["detail"] else r["key"])
        return out

    def check(self, split: str, skipped: int | None = None) -> None:
        """Raise :class:`DataSkipError` when ``split``'s skipped samples (``skipped``: a count summed over
        ranks; default this process's), or those of one of its ``split/...`` parts, exceed ``max_fraction`` of
        its total (``set_total``)."""
        for name, total in self.totals.items():
            if name.split("/")[0] != split or total <= 0:
                continue
            n = self.skipped(name, exact=True) if skipped is None or name != split else skipped
            if n > self.max_fraction * total:
                s = self.summary(examples=3, split=name)
                reasons = "; ".join(f"{k}: {v}" for k, v in s["by_reason"].items())
                first = "; ".join(e for ex in s["examples"].values() for e in ex)
                raise DataSkipError(
                    f"{n} of {total} {name} samples were skipped ({100 * n / total:.1f}%, more than the allowed "
                    f"{100 * self.max_fraction:g}%). Reasons: {reasons}. First: {first}. Fix or remove these files "
                    "(the full list is in the warnings and metrics.json), or allow more with the data module's "
                    "max_skip_fraction"
                )

    def reset(self) -> None:
        """Forget every record (truncates the shared file)."""
        open(self.path, "w").close()
        self._records, self._offset = {}, 0


def _skip_counters(trainer: pl.Trainer) -> list[SkipCounter]:
    found = []
    for owner in (trainer.datamodule, trainer.lightning_module):
        c = getattr(owner, "skip_counter", None)
        if isinstance(c, SkipCounter) and all(c is not f for f in found):
            found.append(c)
    return found


def skip_summary(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The skip counters' summaries merged (``SkipCounter.summary``), or None when the run has no counter."""
    counters = _skip_counters(trainer)
    if not counters:
        return None
    out: dict[str, Any] = {"total": 0, "by_split": {}, "by_reason": {}, "examples": {}, "totals": {}}
    for c in counters:
        s = c.summary()
        out["total"] += s["total"]
        for k in ("by_split", "by_reason"):
            for name, v in s[k].items():
                out[k][name] = out[k].get(name, 0) + v
        for name, ex in s["examples"].items():
            out["examples"].setdefault(name, []).extend(ex)
        out["totals"].update(s["totals"])
    return out


class SkippedSamplesLogger(Callback):
    """Logs ``data/skipped`` (bad samples skipped so far, each counted once, summed over ranks) at the end of
    every train and validation epoch, from ``datamodule.skip_counter`` (or the module's), and stops the run
    with :class:`DataSkipError` (a clear message; a non-zero exit from the command line) when

    - more of a split was skipped than the counter's ``max_fraction`` (train: after every batch on one
      process, at every epoch end summed over ranks; val/test: at the end of their loops);
    - a training epoch made no optimizer step (every batch was empty), or a fit ends without any step.
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoch_start_step = 0

    def _total(self, trainer: pl.Trainer, split: str) -> int:
        n = sum(c.skipped(split, exact=True) for c in _skip_counters(trainer))
        if trainer.world_size > 1:
            n = int(trainer.strategy.reduce(torch.tensor(float(n)), reduce_op="sum").item())
        return n

    def _log_and_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        counters = _skip_counters(trainer)
        if not counters:
            return
        total = float(sum(c.value for c in counters))
        pl_module.log("data/skipped", total, reduce_fx="sum", sync_dist=True, on_epoch=True, on_step=False)
        n = self._total(trainer, split)
        for c in counters:
            c.check(split, skipped=n if len(counters) == 1 else None)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.world_size == 1:  # a collective per batch would cost more than it finds
            for c in _skip_counters(trainer):
                c.check("train")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_and_check(trainer, pl_module, "train")
        if trainer.global_step == self._epoch_start_step:
            raise DataSkipError(
                f"epoch {trainer.current_epoch} trained on nothing: no batch had a usable sample"
                + _skips_text(trainer) + "; check the training data path and files"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_and_check(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_and_check(trainer, pl_module, "test")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0 and trainer.max_steps != 0 and trainer.limit_train_batches != 0:
            raise DataSkipError(
                f"the fit trained 0 steps ({trainer.num_training_batches} training batches per epoch)"
                + _skips_text(trainer) + "; check the training data (path, files, batch size vs. data size)"
            )


def _skips_text(trainer: pl.Trainer) -> str:
    s = skip_summary(trainer)
    if not s or not s["total"]:
        return ""
    reasons = ", ".join(f"{k}: {v}" for k, v in s["by_reason"].items())
    return f"; {s['total']} samples were skipped ({reasons})"


# ----------------------------------------------------------------------------------------------------------
# checkpoints


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


# ----------------------------------------------------------------------------------------------------------
# reproducible resume: every random draw of a training step depends on (seed, step), of a sample on (seed, epoch,
# index), never on how many steps this process has run or which worker loaded the sample


def derived_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from integer keys (numpy ``SeedSequence``)."""
    import numpy as np

    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Any:
    """Seed Python's ``random``, numpy's global RNG and torch's CPU RNG with ``seed`` inside the block and
    restore their previous states after it (the process's own random stream is left untouched)."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededItems(torch.utils.data.Dataset):
    """Wraps a map-style dataset so that ``ds[(index, seed)]`` runs ``ds[index]`` (its random augmentation)
    inside ``seeded_rngs(seed)``; a plain ``ds[index]`` passes through. A sampler that yields
    ``(index, derived_seed(seed, epoch, index))`` so gets the same augmented sample for the same epoch whatever
    the number of workers, and again after a mid-epoch resume. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            with seeded_rngs(seed):
                return self.dataset[index]
        return self.dataset[key]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class StepSeeding(Callback):
    """At the start of every training step seeds ``random``, numpy and torch (CPU and CUDA) from the run's seed
    (``seed_everything``'s, ``PL_GLOBAL_SEED``), the global step and the rank, so dropout, stochastic depth,
    mixup/cutmix and anything else the step draws are the same after a resume from a checkpoint as in the
    uninterrupted run (``recipes.data`` loaders seed augmentation per sample, :class:`SeededItems`)."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        import random

        import numpy as np

        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        seed = derived_seed(base, trainer.global_step, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------
# logs, metrics JSON, curves


class _AppendingWriter(ExperimentWriter):
    """CSV writer that keeps an existing ``metrics.csv`` (resume appends to it instead of deleting it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (rows are appended; readers keep the last row
    per step)."""

    @property
    def experiment(self) -> _FabricExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def default_loggers(root_dir: str | os.PathLike) -> list[Logger]:
    """CSV (``<root>/logs/metrics.csv``) + TensorBoard (``<root>/logs/tb``), fixed folders so resume continues."""
    root = str(root_dir)
    return [
        ResumableCSVLogger(root, name="logs", version=""),
        TensorBoardLogger(root, name="logs", version="tb", default_hp_metric=False),
    ]


def read_csv_log(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` → ``{metric: [(step, value), ...]}`` sorted by step; a step logged twice (rows written
    again after a resume) keeps its last value."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or 0))
            except ValueError:
                continue
            for k, v in row.items():
                if k in ("step", "epoch") or v in (None, ""):
                    continue
                try:
                    series.setdefault(k, {})[step] = float(v)
                except ValueError:
                    pass
    return {k: sorted(d.items()) for k, d in series.items()}


def plot_curves(series: dict[str, list[tuple[int, float]]], png: str | os.PathLike, title: str = "") -> Path:
    """One panel per metric group (loss, accuracy-like, lr, other), x = optimizer step. matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def group(name: str) -> str:
        n = name.lower()
        if "loss" in n:
            return "loss"
        if n.startswith("lr") or "lr-" in n:
            return "learning rate"
        if n.startswith("data/"):
            return "data"
        return "metrics"

    groups: dict[str, list[str]] = {}
    for k in sorted(series):
        groups.setdefault(group(k), []).append(k)
    order = [g for g in ("loss", "metrics", "learning rate", "data") if g in groups]
    n = max(1, len(order))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False)
    for ax, g in zip(axes[0], order):
        for k in groups[g]:
            xs, ys = zip(*series[k])
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=k)
        ax.set_title(g)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


class FinalMetrics(Callback):
    """At the end of fit / validate / test, or when it stops with an error (rank 0): writes
    ``<out_dir>/metrics.json`` (final and best value of every logged metric, the ``test/*`` results, steps,
    epochs, checkpoint paths, ``skipped_samples`` and ``skipped`` (``SkipCounter.summary``: by split, by
    reason, first files), ``error`` when the run failed) and
    ``<out_dir>/curves.png`` from the CSV log. ``out_dir`` defaults to ``trainer.default_root_dir``. Entries of
    earlier stages in the same file are kept (fit then test merges)."""

    def __init__(self, out_dir: str | None = None, json_name: str = "metrics.json", png_name: str = "curves.png"):
        super().__init__()
        self.out_dir = out_dir
        self.json_name = json_name
        self.png_name = png_name

    def paths(self, trainer: pl.Trainer) -> tuple[Path, Path]:
        root = Path(self.out_dir or trainer.default_root_dir)
        return root / self.json_name, root / self.png_name

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str,
               error: BaseException | None = None) -> None:
        json_path, png_path = self.paths(trainer)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {}
        if json_path.is_file():
            try:
                data = json.loads(json_path.read_text())
            except json.JSONDecodeError:
                data = {}
        csv_path = None
        for lg in trainer.loggers:
            if isinstance(lg, CSVLogger):
                lg.save()
                p = Path(lg.log_dir) / "metrics.csv"
                if p.is_file():
                    csv_path = p
        series = read_csv_log(csv_path) if csv_path else {}
        mode = getattr(pl_module, "monitor_mode", "max")
        best = {}
        for k, pts in series.items():
            vals = [v for _, v in pts]
            lower = "loss" in k or k.startswith("lr") or (k == getattr(pl_module, "monitor", None) and mode == "min")
            best[k] = min(vals) if lower else max(vals)
        data.update(
            {
                "task": pl_module.hparams.get("task", getattr(pl_module, "task", "")),
                "model_name": pl_module.hparams.get("model_name"),
                "global_step": int(trainer.global_step),
                "epochs": int(trainer.current_epoch),
                "final": {k: pts[-1][1] for k, pts in series.items()},
                "best": best,
                "csv_log": str(csv_path) if csv_path else None,
            }
        )
        skips = skip_summary(trainer)
        if skips is not None:
            data["skipped_samples"] = skips["total"]
            data["skipped"] = skips
        if error is not None:
            data["error"] = f"{type(error).__name__}: {error}"
        else:
            data.pop("error", None)
        cbs = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
        for cb in cbs:
            if cb.best_model_path:
                data["best_checkpoint"] = cb.best_model_path
                data["best_score"] = _scalar(cb.best_model_score)
            if cb.last_model_path:
                data["last_checkpoint"] = cb.last_model_path
        cm = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        data.setdefault("stages", {})[stage] = cm
        if stage == "test":
            data["test"] = {k: v for k, v in cm.items() if k.startswith("test/")}
        if series:
            plot_curves(series, png_path, title=f"{data['task']} {data.get('model_name') or ''}")
            data["curves_png"] = str(png_path)
        json_path.write_text(json.dumps(data, indent=2, default=str))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "fit")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A run stopped by an error (e.g. :class:`DataSkipError`) still leaves its metrics, skips and the error."""
        self._write(trainer, pl_module, str(trainer.state.fn or "fit"), error=exception)


# ----------------------------------------------------------------------------------------------------------
# callbacks + trainer defaults


def _progress_bar() -> Callback:
    try:
        import rich  # noqa: F401
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar(leave=True)
    except ImportError:  # pragma: no cover - rich is a declared dependency (lightning[pytorch-extra])
        return TQDMProgressBar()


class ValidateAtMaxSteps(Callback):
    """A run that reaches ``trainer.max_steps`` in the middle of an epoch still validates before it ends, so its
    last weights are scored and the best checkpoint is kept (Lightning validates only at epoch ends or every
    ``val_check_interval``, and would end such a run without a validation). It asks the trainer to stop at the
    last step, which Lightning answers with a validation."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def default_callbacks(
    root_dir: str | os.PathLike,
    every_n_train_steps: int = 200,
    monitor: str | None = "val/loss",
    mode: str = "min",
    progress_bar: bool = True,
    lr_monitor: bool = True,
) -> list[Callback]:
    """The recipe callbacks. Checkpoints go to ``<root_dir>/checkpoints``:

    - ``best-epochNNN-stepNNNNNN.ckpt`` (top-1 by ``monitor``) and ``last.ckpt`` at every epoch end (after
      validation); this one comes first, so ``trainer.checkpoint_callback.best_model_path`` / ``ckpt_path="best"``
      refer to it;
    - ``last.ckpt`` every ``every_n_train_steps`` optimizer steps (0 turns this off).

    A run that stops at ``max_steps`` mid-epoch validates first (:class:`ValidateAtMaxSteps`).
    """
    ckpt_dir = str(Path(root_dir) / "checkpoints")
    cbs: list[Callback] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-epoch{epoch:03d}-step{step:06d}",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
    ]
    if every_n_train_steps:
        cbs.append(
            ModelCheckpoint(
                dirpath=ckpt_dir, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True,
                enable_version_counter=False,
            )
        )
    if progress_bar:
        cbs.append(_progress_bar())
    if lr_monitor:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    cbs += [SkippedSamplesLogger(), FinalMetrics(), StepSeeding(), ValidateAtMaxSteps()]
    return cbs


class RecipeCLI(LightningCLI):
    """LightningCLI with the recipe defaults: unless the config sets its own, the trainer gets
    ``default_callbacks`` (monitor taken from the model's ``monitor``/``monitor_mode``), ``default_loggers`` and
    ``AtomicCheckpointIO``, all under ``trainer.default_root_dir`` (default ``runs/<task>``).
    Extra top-level options: ``--ckpt_every_n_steps`` (default 200) and ``--no_progress_bar``.

    The resolved config goes to ``<root>/logs/config.yaml`` for ``fit`` (a resumed fit rewrites it) and to
    ``config-<subcommand>.yaml`` for validate/test/predict, which so never overwrite the fit's record.
    ``predict`` writes ``<root>/predictions/predictions.json`` (``recipes.predictions.PredictionWriter``) over the
    datamodule's predict split (every recipe datamodule predicts its test split, or val when it has none).
    ``--ckpt_path last`` loads ``recipes.checkpoint.resume_checkpoint(<root>/checkpoints)``: ``last.ckpt``, the
    newest intact checkpoint when it is corrupt (with a warning), or an error when there is nothing to resume
    (Lightning would warn and start over)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--ckpt_every_n_steps", type=int, default=200, help="last.ckpt every N steps (0: off)")
        parser.add_argument("--no_progress_bar", type=bool, default=False, help="plain logging instead of rich")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        cfg = self._get(self.config_init, "trainer", default={})
        task = getattr(self.model, "task", "") or "run"
        root = cfg.get("default_root_dir") or os.path.join("runs", task)
        kwargs.setdefault("default_root_dir", root)
        every = self._get(self.config, "ckpt_every_n_steps", default=200)
        no_bar = bool(self._get(self.config, "no_progress_bar", default=False))
        user_cbs = list(cfg.get("callbacks") or [])
        have_ckpt = any(isinstance(c, ModelCheckpoint) for c in user_cbs)
        extra = default_callbacks(
            root,
            every_n_train_steps=every,
            monitor=getattr(self.model, "monitor", "val/loss"),
            mode=getattr(self.model, "monitor_mode", "min"),
            progress_bar=not no_bar and cfg.get("enable_progress_bar", True) is not False,
        )
        if have_ckpt:
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in user_cbs):
            from recipes.predictions import PredictionWriter

            extra.append(PredictionWriter(Path(root) / "predictions"))
        kwargs["callbacks"] = user_cbs + extra
        if cfg.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(root)
        plugins = cfg.get("plugins")
        plugins = list(plugins) if isinstance(plugins, Sequence) and not isinstance(plugins, str) else (
            [plugins] if plugins else []
        )
        if not any(isinstance(p, TorchCheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        if no_bar:
            kwargs["enable_progress_bar"] = False
        if "config_filename" not in self.save_config_kwargs:  # only fit writes config.yaml
            name = "config.yaml" if self.subcommand in (None, "fit") else f"config-{self.subcommand}.yaml"
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}
        return super().instantiate_trainer(**kwargs)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """``--ckpt_path best`` in a new process (validate/test/predict after fit): the newest
        ``<root>/checkpoints/best-*.ckpt`` (Lightning only knows the best path within the fit's process).
        ``--ckpt_path last``: ``resume_checkpoint`` (raises NothingToResumeError when there is none)."""
        kw = super()._prepare_subcommand_kwargs(subcommand)
        if kw.get("ckpt_path") == "last":
            from recipes.checkpoint import resume_checkpoint

            kw["ckpt_path"] = str(resume_checkpoint(Path(self.trainer.default_root_dir, "checkpoints")))
        if kw.get("ckpt_path") == "best" and subcommand != "fit":
            cb = self.trainer.checkpoint_callback
            if not getattr(cb, "best_model_path", ""):
                found = sorted(Path(self.trainer.default_root_dir, "checkpoints").glob("best-*.ckpt"),
                               key=os.path.getmtime)
                if not found:
                    raise FileNotFoundError(
                        f"--ckpt_path best: no best-*.ckpt under {self.trainer.default_root_dir}/checkpoints"
                    )
                kw["ckpt_path"] = str(found[-1])
        return kw


def find_run_files(root_dir: str | os.PathLike) -> dict[str, str]:
    """Paths of the usual run outputs under ``root_dir`` that exist (for printing a summary)."""
    root = Path(root_dir)
    cand = {
        "checkpoints": root / "checkpoints",
        "last_checkpoint": root / "checkpoints" / "last.ckpt",
        "csv_log": root / "logs" / "metrics.csv",
        "tensorboard": root / "logs" / "tb",
        "metrics_json": root / "metrics.json",
        "curves_png": root / "curves.png",
    }
    return {k: str(v) for k, v in cand.items() if v.exists()}

