"""recipes.data: the embedded npz, image folders, webdataset shards (bad samples counted and skipped,
clear errors before training), resumable sampler, disjoint shard split."""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

import recipes.data.loader as loader_mod
import recipes.data.shards as shards_mod
from recipes.data import ImageFolderData, NpzData, ResumableSampler, ShardData
from recipes.data.classification import DEFAULT_NPZ
from recipes.data.shards import SplitShards


def _png(v: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), v, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_embedded_subset_is_stratified_and_loads():
    z = np.load(DEFAULT_NPZ)
    assert z["x_train"].shape == (10000, 28, 28) and z["x_test"].shape == (2000, 28, 28)
    assert np.bincount(z["y_train"]).tolist() == [1000] * 10 and np.bincount(z["y_test"]).tolist() == [200] * 10
    assert len(z["classes"]) == 10 and str(z["classes"][9]) == "Ankle boot"
    dm = NpzData(img_size=32, batch_size=16, num_workers=0, num_classes=10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9000, 1000, 2000)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) < 10
    xv, _ = next(iter(dm.val_dataloader()))
    # eval: deterministic resize of a real image, normalized with the Fashion-MNIST statistics
    assert torch.allclose(xv[:, 0], xv[:, 1]) and -1.0 < float(xv.mean()) < 1.0


def test_npz_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        NpzData(path=str(tmp_path / "missing.npz")).setup("fit")
    with pytest.raises(ValueError, match="10 classes .* num_classes=5"):
        NpzData(num_classes=5, num_workers=0).setup("fit")
    empty = tmp_path / "empty.npz"
    np.savez(empty, x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.uint8),
             x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match="train set is empty"):
        NpzData(path=str(empty), val_per_class=0).setup("fit")


def _folder(tmp_path):
    for split in ("train", "val"):
        for c, v in (("a", 30), ("b", 200)):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"{i}.png").write_bytes(_png(v))
    (tmp_path / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return tmp_path


def test_image_folder_skips_unreadable_image(tmp_path, caplog):
    root = _folder(tmp_path)
    dm = ImageFolderData(root=str(root), img_size=16, batch_size=7, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 2 and dm.classes == ["a", "b"] and len(dm.train_set) == 7
    with caplog.at_level(logging.WARNING, logger="recipes"):
        batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0][0].shape == (6, 3, 16, 16)  # 7 files, 1 unreadable
    assert dm.skip_counter.value == 1
    assert "unreadable image" in caplog.text and "broken.png" in caplog.text
    with pytest.raises(FileNotFoundError, match="no folder"):
        ImageFolderData(root=str(tmp_path / "nope")).setup("fit")
    with pytest.raises(ValueError, match="2 classes .* num_classes=3"):
        ImageFolderData(root=str(root), num_classes=3).setup("fit")


def _write_shards(d, n_shards=4, per=6, corrupt=(), truncate=None):
    d.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with wds.TarWriter(str(d / f"train-{s:06d}.tar")) as w:
            for _ in range(per):
                img = b"garbage, not an image" if k in corrupt else _png(k % 250)
                w.write({"__key__": f"s{k:05d}", "png": img, "cls": str(k % 2).encode()})
                k += 1
    if truncate is not None:
        p = d / f"train-{truncate:06d}.tar"
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2 + 100])
    (d / "meta.json").write_text(json.dumps({"num_classes": 2, "classes": ["even", "odd"], "samples": k}))
    return k


def test_shards_corrupt_and_truncated_samples_are_counted_and_skipped(tmp_path):
    n = _write_shards(tmp_path / "sh", corrupt=(1, 7), truncate=3)
    dm = ShardData(train_shards=str(tmp_path / "sh"), val_shards=str(tmp_path / "sh"), img_size=16, batch_size=1,
                   num_workers=0, shuffle_buffer=0, epoch_samples=n)
    dm.setup("fit")
    t0 = time.perf_counter()
    labels = [int(y) for _, y in dm.val_dataloader()]
    dt = time.perf_counter() - t0
    # 24 samples: 2 corrupt images; the truncated last shard loses its tail (>=1 error)
    assert 12 + 6 - 2 <= len(labels) < n - 2
    assert dm.skip_counter.value >= 3
    assert dt < 2.0  # no 0.5 s sleep per bad sample (webdataset's warn_and_continue)


