"""Resumable map-style loading over torchdata's ``StatefulDataLoader`` and ``StatefulDistributedSampler``.

torchdata (the ``[train]`` extra) keeps the loader's position: ``StatefulDataLoader.state_dict()`` records how
far the current pass got (for worker processes too: the state of the batch last handed out, not of the indices
the workers prefetched) and ``load_state_dict`` continues from the next unseen batch. Lightning saves
``state_dict()`` of a train loader that has one into the checkpoint and calls ``load_state_dict`` before iterating
again, so a mid-epoch ``fit --ckpt_path last`` continues the same permutation from the next unseen batch.

What stays ours, and why:

- :class:`ResumableSampler` extends torchdata's ``StatefulDistributedSampler`` (torch's ``DistributedSampler``
  permutation: seeded by seed + epoch, padded and strided by rank) with per-sample seeds: it yields
  ``(index, derived_seed(seed, epoch, index))`` for a ``recipes.common.SeededItems`` dataset, so a sample's random
  augmentation depends on the epoch and the sample only, not on the number of workers or where a run resumed
  (torchdata restores positions, not the random streams of the workers). Its state also holds the epoch:
  Lightning creates the resumed loader's iterator (and so its workers' first indices) before it calls
  ``set_epoch``.
- :class:`ResumableDataLoader` wraps the torchdata state in the record the checkpoints have always held
  (``epoch``, ``batches_done``, ``seed``; torchdata's own state under ``loader``), records a finished pass as
  the start of the next epoch (Lightning stops a sized loader after its last batch without asking for another,
  so torchdata would resume it at its end, with nothing left to load), and loads records without ``loader``
  (checkpoints written before the move to torchdata) by skipping the batches they name.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

__all__ = [
    "ResumableDataLoader", "ResumableSampler", "dist_info", "skip_none_collate", "split_loader", "train_collate",
]


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableSampler(StatefulDistributedSampler):
    """Epoch-seeded permutation (or order) of ``range(n)``, padded to a multiple of the world size and strided by
    rank (the rank and world size of the process group when it is made) so the ranks see disjoint samples.

    State (torchdata's ``Stateful``): ``{"epoch", "yielded"}``; after ``load_state_dict`` the next pass starts
    after ``yielded`` samples of that epoch's permutation, once (``set_epoch`` to another epoch drops it). With
    ``with_seeds`` it yields ``(index, derived_seed(seed, epoch, index))`` (see the module docstring)."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, with_seeds: bool = False) -> None:
        rank, world = dist_info()
        super().__init__(range(int(n)), num_replicas=world, rank=rank, shuffle=bool(shuffle), seed=int(seed))
        self.n, self.with_seeds = int(n), bool(with_seeds)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.next_yielded = None  # a position recorded in another epoch does not apply to this one
        super().set_epoch(int(epoch))

    def __iter__(self) -> Iterator[Any]:
        if not self.with_seeds:
            return super().__iter__()
        from recipes.common import derived_seed

        epoch, seed = self.epoch, self.seed
        return ((i, derived_seed(seed, epoch, i)) for i in super().__iter__())

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), **super().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        super().load_state_dict(state)


def loader_state(epoch: int, batches_done: int, num_batches: int, seed: int) -> dict[str, int]:
    """A resumable loader's checkpoint record (Lightning's stateful-loader ``state_dict``): the epoch and the
    batches trained in it; a finished epoch is recorded as the start of the next one."""
    if batches_done >= num_batches:
        epoch, batches_done = epoch + 1, 0
    return {"epoch": int(epoch), "batches_done": int(batches_done), "seed": int(seed)}


class ResumableDataLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` over a ``ResumableSampler``; ``state_dict()`` is
    ``{"epoch", "batches_done", "seed"}`` plus, mid-epoch, torchdata's state under ``"loader"``.

    The dataset is wrapped in ``recipes.common.SeededItems`` and the sampler yields per-sample seeds, so random
    augmentation is the same for any number of workers and after a mid-epoch resume."""

    def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
        from recipes.common import SeededItems

        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, which torch 2.14 deprecates
            warnings.filterwarnings("ignore", message=".*set_vital.*deprecated", category=UserWarning)
            super().__init__(SeededItems(dataset), *args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs sampler=ResumableSampler(...)")
        self.sampler.with_seeds = True
        self._yielded = 0
        self._resumed_at = 0

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        self._yielded, self._resumed_at = self._resumed_at, 0
        for batch in batches:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        state = loader_state(self.sampler.epoch, self._yielded, len(self), self.sampler.seed)
        if state["batches_done"]:  # mid-epoch: an iterator exists (asking for a state without one starts one)
            state["loader"] = super().state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.set_epoch(int(state["epoch"]))
        done = int(state["batches_done"])
        if "loader" in state:
            super().load_state_dict(state["loader"])
        else:  # a record without torchdata's state: start the epoch after the batches it names
            super().load_state_dict({})
            if done:
                self.sampler.load_state_dict({"epoch": state["epoch"], "yielded": done * int(self.batch_size or 1)})
        self._yielded = self._resumed_at = done  # a state asked for before the next batch says the same


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


def split_loader(ds: Any, collate: Any, train: bool, batch_size: int, num_workers: int,
                 seed: int = 0) -> torch.utils.data.DataLoader:
    """The loader of one split of a detection/segmentation data module. Training: a
    :class:`ResumableDataLoader` (seeded permutation per epoch, augmentation seeded per sample, so a mid-epoch
    resume continues with the batches and augmentation an uninterrupted run would have had) that keeps full
    batches, none of size one (``collate(..., min_size=2)``, ``drop_last`` when there is more than one batch):
    the heads' BatchNorm fails in training on a batch of one, the last one or one that shrank after skipping
    (UPerNet's pyramid pooling runs BatchNorm on 1x1 maps). Evaluation: a plain ``DataLoader`` in order."""
    kw = dict(batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0)
    if not train:
        return torch.utils.data.DataLoader(ds, shuffle=False, collate_fn=collate, **kw)
    if batch_size > 1:
        collate = functools.partial(collate, min_size=2)
    return ResumableDataLoader(ds, sampler=ResumableSampler(len(ds), shuffle=True, seed=seed), collate_fn=collate,
                               drop_last=len(ds) > batch_size, **kw)
