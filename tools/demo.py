"""The main job (``make demo``): train a zoo nano model on the embedded Fashion-MNIST subset, on the CPU, in a few
minutes; evaluate on the test split; export the best checkpoint to ONNX (verified in onnxruntime, and scored on
the test split again); print the accuracy, the time and where everything went.

    python tools/demo.py                                   # crossformer_nano, 32 px, embedded subset
    python tools/demo.py --model nat_nano --epochs 4
    python tools/demo.py --data path/to/folder             # <folder>/{train,val[,test]}/<class>/*.png
    python tools/demo.py --data shards/fmnist              # tools/make_shards.py output ({train,val,test}/*.tar)
    python tools/demo.py --resume                          # continue the run in --out with its own settings
    python tools/demo.py --overwrite                       # replace the earlier run in --out (only its files)

The run folder (``--out``) is locked while a run uses it (a second run into it is refused), and it records what
the run wrote in ``.zoo-run.json``: a fresh run refuses a folder that holds another run unless ``--overwrite``, and
then deletes only the files that run recorded; files of yours in the folder are never deleted.

Data: Fashion-MNIST (© Zalando SE, MIT; see data/fashion_mnist/README.md): 10k train / 2k test images, 28x28
grey, stratified from the official splits; 1k of the train images (100 per class) are held out for validation
(which picks the best checkpoint), the 2k test images are only used for the final score.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULTS = dict(model="crossformer_nano", epochs=10, img_size=32, batch_size=64, lr=2e-3, min_scale=1.0,
                weight_decay=0.05, label_smoothing=0.1, data=None, train_limit=None, seed=0, precision="32-true")
# the settings that define a run: --resume takes them from the checkpoint (given ones must agree)
RUN_SETTINGS = tuple(DEFAULTS)
MANIFEST, LOCK = ".zoo-run.json", ".zoo-run.lock"


def _run_outputs(model: str) -> list[str]:
    """The entries of ``--out`` a run writes."""
    return ["checkpoints", "logs", "metrics.json", "curves.png", f"{model}.onnx"]


def lock_out(out: Path) -> Any:
    """Take an exclusive ``flock`` on ``<out>/.zoo-run.lock`` and return the open lock file (closing it releases
    the lock; the kernel releases it when the process ends, however it ends), or exit saying which process holds
    it."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    f = open(out / LOCK, "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise SystemExit(f"--out {out}: another run (pid {owner}) is using this folder; wait for it to finish or "
                         "choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def prepare_out(out: Path, model: str, resume: bool, overwrite: bool) -> None:
    """Check ``--out`` (locked by :func:`lock_out`) before a run writes into it. A fresh run needs a folder without
    run outputs; with ``--overwrite`` it deletes what the earlier run recorded in ``.zoo-run.json`` (and nothing
    else). Output names present that no run recorded are never deleted: the run refuses them. Records what this
    run will write."""
    import shutil

    manifest = out / MANIFEST
    recorded = json.loads(manifest.read_text()).get("created", []) if manifest.is_file() else []
    if not resume:
        if recorded and not overwrite:
            raise SystemExit(
                f"--out {out} holds another run ({', '.join(n for n in recorded if (out / n).exists()) or MANIFEST}); "
                "continue it with --resume, replace it with --overwrite (deletes only what that run wrote), or "
                "choose another --out"
            )
        for name in recorded if overwrite else []:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        manifest.unlink(missing_ok=True)
        recorded = []
        foreign = [n for n in _run_outputs(model) if (out / n).exists() or (out / n).is_symlink()]
        if foreign:
            raise SystemExit(
                f"--out {out} already holds {', '.join(foreign)}, which no zoo run recorded writing; they are not "
                "deleted: move them or choose another --out"
            )
    created = sorted(set(recorded) | set(_run_outputs(model)))
    manifest.write_text(json.dumps({"tool": "tools/demo.py", "created": created}, indent=2))


def resume_settings(out: Path, args: argparse.Namespace, given: set[str]) -> Path:
    """The checkpoint ``--resume`` continues from (``recipes.checkpoint.resume_checkpoint``); fills ``args``
    with the run's settings saved in it. A setting given on the command line must equal the saved one."""
    from recipes.checkpoint import NothingToResumeError, read_recipe_checkpoint, resume_checkpoint

    try:
        path = resume_checkpoint(out / "checkpoints")
    except NothingToResumeError as err:
        raise SystemExit(f"--resume: {err}") from None
    ckpt = read_recipe_checkpoint(path)
    saved = dict(ckpt.get("demo_settings") or {})
    hp = ckpt.get("hyper_parameters") or {}
    for key, hkey in (("model", "model_name"), ("img_size", "img_size"), ("lr", "lr"),
                      ("weight_decay", "weight_decay"), ("label_smoothing", "label_smoothing")):
        saved.setdefault(key, hp.get(hkey))  # checkpoints written before demo_settings existed
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)!r} (the run has {saved[k]!r})"
              for k in sorted(given) if k in saved and saved[k] is not None and getattr(args, k) != saved[k]]
    if differ:
        raise SystemExit(f"--resume continues the run in {out} with its own settings; these differ: "
                         + "; ".join(differ) + ". Drop them, or start a new run with another --out")
    for k in RUN_SETTINGS:
        if k not in given and saved.get(k) is not None:
            setattr(args, k, saved[k])
    return path


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "n/a"


