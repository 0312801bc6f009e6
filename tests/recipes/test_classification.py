"""recipes.classification: a few real training steps on the embedded Fashion-MNIST subset, test metrics,
mixup/cutmix + EMA, load_model round trip, clear errors before training."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from recipes.checkpoint import load_model
from recipes.classification import ClassificationModule
from recipes.common import AtomicCheckpointIO, default_callbacks, default_loggers
from recipes.data import NpzData

torch.set_num_threads(1)


def _trainer(root, **kw):
    cb = default_callbacks(root, every_n_train_steps=2, monitor="val/acc1", mode="max", progress_bar=False)
    args = dict(default_root_dir=root, max_steps=4, limit_val_batches=2, limit_test_batches=2, callbacks=cb,
                logger=default_loggers(root), plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
                enable_model_summary=False, log_every_n_steps=1, use_distributed_sampler=False)
    args.update(kw)
    return pl.Trainer(**args)


def _data(**kw):
    return NpzData(num_classes=10, img_size=32, batch_size=16, eval_batch_size=32, num_workers=0, train_limit=64, **kw)


def test_fit_test_and_load_model_round_trip(tmp_path):
    pl.seed_everything(0)
    module = ClassificationModule("test_resnet", num_classes=10, img_size=32, lr=3e-3)
    trainer = _trainer(tmp_path)
    dm = _data()
    trainer.fit(module, dm)
    assert trainer.global_step == 4
    res = trainer.test(module, dm, ckpt_path="last")[0]
    assert 0.0 <= res["test/acc1"] <= res["test/acc5"] <= 1.0 and res["test/loss"] > 0
    import json

    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test"]["test/acc1"] == pytest.approx(res["test/acc1"]) and m["global_step"] == 4

    model, info = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert info["task"] == "classification" and info["model_name"] == "test_resnet"
    assert info["num_classes"] == 10 and info["img_size"] == 32 and not model.training
    x = torch.randn(2, 3, 32, 32)
    ref = ClassificationModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu",
                                                    weights_only=False).model.eval()
    torch.testing.assert_close(model(x), ref(x))


def test_mixup_cutmix_ema_train_and_checkpoint(tmp_path):
    pl.seed_everything(0)
    module = ClassificationModule("test_vit", num_classes=10, img_size=32, mixup=0.8, cutmix=1.0, ema_decay=0.9,
                                  ema_warmup=False, model_kwargs={"img_size": 32})
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(module, _data())
    assert trainer.global_step == 3
    ema, net = module.model_ema.module.state_dict(), module.model.state_dict()
    assert any(not torch.equal(ema[k], net[k]) for k in net if net[k].is_floating_point())
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("model_ema.module.") for k in ckpt["state_dict"])
    model, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")  # exports the EMA weights (eval_ema)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][f"model_ema.module.{k}"])


def test_class_count_mismatch_fails_before_training(tmp_path):
    module = ClassificationModule("test_resnet", num_classes=7)
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="the data has 10 classes .* num_classes=7"):
        trainer.fit(module, NpzData(num_workers=0))
    assert trainer.global_step == 0


def test_unknown_model_and_bad_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="unknown timm model 'nat_nanoo'"):
        ClassificationModule("nat_nanoo")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="no 'task'"):
        load_model(tmp_path / "x.ckpt")


def test_zoo_nano_forward_backward_in_module():
    module = ClassificationModule("nat_nano", num_classes=3, img_size=32)
    assert module.val_acc5.top_k == 3
    loss = module.training_step((torch.randn(2, 3, 32, 32), torch.tensor([0, 2])), 0)
    loss.backward()
    assert torch.isfinite(loss) and module.model.head.fc.weight.grad is not None
