"""recipes.common: param groups, cosine schedule, atomic checkpoint IO, CSV log reading, curves, skip counter."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os

import lightning.pytorch as pl
import pytest
import timm
import torch

import zoo  # noqa: F401 - registers zoo models
from recipes.common import (
    AtomicCheckpointIO,
    FinalMetrics,
    SkipCounter,
    build_optimizer,
    build_param_groups,
    cosine_warmup_scheduler,
    default_callbacks,
    plot_curves,
    read_csv_log,
)


def test_param_groups_no_weight_decay_from_model():
    model = timm.create_model("nat_nano", num_classes=10)
    nwd = model.no_weight_decay()
    assert nwd and all(n.endswith(".rpb") for n in nwd), "NAT names its 2-D position tables"
    groups = build_param_groups(model, weight_decay=0.05)
    by_wd = {g["weight_decay"]: g["params"] for g in groups}
    no_decay_ids = {id(p) for p in by_wd[0.0]}
    names = dict(model.named_parameters())
    for n in nwd:  # every no_weight_decay() name lands in the wd=0 group
        assert id(names[n]) in no_decay_ids
    for n, p in names.items():  # norms/biases (1-D) too; 2-D+ weights not named by the model decay
        assert (id(p) in no_decay_ids) == (p.ndim <= 1 or n in nwd), n
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)


def test_param_groups_no_weight_decay_of_nested_backbone():
    """Regression: only the top-level no_weight_decay() was read, so a backbone wrapped by a detection or
    segmentation model had its position tables decayed."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.ModuleDict({"body": timm.create_model("nat_nano", num_classes=0)})
            self.head = torch.nn.Linear(4, 4)

    model = Wrapper()
    nested = {f"backbone.body.{n}" for n in model.backbone["body"].no_weight_decay()}
    assert nested
    groups = build_param_groups(model, weight_decay=0.05)
    no_decay_ids = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    names = dict(model.named_parameters())
    assert all(id(names[n]) in no_decay_ids for n in nested)
    assert id(names["head.weight"]) not in no_decay_ids


def test_layer_decay_groups_scale_lr():
    model = timm.create_model("nat_nano", num_classes=10)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert len(lrs) > 2 and math.isclose(lrs[-1], 1e-3) and lrs[0] < 1e-3 * 0.5 ** 3


def test_cosine_warmup_schedule_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = cosine_warmup_scheduler(opt, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))


def test_atomic_checkpoint_io_keeps_old_file_on_failure(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"a": torch.ones(2)}, path)
    assert torch.load(path)["a"].sum() == 2

    class Boom:
        def __reduce__(self):
            raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"a": torch.zeros(2), "b": Boom()}, path)
    assert torch.load(path)["a"].sum() == 2  # the old file is intact
    # the partial file sits in a folder whose name Lightning's 'last' lookup does not match
    assert not any("last" in f for f in os.listdir(tmp_path / "ckpts") if f != "last.ckpt")


def _bump(c: SkipCounter, i: int) -> None:
    for _ in range(3):  # the same file again (the next epoch): counted once
        c.add("unreadable", f"file{i}.png", "OSError")
    c.add("unreadable", "shared.png")  # another process already recorded it
    c.add("lost", "shard.tar", "truncated", n=2 + i)  # a larger loss replaces the smaller one


