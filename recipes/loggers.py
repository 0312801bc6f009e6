"""Run logs: CSV (appended on resume) + TensorBoard under ``<root>/logs``, reading the CSV back, the curves PNG and
the list of a run's output files."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """CSV writer that keeps an existing ``metrics.csv`` (resume appends to it instead of deleting it). Lightning has
    no public switch for this: its writer's ``_check_log_dir_exists`` is where the old file would be dropped."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (rows are appended; readers keep the last row
    per step)."""

    @property
    def experiment(self) -> ExperimentWriter:
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


def validation_curve(csv_path: str | os.PathLike, keys: tuple[str, ...]) -> list[dict]:
    """The validation metrics per validation from ``metrics.csv``: ``[{"epoch", "step", <keys>...}, ...]`` by step,
    rows where ``keys[0]`` was logged (a step logged twice keeps its last row); ``[]`` without a log."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return []
    rows: dict[int, dict] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(keys[0]) in (None, ""):
                continue
            step = int(float(row.get("step") or 0))
            rows[step] = {"epoch": int(float(row.get("epoch") or 0)), "step": step,
                          **{k: float(row[k]) for k in keys if row.get(k) not in (None, "")}}
    return [rows[k] for k in sorted(rows)]
