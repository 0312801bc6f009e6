"""tools/train.py: a later subcommand (test / validate / predict) never overwrites the fit's saved config."""

from __future__ import annotations

from pathlib import Path


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
seed_everything: 0
no_progress_bar: true
trainer: {{default_root_dir: {tmp_path / 'run'}, accelerator: cpu, max_steps: 1, limit_val_batches: 1,
           limit_test_batches: 1, enable_model_summary: false}}
model:
  class_path: recipes.classification.ClassificationModule
  init_args: {{model_name: test_resnet, num_classes: 10, img_size: 32, lr: 0.004}}
data:
  class_path: recipes.data.NpzData
  init_args: {{num_classes: 10, img_size: 32, batch_size: 16, eval_batch_size: 32, num_workers: 0, train_limit: 32}}
""")
    return cfg


def test_test_subcommand_keeps_the_fit_config(tmp_path, load_tool):
    train = load_tool("train")
    cfg = _config(tmp_path)
    train.main(["fit", "--config", str(cfg)])
    saved = tmp_path / "run" / "logs" / "config.yaml"
    fit_text = saved.read_text()
    assert "lr: 0.004" in fit_text
    train.main(["test", "--config", str(cfg), "--ckpt_path", "last", "--model.init_args.lr", "0.5"])
    assert saved.read_text() == fit_text
    assert "lr: 0.5" in (tmp_path / "run" / "logs" / "config-test.yaml").read_text()
