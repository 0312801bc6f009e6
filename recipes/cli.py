"""``RecipeCLI``: LightningCLI with the recipe defaults (callbacks, loggers, atomic checkpoints under one run folder)
and ``--ckpt_path last|best`` resolved from that folder. It reaches Lightning through its public hooks only:
``add_arguments_to_parser``, ``instantiate_trainer`` and the ``before_<subcommand>`` hooks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from recipes.callbacks import default_callbacks
from recipes.loggers import default_loggers


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
    (Lightning would warn and start over). ``--ckpt_path best`` in a new process (validate/test/predict after fit)
    is the newest ``<root>/checkpoints/best-*.ckpt`` (Lightning only knows the best path within the fit's
    process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--ckpt_every_n_steps", type=int, default=200, help="last.ckpt every N steps (0: off)")
        parser.add_argument("--no_progress_bar", type=bool, default=False, help="plain logging instead of rich")

    def _setting(self, key: str, default: Any = None, instantiated: bool = False) -> Any:
        """A value of the running subcommand's config (``config_init``, with classes instantiated, when
        ``instantiated``)."""
        config = self.config_init if instantiated else self.config
        return config.get(str(self.subcommand), config).get(key, default)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        cfg = self._setting("trainer", {}, instantiated=True)
        task = getattr(self.model, "task", "") or "run"
        root = cfg.get("default_root_dir") or os.path.join("runs", task)
        kwargs.setdefault("default_root_dir", root)
        no_bar = bool(self._setting("no_progress_bar", False))
        user_cbs = list(cfg.get("callbacks") or [])
        extra = default_callbacks(
            root,
            every_n_train_steps=self._setting("ckpt_every_n_steps", 200),
            monitor=getattr(self.model, "monitor", "val/loss"),
            mode=getattr(self.model, "monitor_mode", "min"),
            progress_bar=not no_bar and cfg.get("enable_progress_bar", True) is not False,
        )
        if any(isinstance(c, ModelCheckpoint) for c in user_cbs):
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in user_cbs):
            from recipes.predictions import PredictionWriter

            extra.append(PredictionWriter(Path(root) / "predictions"))
        kwargs["callbacks"] = user_cbs + extra
        if cfg.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(root)
        kwargs["plugins"] = _with_atomic_checkpoints(cfg.get("plugins"))
        if no_bar:
            kwargs["enable_progress_bar"] = False
        if "config_filename" not in self.save_config_kwargs:  # only fit writes config.yaml
            name = "config.yaml" if self.subcommand in (None, "fit") else f"config-{self.subcommand}.yaml"
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": name}
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        self._resolve_ckpt_path("fit")

    def before_validate(self) -> None:
        self._resolve_ckpt_path("validate")

    def before_test(self) -> None:
        self._resolve_ckpt_path("test")

    def before_predict(self) -> None:
        self._resolve_ckpt_path("predict")

    def _resolve_ckpt_path(self, subcommand: str) -> None:
        """``--ckpt_path last`` -> ``resume_checkpoint`` (raises NothingToResumeError when there is none);
        ``--ckpt_path best`` outside fit, when this process has no best path -> the newest ``best-*.ckpt``."""
        config = self.config_init[subcommand]
        ckpt_dir = Path(self.trainer.default_root_dir, "checkpoints")
        if config.get("ckpt_path") == "last":
            from recipes.checkpoint import resume_checkpoint

            config["ckpt_path"] = str(resume_checkpoint(ckpt_dir))
        elif config.get("ckpt_path") == "best" and subcommand != "fit":
            if getattr(self.trainer.checkpoint_callback, "best_model_path", ""):
                return
            found = sorted(ckpt_dir.glob("best-*.ckpt"), key=os.path.getmtime)
            if not found:
                raise FileNotFoundError(
                    f"--ckpt_path best: no best-*.ckpt under {self.trainer.default_root_dir}/checkpoints"
                )
            config["ckpt_path"] = str(found[-1])


def _with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The configured trainer plugins as a list, plus ``AtomicCheckpointIO`` unless one writes checkpoints already."""
    from recipes.common import AtomicCheckpointIO  # common re-exports this module: import on use

    plugins = list(plugins) if isinstance(plugins, Sequence) and not isinstance(plugins, str) else (
        [plugins] if plugins else []
    )
    if not any(isinstance(p, TorchCheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins
