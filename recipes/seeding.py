"""Reproducible resume: every random draw of a training step depends on (seed, step), of a sample on (seed, epoch,
index), never on how many steps this process has run or which worker loaded the sample."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


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
