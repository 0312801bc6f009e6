"""Test helper for test_resume.py: slows each training step so the parent can SIGKILL mid-epoch, and records
which sample batches each process trained on."""

from __future__ import annotations

import os
import time

import lightning.pytorch as pl


class SlowSteps(pl.Callback):
    def __init__(self, seconds: float = 0.0, record: str = "") -> None:
        self.seconds, self.record = seconds, record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.record:
            with open(self.record, "a") as f:
                f.write(f"{trainer.current_epoch} {trainer.global_step} {float(batch[0].float().sum()):.4f}\n")
                f.flush()
                os.fsync(f.fileno())
        time.sleep(self.seconds)
