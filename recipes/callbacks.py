"""The recipe callbacks (:func:`default_callbacks`): best + last checkpoints, progress bar, LR monitor, the skipped
sample logger, final metrics JSON + curves PNG, per-step seeding, and a validation at ``max_steps``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from recipes.loggers import plot_curves, read_csv_log
from recipes.seeding import StepSeeding
from recipes.skips import DataSkipError, skip_counters, skip_summary, skips_text


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
        n = sum(c.skipped(split, exact=True) for c in skip_counters(trainer))
        if trainer.world_size > 1:
            n = int(trainer.strategy.reduce(torch.tensor(float(n)), reduce_op="sum").item())
        return n

    def _log_and_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        counters = skip_counters(trainer)
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
            for c in skip_counters(trainer):
                c.check("train")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_and_check(trainer, pl_module, "train")
        if trainer.global_step == self._epoch_start_step:
            raise DataSkipError(
                f"epoch {trainer.current_epoch} trained on nothing: no batch had a usable sample"
                + skips_text(trainer) + "; check the training data path and files"
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
                + skips_text(trainer) + "; check the training data (path, files, batch size vs. data size)"
            )


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


class SaveSettings(Callback):
    """Writes ``settings`` (a tool's run settings) into every checkpoint under ``key``, so a resume can continue
    with the run's own settings (tools/demo.py ``--resume``)."""

    def __init__(self, settings: dict[str, Any], key: str = "demo_settings") -> None:
        super().__init__()
        self.settings = dict(settings)
        self.key = key

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[self.key] = dict(self.settings)