def _datamodule(args: argparse.Namespace):  # noqa: ANN202
    from recipes.data import ImageFolderData, NpzData, ShardData
    from recipes.data.classification import DEFAULT_NPZ, FASHION_MNIST_MEAN, FASHION_MNIST_STD

    common = dict(img_size=args.img_size, batch_size=args.batch_size, eval_batch_size=256,
                  num_workers=args.workers, seed=args.seed, scale=(args.min_scale, 1.0))
    data = args.data or DEFAULT_NPZ
    if data.endswith(".npz"):
        return NpzData(path=data, train_limit=args.train_limit, **common), f"npz {data}"
    p = Path(data)
    if (p / "train").is_dir() and list((p / "train").glob("*.tar")):
        return ShardData(train_shards=str(p / "train"),
                         val_shards=str(p / "val") if (p / "val").is_dir() else None,
                         test_shards=str(p / "test") if (p / "test").is_dir() else None,
                         mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, **common), f"webdataset shards {data}"
    if (p / "train").is_dir():
        return ImageFolderData(root=data, **common), f"image folder {data}"
    raise SystemExit(
        f"--data {data!r}: expected an .npz, a shard folder (train/*.tar) or an image folder (train/<class>/)"
    )


def _onnx_accuracy(onnx_path: str, loader) -> tuple[float, int]:  # noqa: ANN001
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        logits = sess.run(None, {name: x.numpy()})[0]
        correct += int((np.argmax(logits, 1) == y.numpy()).sum())
        total += len(y)
    return correct / max(total, 1), total


