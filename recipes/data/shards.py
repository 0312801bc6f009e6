"""webdataset shard reading for the recipes: counting error handler, disjoint resampled shard source.

Shard layout (written by ``tools/make_shards.py``): ``<prefix>-NNNNNN.tar`` with samples
``<key>.png`` (or ``.jpg``/``.jpeg``/``.webp``) + ``<key>.cls`` (the class index as text), and a ``meta.json``
in the same folder: ``{"num_classes", "classes", "split", "shards": [...], "samples": N,
"shard_samples": {shard file name: N}}`` (the per-shard counts let a truncated shard's lost samples be counted).
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from recipes.common import DataSkipError, SkipCounter
from recipes.data.loader import dist_info, loader_state

__all__ = [
    "CountingHandler",
    "ResumableShardLoader",
    "ShardLossCounter",
    "SplitShards",
    "epoch_seed",
    "expand_shards",
    "read_meta",
    "shard_sizes",
]


def _error_url(exn: BaseException) -> str | None:
    """The shard URL webdataset appends to a read error's ``args`` (last string argument), if any."""
    return next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), None)


class CountingHandler:
    """webdataset error handler that records the error and goes on, without webdataset's 0.5 s sleep
    (``warn_and_continue`` sleeps per sample). Picklable, so it works inside DataLoader workers.

    ``expected`` maps shard URL → sample count (``shard_sizes``). A read error of a shard with a known count
    is kept in ``errors`` for :class:`ShardLossCounter`, which counts the samples the shard lost when it ends;
    any other error is recorded as one skipped sample (once per shard and message)."""

    def __init__(self, counter: SkipCounter, split: str = "train", expected: dict[str, int] | None = None) -> None:
        self.counter, self.split, self.expected = counter, split, dict(expected or {})
        self.errors: dict[str, str] = {}

    def __call__(self, exn: BaseException) -> bool:
        url = _error_url(exn)
        msg = f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"
        if url is not None and url in self.expected:
            self.errors[url] = msg
        else:
            reason = "unreadable shard (lost samples unknown: no shard_samples in meta.json)"
            self.counter.add(reason, f"{url}!{msg}" if url else msg, msg, split=self.split)
        return True


class ShardLossCounter:
    """webdataset stage right after reading the tar files: counts the samples each shard gave and, when a
    shard ends with fewer than its ``meta.json`` count, records the difference as lost samples of that shard
    (once per shard; a later pass that loses more raises the count). A pass cut short (end of an epoch) is
    not a loss: only shards read to their end are checked."""

    def __init__(self, handler: CountingHandler) -> None:
        self.handler = handler

    def _finish(self, url: str | None, n: int) -> None:
        expected = self.handler.expected.get(url) if url is not None else None
        if expected is not None and n < expected:
            why = self.handler.errors.get(url, "the shard ended early")
            self.handler.counter.add("lost in a truncated or corrupt shard", url,
                                     f"{n} of {expected} samples readable ({why})", n=expected - n,
                                     split=self.handler.split)

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        url, n = None, 0
        for sample in src:
            u = sample.get("__url__")
            if u != url:
                self._finish(url, n)
                url, n = u, 0
            n += 1
            yield sample
        self._finish(url, n)


def shard_sizes(urls: list[str]) -> dict[str, int]:
    """URL → sample count from ``meta.json``'s ``shard_samples`` (by file name); {} when it has none."""
    counts = read_meta(urls).get("shard_samples") or {}
    return {u: int(counts[os.path.basename(u)]) for u in urls if os.path.basename(u) in counts}