def test_shards_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no webdataset shards"):
        ShardData(train_shards=str(tmp_path / "missing-{000000..000003}.tar")).setup("fit")
    _write_shards(tmp_path / "sh")
    with pytest.raises(ValueError, match="2 classes .* num_classes=10"):
        ShardData(train_shards=str(tmp_path / "sh"), num_classes=10).setup("fit")


def test_shard_epoch_length_and_batches(tmp_path):
    n = _write_shards(tmp_path / "sh")
    dm = ShardData(train_shards=str(tmp_path / "sh"), img_size=16, batch_size=4, num_workers=0, shuffle_buffer=8)
    dm.setup("fit")
    dl = dm.train_dataloader()
    assert len(dl) == n // 4
    batches = list(dl)
    assert len(batches) == n // 4 and batches[0][0].shape == (4, 3, 16, 16) and batches[0][1].dtype == torch.int64


def test_resumable_sampler_rank_split_and_skip(monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setattr(loader_mod, "dist_info", lambda r=rank: (r, 2))
        s = ResumableSampler(11, shuffle=True, seed=3)
        s.set_epoch(2)
        seen.append(list(s))
        assert len(s) == 6
    assert len(seen[0]) == len(seen[1]) == 6
    assert set(seen[0]) | set(seen[1]) == set(range(11))  # 11 + 1 padded index
    monkeypatch.setattr(loader_mod, "dist_info", lambda: (0, 1))
    a = ResumableSampler(20, seed=1)
    a.set_epoch(1)
    full = list(a)
    a.load_state_dict({"epoch": 1, "yielded": 8})
    assert list(a) == full[8:] and list(a) == full  # the position applies once
    a.load_state_dict({"epoch": 1, "yielded": 8})
    a.set_epoch(2)
    assert len(list(a)) == 20  # a position in another epoch does not apply
    b = ResumableSampler(20, seed=1)
    assert list(b) != full  # another epoch, another permutation


def test_split_shards_disjoint_over_ranks_and_workers(monkeypatch):
    urls = [f"u{i}" for i in range(10)]
    got = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setattr(shards_mod, "dist_info", lambda r=rank: (r, 2))
            monkeypatch.setattr(shards_mod, "get_worker_info",
                                lambda w=worker: type("W", (), {"id": w, "num_workers": 2})())
            src = iter(SplitShards(urls, shuffle=True, resampled=True, seed=5))
            first_pass = [next(src)["url"] for _ in range(len(urls[rank::2][worker::2]))]
            got.append(first_pass)
    flat = [u for g in got for u in g]
    assert sorted(flat) == sorted(urls) and len(set(flat)) == len(urls)


def test_skipped_samples_reach_the_logged_metrics(tmp_path):
    import lightning.pytorch as pl

    from recipes.classification import ClassificationModule
    from recipes.common import default_callbacks, default_loggers

    n = _write_shards(tmp_path / "sh", n_shards=2, per=6, corrupt=(2, 8))
    dm = ShardData(train_shards=str(tmp_path / "sh"), img_size=32, batch_size=2, num_workers=0, shuffle_buffer=0,
                   epoch_samples=n - 2, max_skip_fraction=0.5)
    cbs = default_callbacks(tmp_path, every_n_train_steps=0, monitor="val/acc1", mode="max", progress_bar=False)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_val_batches=1, callbacks=cbs,
                         logger=default_loggers(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False)
    trainer.fit(ClassificationModule("test_resnet", num_classes=2, img_size=32), dm)
    assert trainer.global_step == (n - 2) // 2
    assert float(trainer.callback_metrics["data/skipped"]) >= 2
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["skipped_samples"] >= 2 and m["final"]["data/skipped"] >= 2


def test_shard_epochs_differ_and_replay_exactly(tmp_path):
    """Regression: webdataset re-seeds its shuffles identically on every pass, so every epoch had the same
    order. Now each epoch has its own order, an epoch replays identically, and a loader restored from
    ``{"epoch": e, "batches_done": k}`` continues with batch k of epoch e."""
    _write_shards(tmp_path / "sh", n_shards=4, per=6)
    dm = ShardData(train_shards=str(tmp_path / "sh"), img_size=16, batch_size=4, num_workers=0, shuffle_buffer=8,
                   scale=(1.0, 1.0), hflip=0.0)
    dm.setup("fit")
    dl = dm.train_dataloader()
    epoch = {"e": 0}
    dl.epoch = lambda: epoch["e"]

    def run():
        return [(x.mean(dim=(1, 2, 3)).tolist(), y.tolist()) for x, y in dl]

    e0 = run()
    epoch["e"] = 1
    e1 = run()
    assert len(e0) == len(e1) == 6
    assert e0 != e1
    assert run() == e1
    dl.load_state_dict({"epoch": 1, "batches_done": 2})
    assert run() == e1[2:]
    assert run() == e1  # the skip applies to one pass only
    dl.load_state_dict({"epoch": 3, "batches_done": 2})
    assert run() == e1  # a state for another epoch does not skip this one


# ------------------------------------------------------------------------------------ no silent failures


def _fit(tmp_path, dm, epochs=1, **kw):
    import lightning.pytorch as pl

    from recipes.classification import ClassificationModule
    from recipes.common import default_callbacks, default_loggers

    cbs = default_callbacks(tmp_path, every_n_train_steps=0, monitor="val/acc1", mode="max", progress_bar=False)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=epochs, callbacks=cbs, logger=default_loggers(tmp_path),
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         log_every_n_steps=1, **kw)
    trainer.fit(ClassificationModule("test_resnet", num_classes=2, img_size=16), dm)
    return trainer