def test_skip_counter_counts_each_sample_once_across_processes_and_epochs():
    """Regression: a bad file was counted again in every epoch and by every worker."""
    c = SkipCounter()
    c.add("unreadable", "shared.png", "first")
    for ctx in ("fork", "spawn"):
        procs = [mp.get_context(ctx).Process(target=_bump, args=(c, i)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    assert c.value == 1 + 2 + 3  # shared.png, file0/1.png, 3 samples lost in shard.tar
    s = c.summary()
    assert s["by_reason"] == {"unreadable": 3, "lost": 3} and s["by_split"] == {"train": 6}
    assert "shared.png: first" in s["examples"]["unreadable"]
    assert not c.add("unreadable", "file1.png")  # known: not new
    path = c.path
    del c
    assert not os.path.exists(path)  # the creating process removes the record file


def test_skip_counter_threshold_names_the_reasons_and_files():
    from recipes.common import DataSkipError

    c = SkipCounter(max_fraction=0.1)
    c.set_total("train", 20)
    c.set_total("train/annotations", 100)
    c.add("unreadable image", "a/1.png", "OSError: truncated", split="train")
    c.add("unreadable image", "a/2.png", split="train")
    c.add("zero_area", "ann.json:zero_area", "5 annotations", n=5, split="train/annotations")
    c.check("train")  # 2/20 = 10% and 5/100: not more than 10%
    c.add("unreadable image", "val/1.png", split="val")
    c.check("train")  # another split
    c.add("unreadable image", "a/3.png", split="train")
    with pytest.raises(DataSkipError, match=r"3 of 20 train samples were skipped \(15.0%, more than the allowed 10%\)"
                       r".*Reasons: unreadable image: 3\. First: a/1.png: OSError: truncated.*max_skip_fraction"):
        c.check("train")
    c.add("box_outside_image", "ann.json:box_outside_image", n=20, split="train/annotations")
    with pytest.raises(DataSkipError, match="25 of 100 train/annotations samples"):
        SkipCounter.check(c, "train", skipped=0)
    with pytest.raises(ValueError, match="within 0..1"):
        SkipCounter(max_fraction=5)


def test_read_csv_log_keeps_last_row_per_step_and_plots(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train/loss,val/acc1\n0,0,2.0,\n0,10,1.5,\n0,10,1.4,\n0,19,,0.5\n1,29,1.0,0.7\n")
    s = read_csv_log(csv_path)
    assert s["train/loss"] == [(0, 2.0), (10, 1.4), (29, 1.0)]
    assert s["val/acc1"] == [(19, 0.5), (29, 0.7)]
    png = plot_curves(s, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Tiny(pl.LightningModule):
    task = "classification"
    monitor, monitor_mode = "val/acc1", "max"

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(4, 2)
        self.save_hyperparameters()

    def training_step(self, batch, i):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, i):
        x, y = batch
        self.log("val/acc1", (self.model(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_default_callbacks_write_checkpoints_metrics_and_curves(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from recipes.common import default_loggers

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    cbs = default_callbacks(tmp_path, every_n_train_steps=3, monitor="val/acc1", mode="max", progress_bar=False)
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=2, callbacks=cbs, logger=default_loggers(tmp_path),
                         plugins=[AtomicCheckpointIO()], log_every_n_steps=1, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(_Tiny(), dl, dl)
    ck = tmp_path / "checkpoints"
    assert (ck / "last.ckpt").is_file()
    assert torch.load(ck / "last.ckpt", weights_only=False)["global_step"] == 16
    assert len(list(ck.glob("best-*.ckpt"))) == 1
    assert trainer.checkpoint_callback.best_model_path.startswith(str(ck / "best-"))
    assert isinstance(trainer.loggers[0], CSVLogger) and (tmp_path / "logs" / "metrics.csv").is_file()
    assert list((tmp_path / "logs" / "tb").glob("events.*"))
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["global_step"] == 16 and m["task"] == "classification"
    assert 0.0 <= m["best"]["val/acc1"] <= 1.0 and m["best_checkpoint"].endswith(".ckpt")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any(isinstance(c, FinalMetrics) for c in cbs)


def _old_warmup_cosine(step: int, total: int, warmup: int, ratio: float) -> float:
    """The factor of the hand-written schedule cosine_warmup_scheduler replaced (LambdaLR), as it was."""
    total = max(int(total), 1)
    warmup = max(0, min(int(warmup), total - 1))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


@pytest.mark.parametrize("total, warmup, ratio", [(110, 10, 0.1), (50, 0, 0.01), (7, 1, 0.01), (1, 0, 0.01),
                                                  (3, 5, 0.2), (400, 20, 0.01)])
@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_scheduler_gives_the_old_per_step_rates(total, warmup, ratio, layer_decay):
    """torch's LinearLR + CosineAnnealingLR + ConstantLR (SequentialLR; LambdaLR for groups at different rates)
    give every step the rate of the old hand-written formula, past the end too, for every group."""
    model = timm.create_model("nat_nano", num_classes=4)
    opt = build_optimizer(model, lr=3e-3, weight_decay=0.05, layer_decay=layer_decay)
    base = [g["lr"] for g in opt.param_groups]
    assert (len(set(base)) > 1) == (layer_decay is not None)
    sched = cosine_warmup_scheduler(opt, total_steps=total, warmup_steps=warmup, min_lr_ratio=ratio)
    kind = torch.optim.lr_scheduler.LambdaLR if layer_decay else torch.optim.lr_scheduler.SequentialLR
    assert isinstance(sched, kind)
    for step in range(total + 15):
        want = [b * _old_warmup_cosine(step, total, warmup, ratio) for b in base]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(want, rel=1e-12, abs=1e-15), step
        opt.step()
        sched.step()


def test_scheduler_state_resumes_the_same_rates():
    """A scheduler rebuilt and loaded from state_dict (as Lightning resumes) continues with the same rates as the
    uninterrupted one, bit for bit."""

    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.5)
        return opt, cosine_warmup_scheduler(opt, total_steps=60, warmup_steps=6, min_lr_ratio=0.05)

    opt, sched = make()
    lrs = []
    for step in range(70):
        if step == 23:
            opt_state, sched_state = opt.state_dict(), sched.state_dict()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    opt2, sched2 = make()
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    resumed = []
    for _ in range(23, 70):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == lrs[23:]


def test_common_keeps_every_name_of_the_split_modules():
    """recipes.common re-exports the pieces that moved to recipes.optimization/callbacks/loggers/skips/seeding/cli:
    the very same objects, so configs, checkpoints and imports that name recipes.common keep working."""
    import recipes.callbacks
    import recipes.cli
    import recipes.common
    import recipes.loggers
    import recipes.optimization
    import recipes.seeding
    import recipes.skips

    homes = [recipes.optimization, recipes.callbacks, recipes.loggers, recipes.skips, recipes.seeding, recipes.cli]
    for name in recipes.common.__all__:
        obj = getattr(recipes.common, name)
        owners = [m for m in homes if getattr(m, name, None) is obj]
        assert owners or obj.__module__ == "recipes.common", name


def test_backbone_file_that_does_not_fit_names_the_keys(tmp_path):
    """load_backbone goes through the one strict loader (zoo.export.load_checkpoint_strict): a file of other settings
    is refused with the mismatching keys, and nothing is loaded."""
    from safetensors.torch import save_file

    from recipes.checkpoint import load_backbone

    body = timm.create_model("nat_nano", features_only=True)
    before = {k: v.clone() for k, v in body.state_dict().items()}
    sd = timm.create_model("nat_nano", num_classes=3).state_dict()
    sd["stem.proj.0.weight"] = sd["stem.proj.0.weight"][:, :1]  # a one-channel stem
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError, match=r"backbone checkpoint .*other.safetensors.* does not fit nat_nano's features"
                                         r".*shape mismatches: stem\.proj\.0\.weight"):
        load_backbone(body, str(path), "nat_nano")
    assert all(torch.equal(v, before[k]) for k, v in body.state_dict().items())
    del sd["stem.proj.0.weight"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError, match=r"missing keys: stem\.proj\.0\.weight"):
        load_backbone(body, str(path), "nat_nano")


def test_scheduler_resumes_a_checkpoint_of_the_old_lambda_schedule():
    """A run checkpointed while the schedule was a LambdaLR of the same factors resumes with the same rates."""
    total, warmup, ratio = 80, 8, 0.05

    def make_opt():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)

    old_opt = make_opt()
    old = torch.optim.lr_scheduler.LambdaLR(old_opt, lambda k: _old_warmup_cosine(k, total, warmup, ratio))
    for _ in range(37):
        old_opt.step()
        old.step()
    opt = make_opt()
    sched = cosine_warmup_scheduler(opt, total_steps=total, warmup_steps=warmup, min_lr_ratio=ratio)
    opt.load_state_dict(old_opt.state_dict())  # Lightning restores the optimizer, then the scheduler
    sched.load_state_dict(old.state_dict())
    for step in range(37, total + 5):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * _old_warmup_cosine(step, total, warmup, ratio)), step
        opt.step()
        sched.step()


def test_cli_ckpt_path_best_in_a_new_process_is_the_newest_best_file(tmp_path, load_tool, cli_config):
    """RecipeCLI resolves --ckpt_path best (before_<subcommand> hook) for a later subcommand whose trainer has no best
    path of its own: the run's newest best-*.ckpt, or a clear error when the run has none."""
    cfg = cli_config()  # 2 steps into tmp_path/run
    train = load_tool("train")
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path best: no best-\*\.ckpt under .*run/checkpoints"):
        train.main(["validate", "--config", str(cfg), "--ckpt_path", "best"])
    train.main(["fit", "--config", str(cfg)])
    best = list((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    cli = train.main(["test", "--config", str(cfg), "--ckpt_path", "best"])
    assert cli.trainer.ckpt_path == str(best[0])
