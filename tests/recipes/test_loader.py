"""recipes/data/loader.py: the resumable loader is torchdata's StatefulDataLoader; a state taken mid-epoch and
loaded into a new loader (as a resumed run does) gives exactly the batches, and the per-sample augmentation, the
uninterrupted pass would have given, with and without worker processes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from recipes.data.loader import ResumableDataLoader, ResumableSampler, train_collate

N, BATCH = 22, 4  # 5 full batches (drop_last)


class _Noisy(Dataset):
    """Item: (index, a random draw): the draw stands for random augmentation."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, float(torch.rand(()))


def _loader(workers: int, seed: int = 5) -> ResumableDataLoader:
    return ResumableDataLoader(_Noisy(), sampler=ResumableSampler(N, seed=seed), batch_size=BATCH, drop_last=True,
                               num_workers=workers, collate_fn=train_collate, persistent_workers=workers > 0)


def _rows(batches: list) -> list[tuple[int, float]]:
    return [(int(i), float(v)) for b in batches for i, v in zip(b[0], b[1])]


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_state_resumes_the_same_batches_and_augmentation(workers: int) -> None:
    ref = _loader(workers)
    ref.sampler.set_epoch(1)
    full = _rows(list(ref))
    assert len(full) == 5 * BATCH and len({i for i, _ in full}) == 5 * BATCH

    run = _loader(workers)
    run.sampler.set_epoch(1)
    it = iter(run)
    seen = [next(it) for _ in range(2)]
    state = run.state_dict()
    assert isinstance(run, StatefulDataLoader)
    assert (state["epoch"], state["batches_done"], state["seed"]) == (1, 2, 5) and "loader" in state
    del it, run

    resumed = _loader(workers)  # a new process: epoch 0 until the state says otherwise
    resumed.load_state_dict(state)
    assert resumed.sampler.epoch == 1
    again = resumed.state_dict()  # a checkpoint before the first resumed batch records the same position
    assert (again["epoch"], again["batches_done"]) == (1, 2)
    rest = list(resumed)
    assert _rows(seen) + _rows(rest) == full  # same samples, same order, same random draws
    assert resumed.state_dict() == {"epoch": 2, "batches_done": 0, "seed": 5}  # a finished pass: next epoch


def test_finished_epoch_state_starts_the_next_epoch_whole() -> None:
    run = _loader(0)
    run.sampler.set_epoch(3)
    list(run)
    state = run.state_dict()
    assert state == {"epoch": 4, "batches_done": 0, "seed": 5}
    ref = _loader(0)
    ref.sampler.set_epoch(4)
    resumed = _loader(0)
    resumed.load_state_dict(state)
    assert _rows(list(resumed)) == _rows(list(ref))


def test_record_without_torchdata_state_skips_the_batches_it_names() -> None:
    """Checkpoints written by the hand-written loader before torchdata hold only epoch/batches_done/seed."""
    ref = _loader(0)
    ref.sampler.set_epoch(2)
    full = _rows(list(ref))
    old = _loader(0)
    old.load_state_dict({"epoch": 2, "batches_done": 3, "seed": 5})
    assert _rows(list(old)) == full[3 * BATCH:]
    assert _rows(list(old)) == full  # the skip applies to one pass only


def test_state_before_the_first_batch_starts_no_workers() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _loader(2)
    assert not [w for w in caught if "set_vital" in str(w.message)]  # torchdata's deprecated call is silenced
    assert run.state_dict() == {"epoch": 0, "batches_done": 0, "seed": 5} and run._iterator is None
