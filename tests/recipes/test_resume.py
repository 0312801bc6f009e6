"""Kill-and-resume, for real: ``tools/train.py fit`` in a subprocess is SIGKILLed mid-epoch after its first
step checkpoint, then ``fit --ckpt_path last`` finishes. The resumed run ends at the same optimizer step as an
uninterrupted run, and it trains exactly on the batches the killed run had not reached: for the embedded npz
the resumable sampler continues the same permutation; for webdataset shards the epoch's stream is rebuilt from
its seed and the batches already trained are read again and dropped. SLOW-ish: three CLI runs of a tiny timm
model per data kind, ~40-60 s each on 2 idle cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH, EPOCHS, EVERY = 8, 2, 3  # 128 train images / batch 16


NPZ_DATA = """  class_path: recipes.data.NpzData
  init_args: {num_classes: 10, img_size: 32, batch_size: 16, eval_batch_size: 64, num_workers: 0,
              train_limit: 128, scale: [1.0, 1.0], hflip: 0.0}"""
SHARD_DATA = """  class_path: recipes.data.ShardData
  init_args: {{train_shards: {shards}, num_classes: 10, img_size: 32, batch_size: 16, eval_batch_size: 64,
              num_workers: {workers}, shuffle_buffer: 64, scale: [1.0, 1.0], hflip: 0.0}}"""


def _write_shards(d: Path, n: int = 128, per: int = 32) -> None:
    """The first ``n`` embedded Fashion-MNIST train images as PNG shards + meta.json."""
    import io

    import webdataset as wds
    from PIL import Image

    from recipes.data.classification import DEFAULT_NPZ

    z = np.load(DEFAULT_NPZ)
    d.mkdir(parents=True)
    for s in range(n // per):
        with wds.TarWriter(str(d / f"train-{s:06d}.tar")) as w:
            for i in range(s * per, (s + 1) * per):
                buf = io.BytesIO()
                Image.fromarray(z["x_train"][i]).save(buf, format="PNG")
                w.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": str(int(z["y_train"][i])).encode()})
    (d / "meta.json").write_text(json.dumps({"num_classes": 10, "samples": n}))


def _config(tmp: Path, name: str, sleep: float, data: str = NPZ_DATA) -> Path:
    cfg = f"""
seed_everything: 0
ckpt_every_n_steps: {EVERY}
no_progress_bar: true
trainer:
  default_root_dir: {tmp / name}
  accelerator: cpu
  devices: 1
  max_epochs: {EPOCHS}
  limit_val_batches: 1
  log_every_n_steps: 1
  enable_model_summary: false
  use_distributed_sampler: false
  callbacks:
    - class_path: _slow_callback.SlowSteps
      init_args: {{seconds: {sleep}, record: {tmp / (name + '.batches')}}}
model:
  class_path: recipes.classification.ClassificationModule
  init_args: {{model_name: test_resnet, num_classes: 10, img_size: 32, lr: 0.003}}