def _export(model, path: Path, img_size: int) -> dict:  # noqa: ANN001
    """ONNX export with verification in onnxruntime: ``zoo.export.export_onnx`` (dynamic batch and size, checked
    at two sizes), or plain ``torch.onnx.export`` + an onnxruntime comparison where zoo.export is unavailable."""
    try:
        from zoo.export import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        rep = export_onnx(model, path, img_size=img_size, batch_size=2)
        return {"path": rep.path, "exporter": rep.exporter, "verified": rep.verified, "opset": rep.opset,
                "checks": [c.__dict__ if hasattr(c, "__dict__") else str(c) for c in rep.checks]}
    import numpy as np
    import onnxruntime as ort
    import torch

    x = torch.randn(2, 3, img_size, img_size)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=18,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    with torch.inference_mode():
        ref = model(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    err = float(np.abs(out - ref).max())
    return {"path": str(path), "exporter": "torchscript", "verified": err < 1e-3, "max_abs_err": err}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # run settings default to None here: --resume fills what was not given from the checkpoint
    ap.add_argument("--model", help=f"any timm model name (zoo nano models train fastest; {DEFAULTS['model']})")
    ap.add_argument("--data", default=None, help="npz / shard folder / image folder (default: embedded subset)")
    ap.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']}")
    ap.add_argument("--img-size", type=int, help=f"28x28 images are resized to this (default {DEFAULTS['img_size']})")
    ap.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    ap.add_argument("--lr", type=float, help=f"default {DEFAULTS['lr']}")
    ap.add_argument("--weight-decay", type=float, help=f"default {DEFAULTS['weight_decay']}")
    ap.add_argument("--min-scale", type=float,
                    help="random-resized-crop scale lower bound (default 1.0: aspect jitter + flip only)")
    ap.add_argument("--label-smoothing", type=float, help=f"default {DEFAULTS['label_smoothing']}")
    ap.add_argument("--train-limit", type=int, default=None, help="use only this many train images (quick runs)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--precision", help="default 32-true; e.g. bf16-mixed on a GPU")
    ap.add_argument("--out", default="runs/demo", help="run folder (checkpoints, logs, metrics, ONNX)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its last intact checkpoint, with the run's settings")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the earlier run in --out (deletes only the files it recorded writing)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args(argv)
    if args.resume and args.overwrite:
        ap.error("--resume continues the run in --out, --overwrite replaces it: give one of them")
    given = {k for k in RUN_SETTINGS if getattr(args, k) is not None}
    out = Path(args.out)
    lock = lock_out(out)  # before looking at (or deleting) anything in it
    try:
        _run(args, given, out)
    finally:
        lock.close()


def _run(args: argparse.Namespace, given: set[str], out: Path) -> None:
    """The run itself, in the locked --out: settings, out handling, fit, test, export, summary."""

    t_start = time.perf_counter()
    import lightning.pytorch as pl
    import torch

    import zoo  # noqa: F401 - registers the zoo models
    from recipes.checkpoint import load_model
    from recipes.classification import ClassificationModule
    from recipes.common import AtomicCheckpointIO, CheckpointWriteError, default_callbacks, default_loggers

    class _SaveSettings(pl.Callback):
        """Writes the run's settings into every checkpoint (``demo_settings``) for ``--resume``."""

        def __init__(self, settings: dict) -> None:
            self.settings = settings

        def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:  # noqa: ANN001
            checkpoint["demo_settings"] = dict(self.settings)

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    resume_from = resume_settings(out, args, given) if args.resume else None
    for k in RUN_SETTINGS:
        if getattr(args, k) is None:
            setattr(args, k, DEFAULTS[k])
    prepare_out(out, args.model, args.resume, args.overwrite)
    settings = {k: getattr(args, k) for k in RUN_SETTINGS}

    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm, data_desc = _datamodule(args)
    dm.setup("fit")
    print(f"zoo demo: {args.model} on {data_desc}")
    print(f"  train {len(dm.train_set) if hasattr(dm.train_set, '__len__') else '?'} / "
          f"val {len(dm.val_set) if hasattr(dm.val_set, '__len__') else '?'} / "
          f"test {len(dm.test_set) if hasattr(dm.test_set, '__len__') else '?'} images, {dm.num_classes} classes, "
          f"{args.img_size} px, batch {args.batch_size}, {args.epochs} epochs, lr {args.lr}")
    print(f"  machine: {platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {_load()}, CUDA {'yes' if torch.cuda.is_available() else 'no'}", flush=True)

    module = ClassificationModule(args.model, num_classes=dm.num_classes, img_size=args.img_size, lr=args.lr,
                                  weight_decay=args.weight_decay, warmup=0.05,
                                  label_smoothing=args.label_smoothing)
    steps_per_epoch = len(dm.train_dataloader())
    callbacks = default_callbacks(out, every_n_train_steps=max(20, steps_per_epoch // 2), monitor=module.monitor,
                                  mode=module.monitor_mode, progress_bar=sys.stdout.isatty())
    callbacks.append(_SaveSettings(settings))
    trainer = pl.Trainer(default_root_dir=str(out), max_epochs=args.epochs, accelerator="auto", devices=1,
                         precision=args.precision, gradient_clip_val=1.0, callbacks=callbacks,
                         logger=default_loggers(out), plugins=[AtomicCheckpointIO()], log_every_n_steps=10,
                         enable_progress_bar=sys.stdout.isatty(), enable_model_summary=False,
                         use_distributed_sampler=False)
    t_fit = time.perf_counter()
    try:
        trainer.fit(module, dm, ckpt_path=str(resume_from) if resume_from else None)
    except CheckpointWriteError as err:  # disk full: one line, not 40 frames
        raise SystemExit(f"error: {err}") from None
    fit_s = time.perf_counter() - t_fit
    best = trainer.checkpoint_callback.best_model_path or str(out / "checkpoints" / "last.ckpt")
    print(f"trained {trainer.global_step} steps in {fit_s / 60:.1f} min; best checkpoint: {best}", flush=True)

    t_test = time.perf_counter()
    res = trainer.test(module, dm, ckpt_path=best, verbose=False)[0]
    test_s = time.perf_counter() - t_test
    acc1, acc5 = res["test/acc1"], res["test/acc5"]

    onnx_info: dict = {}
    if not args.no_export:
        t_exp = time.perf_counter()
        model, info = load_model(best)
        onnx_path = out / f"{args.model}.onnx"
        onnx_info = _export(model, onnx_path, args.img_size)
        onnx_acc, n = _onnx_accuracy(str(onnx_path), dm.test_dataloader())
        onnx_info.update(test_acc1=onnx_acc, test_images=n, seconds=round(time.perf_counter() - t_exp, 1))
    total_s = time.perf_counter() - t_start

    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["demo"] = {
        "model": args.model, "data": data_desc, "img_size": args.img_size, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "test_acc1": acc1, "test_acc5": acc5,
        "fit_seconds": round(fit_s, 1), "test_seconds": round(test_s, 1), "total_seconds": round(total_s, 1),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_end": _load(),
        "onnx": onnx_info,
    }
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str))

    print("\n" + "=" * 78)
    print(f"test accuracy: top-1 {100 * acc1:.2f}%  top-5 {100 * acc5:.2f}%  "
          f"({args.model}, {len(dm.test_set) if hasattr(dm.test_set, '__len__') else '?'} test images)")
    if onnx_info:
        print(f"ONNX (onnxruntime) test accuracy: top-1 {100 * onnx_info['test_acc1']:.2f}%  "
              f"verified against PyTorch: {onnx_info.get('verified')}")
    print(f"time: total {total_s / 60:.1f} min (training {fit_s / 60:.1f} min, test {test_s:.0f} s) "
          f"on {os.cpu_count()} CPUs, load average now {_load()}")
    skips = metrics.get("skipped") or {"total": 0, "by_reason": {}, "examples": {}}
    print(f"skipped samples (each counted once; list in metrics JSON): {skips['total']}")
    for reason, n in skips["by_reason"].items():
        print(f"  {reason}: {n}, e.g. {(skips['examples'].get(reason) or ['?'])[0]}")
    print("outputs:")
    rows = [
        ("checkpoints", out / "checkpoints"),
        ("best checkpoint", Path(best)),
        ("last checkpoint (resume: --resume)", out / "checkpoints" / "last.ckpt"),
        ("CSV log", out / "logs" / "metrics.csv"),
        ("TensorBoard (tensorboard --logdir)", out / "logs" / "tb"),
        ("metrics JSON", metrics_path),
        ("training curves", out / "curves.png"),
    ]
    if onnx_info:
        rows.append(("ONNX model", Path(onnx_info["path"])))
    for name, p in rows:
        print(f"  {name:<36} {p}")
    print("=" * 78)


if __name__ == "__main__":
    main()
