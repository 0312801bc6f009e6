"""Skipped bad samples: :class:`SkipCounter` records each one once, with its reason, across DataLoader workers and
epochs; :class:`DataSkipError` stops a run that skips too much (``recipes.callbacks.SkippedSamplesLogger`` checks
during training)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import weakref
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("recipes")


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


def skip_counters(trainer: pl.Trainer) -> list[SkipCounter]:
    found = []
    for owner in (trainer.datamodule, trainer.lightning_module):
        c = getattr(owner, "skip_counter", None)
        if isinstance(c, SkipCounter) and all(c is not f for f in found):
            found.append(c)
    return found


def skip_summary(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The skip counters' summaries merged (``SkipCounter.summary``), or None when the run has no counter."""
    counters = skip_counters(trainer)
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


def skips_text(trainer: pl.Trainer) -> str:
    s = skip_summary(trainer)
    if not s or not s["total"]:
        return ""
    reasons = ", ".join(f"{k}: {v}" for k, v in s["by_reason"].items())
    return f"; {s['total']} samples were skipped ({reasons})"