def _image_folder(root, n_good=4, n_broken=0, val=2):
    for split, n, broken in (("train", n_good, n_broken), ("val", val, 0)):
        for c, v in (("a", 30), ("b", 200)):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(_png(v))
            for i in range(broken):
                (d / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def test_all_images_unreadable_stops_with_a_clear_error(tmp_path):
    """Regression: every training image unreadable gave "trained 0 steps" and went on to test/export."""
    from recipes.common import DataSkipError

    root = _image_folder(tmp_path / "data", n_good=0, n_broken=3)
    for frac in (0.05, 1.0):  # the threshold, and (threshold off) the empty epoch
        dm = ImageFolderData(root=str(root), img_size=16, batch_size=2, num_workers=0, max_skip_fraction=frac)
        with pytest.raises(DataSkipError, match="skipped|trained on nothing") as err:
            _fit(tmp_path / f"run{frac}", dm)
        assert "unreadable image" in str(err.value)
    m = json.loads((tmp_path / "run1.0" / "metrics.json").read_text())
    assert "trained on nothing" in m["error"] and m["skipped_samples"] == 6


def test_skip_threshold_stops_the_run_and_skips_are_counted_once_per_file(tmp_path):
    """Regression: any share of unreadable files trained on silently, and a bad file was counted again in
    every epoch. Now: over max_skip_fraction stops; under it, each file counts once, with its reason, in
    metrics.json."""
    from recipes.common import DataSkipError

    root = _image_folder(tmp_path / "data", n_good=9, n_broken=1)  # 2 of 20 train images unreadable: 10%
    with pytest.raises(DataSkipError, match=r"2 of 20 train samples were skipped \(10.0%.*max_skip_fraction"):
        _fit(tmp_path / "strict", ImageFolderData(root=str(root), img_size=16, batch_size=4, num_workers=0))
    dm = ImageFolderData(root=str(root), img_size=16, batch_size=4, num_workers=0, max_skip_fraction=0.2)
    trainer = _fit(tmp_path / "ok", dm, epochs=3)
    assert trainer.current_epoch == 3 and dm.skip_counter.value == 2
    m = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert m["skipped_samples"] == 2 and m["final"]["data/skipped"] == 2
    assert m["skipped"]["by_reason"] == {"unreadable image": 2} and m["skipped"]["by_split"] == {"train": 2}
    assert sorted(e.split("/")[-2:][0] + "/" + e.split("/")[-1].split(":")[0] for e in
                  m["skipped"]["examples"]["unreadable image"]) == ["a/broken0.png", "b/broken0.png"]


def test_skip_counter_dedups_across_dataloader_workers(tmp_path):
    root = _image_folder(tmp_path / "data", n_good=3, n_broken=1)
    dm = ImageFolderData(root=str(root), img_size=16, batch_size=2, num_workers=2, max_skip_fraction=1.0)
    dm.setup("fit")
    for _ in range(2):  # two epochs, each with fresh worker processes
        list(dm.train_dataloader())
    assert dm.skip_counter.value == 2
    assert {r["key"].rsplit("/", 2)[-2] for r in dm.skip_counter.records()} == {"a", "b"}


def _make_tool_shards(tmp_path, load_tool, n=24, per=8):
    tool = load_tool("make_shards")
    samples = [("png", _png(10 * i), i % 2) for i in range(n)]
    tool.write_split(samples, tmp_path / "sh", "train", per, ["even", "odd"])
    return tmp_path / "sh" / "train"


def test_truncated_shard_lost_samples_are_counted(tmp_path, load_tool):
    """Regression: a truncated shard lost most of its samples but counted one error."""
    d = _make_tool_shards(tmp_path, load_tool)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["shard_samples"] == {"train-000000.tar": 8, "train-000001.tar": 8, "train-000002.tar": 8}
    p = d / "train-000001.tar"
    p.write_bytes(p.read_bytes()[: 3 * 1024 + 700])  # cut inside the 2nd of 8 samples (png + cls: 2 KiB each)
    dm = ShardData(train_shards=str(d), val_shards=str(d), img_size=16, batch_size=1, num_workers=0,
                   shuffle_buffer=0, max_skip_fraction=1.0)
    dm.setup("fit")
    for _ in range(2):  # counted once, not once per pass
        got = len(list(dm.val_dataloader()))
        assert got + dm.skip_counter.value == 24
    assert 16 < got < 24 - 4
    rec = [r for r in dm.skip_counter.records() if r["key"].endswith("train-000001.tar")]
    assert len(rec) == 1 and rec[0]["reason"] == "lost in a truncated or corrupt shard"
    assert rec[0]["detail"].startswith(f"{8 - rec[0]['n']} of 8 samples readable")


def test_short_shard_epoch_is_filled_and_ends_with_validation(tmp_path, load_tool):
    """Regression: a pass that ended before the epoch's length (a truncated shard) ended the epoch early,
    so validation never ran and "best" fell back to "last"."""
    from recipes.common import DataSkipError

    d = _make_tool_shards(tmp_path, load_tool)
    p = d / "train-000002.tar"
    p.write_bytes(p.read_bytes()[: 2 * 1024 + 700])
    dm = ShardData(train_shards=str(d), val_shards=str(d), img_size=16, batch_size=4, num_workers=0,
                   shuffle_buffer=0, max_skip_fraction=0.9)
    trainer = _fit(tmp_path / "run", dm, limit_val_batches=1)
    assert trainer.global_step == 24 // 4
    assert "val/acc1" in trainer.callback_metrics
    assert trainer.checkpoint_callback.best_model_path
    with pytest.raises(DataSkipError, match="of 24 train samples were skipped"):  # ~7 of 24 lost > 5%
        _fit(tmp_path / "strict", ShardData(train_shards=str(d), img_size=16, batch_size=4, num_workers=0,
                                            shuffle_buffer=0, max_skip_fraction=0.05), limit_val_batches=1)


def test_train_batches_are_never_of_size_one(tmp_path):
    """Regression: a batch that shrank to one sample after skipping crashed BatchNorm models."""
    root = _image_folder(tmp_path / "data", n_good=1, n_broken=1)  # 4 train files, 2 unreadable
    dm = ImageFolderData(root=str(root), img_size=16, batch_size=2, num_workers=0, max_skip_fraction=1.0)
    dm.setup("fit")
    sizes = [None if b is None else len(b[1]) for _ in range(4) for b in dm.train_dataloader()]
    assert len(sizes) == 8 and 1 not in sizes
    from recipes.data.loader import skip_none_collate, train_collate

    one = [None, (torch.zeros(3), 1)]
    assert train_collate(one) is None and len(skip_none_collate(one)[1]) == 1  # eval keeps it
