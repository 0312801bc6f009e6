"""Resumable map-style loading: a sampler that shards by rank and skips the batches already trained on.

Lightning saves ``state_dict()`` of a train loader that has one (``_Stateful``) into the checkpoint and calls
``load_state_dict`` before iterating again, so a mid-epoch ``fit --ckpt_path last`` continues the same
permutation from the next unseen batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["ResumableDataLoader", "ResumableSampler", "dist_info", "skip_none_collate", "train_collate"]


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableSampler(Sampler[int]):
    """Epoch-seeded permutation (or order), padded to a multiple of ``world_size`` and strided by rank so the
    ranks see disjoint samples; ``skip`` leading indices of the current epoch (set on resume). With
    ``with_seeds`` it yields ``(index, derived_seed(seed, epoch, index))`` for a ``recipes.common.SeededItems``
    dataset: each sample's augmentation then depends on the epoch and the sample only."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, with_seeds: bool = False) -> None:
        self.n, self.shuffle, self.seed, self.with_seeds = int(n), bool(shuffle), int(seed), bool(with_seeds)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        rank, world = dist_info()
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if world > 1:
            pad = (-len(idx)) % world
            idx = (idx + idx[:pad])[rank::world]
        return idx

    def __iter__(self) -> Iterator[int]:
        idx = self._indices()
        skip, self.skip = self.skip, 0
        if self.with_seeds:
            from recipes.common import derived_seed

            return iter([(i, derived_seed(self.seed, self.epoch, i)) for i in idx[skip:]])
        return iter(idx[skip:])

    def __len__(self) -> int:
        _, world = dist_info()
        return -(-self.n // world)


def loader_state(epoch: int, batches_done: int, num_batches: int, seed: int) -> dict[str, int]:
    """A resumable loader's checkpoint record (Lightning's stateful-loader ``state_dict``): the epoch and the
    batches trained in it; a finished epoch is recorded as the start of the next one."""
    if batches_done >= num_batches:
        epoch, batches_done = epoch + 1, 0
    return {"epoch": int(epoch), "batches_done": int(batches_done), "seed": int(seed)}


class ResumableDataLoader(DataLoader):
    """DataLoader over a ``ResumableSampler`` with ``state_dict``/``load_state_dict`` (epoch + batches done).

    ``progress`` returns how many batches of the current epoch were trained on (the datamodule passes the
    trainer's batch progress: Lightning prefetches one batch, so the loader's own count would be one ahead).
    The dataset is wrapped in ``recipes.common.SeededItems`` and the sampler yields per-sample seeds, so random
    augmentation is the same for any number of workers and after a mid-epoch resume."""

    def __init__(self, dataset: Any, *args: Any, progress: Callable[[], int] | None = None, **kwargs: Any) -> None:
        from recipes.common import SeededItems

        super().__init__(SeededItems(dataset), *args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs sampler=ResumableSampler(...)")
        self.sampler.with_seeds = True
        self.progress = progress
        self._yielded = 0

    def __iter__(self) -> Iterator[Any]:
        self._yielded = self.sampler.skip // max(1, self.batch_size or 1)
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        done = self.progress() if self.progress is not None else self._yielded
        return loader_state(self.sampler.epoch, done, len(self), self.sampler.seed)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = int(state["epoch"])
        self.sampler.skip = int(state["batches_done"]) * int(self.batch_size or 1)


def skip_none_collate(batch: list[Any], min_size: int = 1) -> Any:
    """Default collate after dropping ``None`` samples (unreadable items that the dataset skipped); ``None``
    when fewer than ``min_size`` samples are left. Training loaders use ``min_size=2``
    (:data:`train_collate`): a batch that shrank to one sample would crash BatchNorm in training mode
    ("Expected more than 1 value per channel"), so that sample waits for the next epoch instead."""
    from torch.utils.data import default_collate

    batch = [b for b in batch if b is not None]
    if len(batch) < max(1, min_size):
        return None
    return default_collate(batch)


train_collate = functools.partial(skip_none_collate, min_size=2)
"""``skip_none_collate`` for training batches (never of size one); picklable for DataLoader workers."""