def _is_sample(sample: Any) -> bool:
    return sample is not None


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs from a brace pattern (``a-{000000..000009}.tar``), a glob, a folder (all ``*.tar``) or a list.
    Raises FileNotFoundError with the spec when nothing matches."""
    if isinstance(spec, (list, tuple)):
        urls = [str(u) for u in spec]
    elif os.path.isdir(spec):
        urls = sorted(glob.glob(os.path.join(spec, "*.tar")))
    elif "{" in spec:
        import braceexpand

        urls = list(braceexpand.braceexpand(spec))
    elif any(c in spec for c in "*?["):
        urls = sorted(glob.glob(spec))
    else:
        urls = [spec]
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.isfile(u)]
    if not urls or missing:
        raise FileNotFoundError(
            f"no webdataset shards at {spec!r}" + (f" (missing: {missing[:3]})" if missing else "")
            + ": make them with `python tools/make_shards.py ...` or fix the path"
        )
    return urls


def read_meta(urls: list[str]) -> dict[str, Any]:
    """``meta.json`` next to the first shard, or {} when there is none."""
    p = Path(urls[0]).parent / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else {}


class SplitShards(IterableDataset):
    """Shard source for ``wds.DataPipeline``: yields ``{"url": ...}``.

    Every pass over the list, the shards are permuted with ``seed + pass`` (the same on every rank), then split
    by rank and by DataLoader worker, so ranks and workers read disjoint shards. ``resampled=True`` makes the
    stream endless (a new permutation each pass; the loader's ``with_epoch`` cuts epochs). With fewer shards
    than rank×worker slots, a slot reads shards drawn with its own seed (not disjoint; warns once)."""

    def __init__(self, urls: list[str], shuffle: bool = True, resampled: bool = False, seed: int = 0) -> None:
        self.urls, self.shuffle, self.resampled, self.seed = list(urls), shuffle, resampled, seed

    def __iter__(self) -> Iterator[dict[str, str]]:
        rank, world = dist_info()
        wi = get_worker_info()
        worker, nworkers = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        slots, slot = world * nworkers, rank * nworkers + worker
        p = 0
        while True:
            urls = list(self.urls)
            if self.shuffle:
                random.Random(self.seed + p).shuffle(urls)
            if len(urls) >= slots:
                mine = urls[rank::world][worker::nworkers]
            else:
                rng = random.Random((self.seed + p) * 1000003 + slot)
                mine = [rng.choice(urls)]
            for u in mine:
                yield {"url": u}
            p += 1
            if not self.resampled:
                return


def make_pipeline(
    urls: list[str],
    decode: Any,
    handler: CountingHandler,
    batch_size: int,
    train: bool,
    resampled: bool,
    seed: int = 0,
    shuffle_buffer: int = 1000,
) -> wds.DataPipeline:
    """shards → tar samples → lost-sample count (:class:`ShardLossCounter`) → (shuffle) → decode (``None`` for
    a bad sample, dropped) → batches (training: full batches only). Non-resampled training uses
    ``wds.WebDataset`` with ``nodesplitter=wds.split_by_node`` and explicit ``shardshuffle``; resampled uses
    ``SplitShards``."""
    if resampled:
        stages: list[Any] = [SplitShards(urls, shuffle=train, resampled=True, seed=seed),
                             wds.tarfile_to_samples(handler=handler)]
        ds = wds.DataPipeline(*stages)
    else:
        ds = wds.WebDataset(
            urls,
            shardshuffle=len(urls) if train else False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            handler=handler,
            empty_check=False,
            seed=seed,
        )
    ds = ds.compose(ShardLossCounter(handler))
    if train and shuffle_buffer > 1:
        ds = ds.compose(wds.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer), seed=seed))
    ds = ds.compose(wds.map(decode, handler=handler), wds.select(_is_sample),
                    wds.batched(batch_size, partial=not train))
    return ds


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shard order, shuffle buffer and worker RNGs (the same on every rank)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31)


class ResumableShardLoader:
    """Training loader over webdataset shards that is reproducible per epoch and resumes mid-epoch.

    ``make_loader(seed)`` builds the epoch's loader (shard order, shuffle buffer and DataLoader worker seeds
    all from ``epoch_seed(seed, epoch)``), so epoch ``e`` yields the same batches in the same order whenever
    it runs, and different epochs differ (webdataset re-seeds its shuffles identically on every pass).
    ``epoch()`` and ``progress()`` read the trainer's epoch and the batches trained in it; ``state_dict`` /
    ``load_state_dict`` follow Lightning's stateful-loader protocol. On resume the first ``batches_done``
    batches of the epoch are read again and dropped (a stream has no random access): the position is exact,
    at the cost of re-reading that part of the epoch. Augmentation draws are reproduced when
    ``num_workers > 0`` (worker RNGs are seeded per epoch); with ``num_workers=0`` they come from the
    training process's RNG, which Lightning does not restore.

    Every epoch has exactly ``num_batches`` batches: when a pass over the shards gives fewer (samples skipped
    or lost in a truncated shard, uneven shards), the epoch continues with the next pass (seeded from the
    epoch and the pass number), so the epoch ends where Lightning expects it, with validation, checkpoints and
    the same step count on every rank. A pass that gives no batch at all raises :class:`DataSkipError`.
    """

    def __init__(self, make_loader: Callable[[int], Iterable[Any]], num_batches: int, seed: int,
                 epoch: Callable[[], int], progress: Callable[[], int] | None = None) -> None:
        self.make_loader, self.num_batches, self.seed = make_loader, int(num_batches), int(seed)
        self.epoch, self.progress = epoch, progress
        self._skip = 0
        self._resume_epoch: int | None = None
        self._yielded = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        epoch = int(self.epoch())
        skip = self._skip if self._resume_epoch == epoch else 0
        self._skip, self._resume_epoch = 0, None
        self._yielded = skip
        for i, batch in enumerate(self._epoch_batches(epoch)):
            if i < skip:
                continue
            self._yielded += 1
            yield batch

    def _epoch_batches(self, epoch: int) -> Iterator[Any]:
        """The epoch's ``num_batches`` batches: pass 0 from ``epoch_seed(seed, epoch)``, then further passes."""
        n, p = 0, 0
        while n < self.num_batches:
            seed = (epoch_seed(self.seed, epoch) + p * 7_919) % (2**31)
            got = 0
            for batch in self.make_loader(seed):
                got += 1
                n += 1
                yield batch
                if n >= self.num_batches:
                    return
            if got == 0:
                raise DataSkipError(
                    f"the training shards gave no batch in a whole pass (epoch {epoch}, pass {p}): every sample "
                    "was skipped or lost, or the shards hold fewer samples than one batch; see the skipped "
                    "samples in the warnings"
                )
            p += 1

    def state_dict(self) -> dict[str, int]:
        done = self.progress() if self.progress is not None else self._yielded
        return loader_state(self.epoch(), done, self.num_batches, self.seed)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_epoch = int(state["epoch"])
        self._skip = int(state["batches_done"])