data:
{data}
"""
    p = tmp / f"{name}.yaml"
    p.write_text(cfg)
    return p


def _cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "train.py"), "fit", "--config", str(cfg), *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{Path(__file__).parent}{os.pathsep}{REPO}")
    return env


def _step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def _batches(path: Path) -> list[tuple[int, int, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()]


# shards with 0 workers take the same skip path (tests/recipes/test_data.py replays it without Lightning)
@pytest.mark.parametrize("kind", ["npz", "shards-2-workers"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, kind):
    total = STEPS_PER_EPOCH * EPOCHS
    data = NPZ_DATA
    if kind != "npz":
        _write_shards(tmp_path / "shards")
        data = SHARD_DATA.format(shards=tmp_path / "shards", workers=2 if kind.endswith("workers") else 0)
    # uninterrupted reference
    ref = subprocess.run(_cmd(_config(tmp_path, "ref", 0.0, data)), env=_env(), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert _step(tmp_path / "ref" / "checkpoints" / "last.ckpt") == total

    # killed run: SIGKILL right after the first step checkpoint (step 3 of 8, mid-epoch 0)
    cfg = _config(tmp_path, "run", 0.6, data)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_cmd(cfg), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not last.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < 240, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _step(last)
    assert 0 < killed_at < STEPS_PER_EPOCH  # a mid-epoch checkpoint
    ck = torch.load(last, map_location="cpu", weights_only=False)
    loader_state = ck["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["epoch"] == 0 and loader_state["batches_done"] == killed_at

    # resume
    res = subprocess.run(_cmd(cfg, "--ckpt_path", "last"), env=_env(), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _step(last) == total
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["global_step"] == total

    # data position: after the resume the run trains on exactly the batches the reference saw at those steps
    ref_b = _batches(tmp_path / "ref.batches")
    run_b = _batches(tmp_path / "run.batches")
    assert len(ref_b) == total
    resumed = [b for b in run_b if int(b[1]) > killed_at][-(total - killed_at):]
    assert [b[1] for b in resumed] == [str(s) for s in range(killed_at + 1, total + 1)]
    assert [b[2] for b in resumed] == [b[2] for b in ref_b[killed_at:]]


# ---------------------------------------------------------------------------------------------------------------
# exact resume, in-process: random augmentation (flip, crop scale), stochastic depth, 0 and 2 workers


class _Killed(Exception):
    pass


class _Record(pl.Callback):
    """Per optimizer step: the training loss and the sum of the augmented batch; raises ``_Killed`` at the start
    of step ``stop_at + 1`` (after the step-``stop_at`` checkpoint was written), like a SIGKILL there."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.loss, self.inputs = stop_at, {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.stop_at:
            raise _Killed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.loss[trainer.global_step] = float(outputs["loss"])
        self.inputs[trainer.global_step] = float(batch[0].double().sum())


def _fit_inprocess(root: Path, workers: int, stop_at: int | None = None, resume: bool = False):
    from recipes.checkpoint import resume_checkpoint
    from recipes.classification import ClassificationModule
    from recipes.common import AtomicCheckpointIO, default_callbacks
    from recipes.data import NpzData

    pl.seed_everything(0, verbose=False)  # what a new process does
    dm = NpzData(num_classes=10, img_size=32, batch_size=16, eval_batch_size=64, num_workers=workers, train_limit=64,
                 scale=(0.3, 1.0), hflip=0.5)
    module = ClassificationModule("test_resnet", num_classes=10, img_size=32, lr=3e-3, drop_path_rate=0.3)
    rec = _Record(stop_at)
    cbs = default_callbacks(root, every_n_train_steps=EVERY, monitor="val/acc1", mode="max", progress_bar=False,
                            lr_monitor=False)
    trainer = pl.Trainer(default_root_dir=root, max_epochs=2, limit_val_batches=1, callbacks=[rec, *cbs],
                         logger=False, plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu")
    ckpt = str(resume_checkpoint(root / "checkpoints")) if resume else None
    if stop_at is None:
        trainer.fit(module, dm, ckpt_path=ckpt)
    else:
        with pytest.raises(_Killed):
            trainer.fit(module, dm, ckpt_path=ckpt)
    return rec, module.model.state_dict()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, workers):
    """The losses and inputs of every step after the interruption (mid-epoch 0, then across the epoch boundary)
    and the final weights equal the uninterrupted run's: model, optimizer, schedule, sample order, augmentation
    (per-sample seeds) and stochastic depth (per-step seeds) all continue where they were."""
    torch.set_num_threads(1)
    ref, ref_w = _fit_inprocess(tmp_path / "ref", workers)
    assert sorted(ref.loss) == list(range(1, 9))
    killed, _ = _fit_inprocess(tmp_path / "run", workers, stop_at=EVERY)
    assert sorted(killed.loss) == [1, 2, 3]
    assert killed.loss == {k: ref.loss[k] for k in (1, 2, 3)}  # same run up to the kill
    resumed, res_w = _fit_inprocess(tmp_path / "run", workers, resume=True)
    assert sorted(resumed.loss) == list(range(EVERY + 1, 9))
    assert resumed.inputs == {k: ref.inputs[k] for k in resumed.inputs}  # same augmented batches
    assert resumed.loss == {k: ref.loss[k] for k in resumed.loss}
    for k, v in ref_w.items():
        assert torch.equal(res_w[k], v), k
