"""The main job (``make demo``): train a zoo nano model on the embedded Fashion-MNIST subset, on the CPU, in a few
minutes; evaluate on the test split; export the best checkpoint to ONNX (verified in onnxruntime, and scored on
the test split again); print the accuracy, the time and where everything went.

    python tools/demo.py                                   # crossformer_nano, 32 px, embedded subset
    python tools/demo.py --model nat_nano --epochs 4
    python tools/demo.py --data path/to/folder             # <folder>/{train,val[,test]}/<class>/*.png
    python tools/demo.py --data shards/fmnist              # tools/make_shards.py output ({train,val,test}/*.tar)
    python tools/demo.py --resume                          # continue the run in --out with its own settings
    python tools/demo.py --overwrite                       # replace the earlier run in --out (only its files)
    python tools/demo.py --task det                        # detection on scenes composited from Fashion-MNIST
    python tools/demo.py --task det --data deepforest      # detection on the real DeepForest tree-crown tiles
    python tools/demo.py --task seg                        # segmentation (UPerNet) on the composited scenes
    python tools/demo.py --task det --backbone-checkpoint runs/demo/checkpoints/best-<...>.ckpt   # transfer

Detection (``--task det``: torchvision Faster R-CNN + FPN, or ``--detector retinanet|fcos``) and segmentation
(``--task seg``: smp UPerNet) put a zoo nano backbone under a light head, print the task metric after every epoch
(mAP, mAP@0.5, mAR@100 and per-class mAP / mIoU, pixel accuracy and per-class IoU), keep the best checkpoint,
draw predictions next to the ground truth on validation images (``predictions.png``), export the best model to
ONNX (verified in onnxruntime against PyTorch, then scored on the validation split) and print the time. The
scenes are generated into ``<out>/scenes`` (Fashion-MNIST train items for training scenes, test items for
validation scenes; ``recipes/data/composite.py``) unless ``--data`` names a folder holding them.
``--backbone-checkpoint`` initialises the backbone from any timm-loadable file of the same model: the
classification job's best ``.ckpt`` (same Fashion-MNIST items), a ``.safetensors`` / ``.pth`` state dict.

The run folder (``--out``) is locked while a run uses it (a second run into it is refused), and it records what
the run wrote in ``.zoo-run.json``: a fresh run refuses a folder that holds another run unless ``--overwrite``, and
then deletes only the files that run recorded; files of yours in the folder are never deleted.

Data: Fashion-MNIST (© Zalando SE, MIT; see data/fashion_mnist/README.md): 10k train / 2k test images, 28x28
grey, stratified from the official splits; 1k of the train images (100 per class) are held out for validation
(which picks the best checkpoint), the 2k test images are only used for the final score.
"""

from __future__ import annotations

import argparse
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
# detection / segmentation (--task det|seg); "det-deepforest" with --data deepforest. The measured runs and why
# these values: docs/recipes.md.
DENSE_DEFAULTS = {
    "det": dict(model="crossformer_nano", epochs=4, img_size=64, batch_size=8, lr=1e-3, weight_decay=0.05,
                detector="fasterrcnn", fpn_channels=64, scenes_train=2000, scenes_val=200),
    "det-deepforest": dict(model="crossformer_nano", epochs=8, img_size=224, batch_size=4, lr=1e-3,
                           weight_decay=0.05, detector="fasterrcnn", fpn_channels=64),
    "seg": dict(model="crossformer_nano", epochs=10, img_size=64, batch_size=8, lr=1e-3, weight_decay=0.01,
                fpn_channels=64, scenes_train=1200, scenes_val=200),
}
DEEPFOREST = REPO / "data" / "deepforest"
# the settings that define a run: --resume takes them from the checkpoint (given ones must agree)
RUN_SETTINGS = (*DEFAULTS, "task", "backbone_checkpoint", "detector", "fpn_channels", "scenes_train", "scenes_val")


def _run_outputs(model: str, task: str = "cls") -> list[str]:
    """The entries of ``--out`` a run writes (detection / segmentation: also the drawn predictions and the scenes
    it generates)."""
    if task == "cls":
        return ["checkpoints", "logs", "metrics.json", "curves.png", f"{model}.onnx"]
    return ["checkpoints", "logs", "metrics.json", "curves.png", f"{model}_{task}.onnx", "predictions.png", "scenes"]


def lock_out(out: Path) -> Any:
    """Lock ``--out`` for this run (:func:`recipes.run_folder.lock_out`; imported on use, ``--help`` needs none)."""
    from recipes.run_folder import lock_out as lock

    return lock(out)


def prepare_out(out: Path, model: str, resume: bool, overwrite: bool, task: str = "cls") -> None:
    """Check and record ``--out`` for a run of ``task`` (:func:`recipes.run_folder.prepare_out`)."""
    from recipes.run_folder import prepare_out as prepare

    prepare(out, _run_outputs(model, task), resume, overwrite, tool="tools/demo.py")


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


def _export(model, path: Path, img_size: int) -> dict:  # noqa: ANN001
    """ONNX export with verification in onnxruntime: ``zoo.export.export_onnx`` (dynamic batch and size, checked
    far from the export size)."""
    from zoo.export import export_onnx

    rep = export_onnx(model, path, img_size=img_size, batch_size=2)
    return {"path": rep.path, "exporter": rep.exporter, "verified": rep.verified, "opset": rep.opset,
            "checks": [c.__dict__ for c in rep.checks]}


def _fit(module: Any, dm: Any, out: Path, args: argparse.Namespace, settings: dict, resume_from: Path | None,
         **trainer_kw: Any) -> tuple[Any, float]:
    """Fit ``module`` on ``dm`` in ``out`` (checkpoints twice an epoch, atomic writes, CSV/TensorBoard logs, the
    settings in every checkpoint for ``--resume``); a full disk or unreadable data ends with one ``error:`` line,
    not a traceback. ``trainer_kw`` adds task-specific Trainer options. Returns the trainer and the fit seconds."""
    import lightning.pytorch as pl

    from recipes.callbacks import SaveSettings, default_callbacks
    from recipes.common import AtomicCheckpointIO, CheckpointWriteError
    from recipes.loggers import default_loggers
    from recipes.skips import DataSkipError

    steps_per_epoch = len(dm.train_dataloader())
    callbacks = default_callbacks(out, every_n_train_steps=max(20, steps_per_epoch // 2), monitor=module.monitor,
                                  mode=module.monitor_mode, progress_bar=sys.stdout.isatty())
    callbacks.append(SaveSettings(settings))
    trainer = pl.Trainer(default_root_dir=str(out), max_epochs=args.epochs, accelerator="auto", devices=1,
                         precision=args.precision, gradient_clip_val=1.0, callbacks=callbacks,
                         logger=default_loggers(out), plugins=[AtomicCheckpointIO()], log_every_n_steps=10,
                         enable_progress_bar=sys.stdout.isatty(), enable_model_summary=False, **trainer_kw)
    t_fit = time.perf_counter()
    try:
        trainer.fit(module, dm, ckpt_path=str(resume_from) if resume_from else None)
    except (CheckpointWriteError, DataSkipError) as err:  # disk full, data unreadable: one line, not 40 frames
        raise SystemExit(f"error: {err}") from None
    return trainer, time.perf_counter() - t_fit


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
    ap.add_argument("--out", help="run folder (checkpoints, logs, metrics, ONNX); default runs/demo, runs/demo_det, "
                    "runs/demo_det_deepforest or runs/demo_seg by --task / --data")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its last intact checkpoint, with the run's settings")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the earlier run in --out (deletes only the files it recorded writing)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--task", choices=("cls", "det", "seg"),
                    help="cls (default): classification; det: detection; seg: semantic segmentation")
    ap.add_argument("--backbone-checkpoint", help="det/seg: initialise the backbone from this timm-loadable file "
                    "(e.g. the classification demo's best .ckpt of the same --model)")
    ap.add_argument("--detector", choices=("fasterrcnn", "retinanet", "fcos"), help="det: default fasterrcnn")
    ap.add_argument("--fpn-channels", type=int, help="det: FPN width; seg: UPerNet decoder channels (default 64)")
    ap.add_argument("--scenes-train", type=int, help="det/seg: composited training scenes to generate")
    ap.add_argument("--scenes-val", type=int, help="det/seg: composited validation scenes to generate")
    args = ap.parse_args(argv)
    if args.resume and args.overwrite:
        ap.error("--resume continues the run in --out, --overwrite replaces it: give one of them")
    given = {k for k in RUN_SETTINGS if getattr(args, k) is not None}
    if args.out is None:
        args.out = "runs/demo" + ("" if args.task in (None, "cls") else f"_{args.task}") + (
            "_deepforest" if args.data == "deepforest" else "")
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
    from recipes.deploy import onnx_accuracy

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    resume_from = resume_settings(out, args, given) if args.resume else None
    if (args.task or "cls") != "cls":
        return _run_dense(args, given, out, resume_from, t_start)
    if args.backbone_checkpoint or args.detector or args.fpn_channels or args.scenes_train or args.scenes_val:
        raise SystemExit("--backbone-checkpoint, --detector, --fpn-channels and --scenes-* are for --task det / seg")
    args.task = "cls"
    for k in DEFAULTS:
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
    trainer, fit_s = _fit(module, dm, out, args, settings, resume_from, use_distributed_sampler=False)
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
        onnx_acc, n = onnx_accuracy(str(onnx_path), dm.test_dataloader())
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
    n_test = len(dm.test_set) if hasattr(dm.test_set, "__len__") else '?'
    _print_cls_summary(args, out, best, metrics, n_test, acc1, acc5, (fit_s, test_s, total_s))


def _print_cls_summary(args: argparse.Namespace, out: Path, best: str, metrics: dict, n_test: Any, acc1: float,
                       acc5: float, seconds: tuple[float, float, float]) -> None:
    """The classification job's closing summary: accuracies, time, skipped samples, where the outputs are."""
    fit_s, test_s, total_s = seconds
    onnx_info = metrics["demo"]["onnx"]
    metrics_path = out / "metrics.json"
    print("\n" + "=" * 78)
    print(f"test accuracy: top-1 {100 * acc1:.2f}%  top-5 {100 * acc5:.2f}%  ({args.model}, {n_test} test images)")
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


# ------------------------------------------------------------------------------------------------------------
# detection / segmentation (--task det | seg)

# light detector heads for a CPU budget: few proposals, few sampled RoIs (docs/recipes.md has the measurements)
LIGHT_RCNN = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300,
                  rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=128, box_batch_size_per_image=64,
                  box_detections_per_img=30)
SCENE_CFG = dict(size=64, min_items=1, max_items=3, min_scale=0.9, max_scale=1.3)  # items 25-36 px


def _scenes(root: Path, n_train: int, n_val: int, seed: int) -> str:
    """The composited scenes in ``root``: generated (``SCENE_CFG``) unless ``root/meta.json`` says they are there
    with these counts and seed."""
    from recipes.data.composite import SceneConfig, write_scenes

    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        counts = meta.get("counts", {})
        if (meta.get("seed") == seed and counts.get("training", {}).get("scenes") == n_train
                and counts.get("validation", {}).get("scenes") == n_val):
            return f"scenes {root} (reused: {n_train} train / {n_val} val, seed {seed})"
    t0 = time.perf_counter()
    write_scenes(root, n_train, n_val, seed=seed, cfg=SceneConfig(**SCENE_CFG))
    return f"scenes {root} (generated in {time.perf_counter() - t0:.0f} s: {n_train} train / {n_val} val, seed {seed})"


def _dense_data(args: argparse.Namespace, out: Path) -> tuple[Any, str]:
    from recipes.data.coco import CocoDataModule
    from recipes.data.masks import MaskFolderDataModule

    if args.task == "det" and args.data == "deepforest":
        d = DEEPFOREST
        dm = CocoDataModule(str(d / "train.json"), str(d / "images"), str(d / "val.json"), str(d / "images"),
                            batch_size=args.batch_size, val_batch_size=4, num_workers=args.workers, hflip=0.5)
        return dm, f"DeepForest tree-crown tiles {d} (real NEON imagery, 400x400)"
    if args.data == "deepforest":
        raise SystemExit("--data deepforest has boxes only: use it with --task det")
    root = Path(args.data) if args.data else out / "scenes"
    if args.data and not (root / "meta.json").is_file():
        raise SystemExit(f"--data {args.data}: expected composited scenes (tools/make_scenes.py output with "
                         "meta.json) or 'deepforest'")
    desc = _scenes(root, args.scenes_train, args.scenes_val, args.seed) if not args.data else f"scenes {root}"
    if args.task == "det":
        dm = CocoDataModule(str(root / "instances_training.json"), str(root / "images" / "training"),
                            str(root / "instances_validation.json"), str(root / "images" / "validation"),
                            batch_size=args.batch_size, val_batch_size=8, num_workers=args.workers, hflip=0.5,
                            max_train_images=args.train_limit)
    else:
        size = (args.img_size, args.img_size)
        dm = MaskFolderDataModule(str(root), crop_size=size, scale_range=(0.75, 1.25), batch_size=args.batch_size,
                                  val_batch_size=8, num_workers=args.workers, max_train_images=args.train_limit)
    return dm, desc


def _dense_module(args: argparse.Namespace, dm: Any) -> Any:
    if args.task == "det":
        from recipes.detection import DetectionModule

        deepforest = args.data == "deepforest"
        anchors = (8, 16, 32, 64, 128) if deepforest else (16, 32, 64, 128, 256)
        kw = dict(LIGHT_RCNN) if args.detector == "fasterrcnn" else {"detections_per_img": 30}
        if deepforest and args.detector == "fasterrcnn":  # up to ~60 crowns per tile
            kw.update(rpn_post_nms_top_n_train=300, rpn_post_nms_top_n_test=300, box_detections_per_img=100)
        return DetectionModule(args.model, args.detector, num_classes=dm.num_classes, fpn_channels=args.fpn_channels,
                               min_size=args.img_size, max_size=args.img_size, anchor_sizes=anchors,
                               detector_kwargs=kw, lr=args.lr, weight_decay=args.weight_decay, warmup=0.05,
                               class_names=list(dm.class_names), backbone_checkpoint=args.backbone_checkpoint)
    from recipes.segmentation import SegmentationModule

    return SegmentationModule(args.model, "upernet", num_classes=dm.num_classes,
                              head_kwargs={"decoder_channels": args.fpn_channels}, lr=args.lr,
                              weight_decay=args.weight_decay, warmup=0.05, class_names=dm.class_names,
                              backbone_checkpoint=args.backbone_checkpoint)


def _draw_predictions(model: Any, dm: Any, task: str, class_names: list[str], png: Path, n: int = 8) -> Path:
    """Ground truth (left) next to the prediction (right) for the first ``n`` validation images -> ``png``."""
    import torch

    from recipes.predictions import detection_record, draw, grid, save_png

    ds = dm.val_dataloader().dataset
    cells = []
    with torch.no_grad():
        for i in range(min(n, len(ds))):
            item = ds[i]
            if item is None:
                continue
            if task == "det":
                image, target = item
                gt = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(target["labels"]))}
                gt_rec = detection_record(gt, class_names)
                del gt_rec["scores"]
                pred_rec = detection_record(model([image])[0], class_names, score_threshold=0.5)
                cells += [draw("detection", image, gt_rec, class_names),
                          draw("detection", image, pred_rec, class_names)]
            else:
                image, mask = item["image"], item["mask"]
                h, w = image.shape[-2:]
                x = torch.nn.functional.pad(image[None], (0, (-w) % 32, 0, (-h) % 32))
                mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
                std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
                pred = model((x - mean) / std)[..., :h, :w].argmax(1)[0]
                n_cls = len(class_names)
                cells += [draw("segmentation", image, {}, class_names, label_map=mask.clamp(0, n_cls - 1),
                               num_classes=n_cls),
                          draw("segmentation", image, {}, class_names, label_map=pred, num_classes=n_cls)]
    return save_png(grid(cells, nrow=4, cell=192), png)


def _run_dense(args: argparse.Namespace, given: set[str], out: Path, resume_from: Path | None,
               t_start: float) -> None:
    """Detection / segmentation main job in the locked --out: data, fit, pictures, export, summary."""
    import lightning.pytorch as pl
    import torch

    from recipes.checkpoint import load_model
    from recipes.loggers import validation_curve

    key = "det-deepforest" if args.task == "det" and args.data == "deepforest" else args.task
    for k, v in {**DEFAULTS, **DENSE_DEFAULTS[key]}.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.task == "seg" and "detector" in given:
        raise SystemExit("--detector is for --task det")
    if args.backbone_checkpoint and not Path(args.backbone_checkpoint).is_file():
        raise SystemExit(f"--backbone-checkpoint {args.backbone_checkpoint}: no such file")
    prepare_out(out, args.model, args.resume, args.overwrite, task=args.task)
    settings = {k: getattr(args, k, None) for k in RUN_SETTINGS}

    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm, data_desc = _dense_data(args, out)
    dm.setup("fit")
    train_set = dm.train_set if args.task == "det" else dm._set(dm.hparams.train_split, True)
    n_train, n_val = len(train_set), len(dm.val_dataloader().dataset)
    class_names = list(dm.class_names)
    what = (f"{args.detector} + FPN ({args.fpn_channels} ch)" if args.task == "det"
            else f"UPerNet ({args.fpn_channels} ch)")
    print(f"zoo demo ({'detection' if args.task == 'det' else 'segmentation'}): {what} over {args.model} on "
          f"{data_desc}")
    print(f"  train {n_train} / val {n_val} images, {len(class_names)} classes, {args.img_size} px, batch "
          f"{args.batch_size}, {args.epochs} epochs, lr {args.lr}, backbone "
          f"{args.backbone_checkpoint or 'from scratch (random init)'}")
    print(f"  machine: {platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {_load()}, CUDA {'yes' if torch.cuda.is_available() else 'no'}", flush=True)

    module = _dense_module(args, dm)
    trainer, fit_s = _fit(module, dm, out, args, settings, resume_from, num_sanity_val_steps=0)
    best = trainer.checkpoint_callback.best_model_path or str(out / "checkpoints" / "last.ckpt")
    best_score = trainer.checkpoint_callback.best_model_score
    print(f"trained {trainer.global_step} steps in {fit_s / 60:.1f} min; best checkpoint: {best}", flush=True)

    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    curve_keys = ("val/map", "val/map_50") if args.task == "det" else ("val/miou", "val/pixel_acc")
    curve = validation_curve(out / "logs" / "metrics.csv", curve_keys)

    model, _ = load_model(best)
    t_draw = time.perf_counter()
    png = _draw_predictions(model, dm, args.task, class_names, out / "predictions.png")
    draw_s = time.perf_counter() - t_draw

    onnx_info: dict = {}
    if not args.no_export:
        onnx_info = _export_dense(args, out, model, module.hparams, dm, class_names)
    total_s = time.perf_counter() - t_start

    metrics["demo"] = {
        "task": args.task, "model": args.model, "data": data_desc, "train_images": n_train, "val_images": n_val,
        "img_size": args.img_size, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "detector": args.detector if args.task == "det" else "upernet", "head_channels": args.fpn_channels,
        "backbone_checkpoint": args.backbone_checkpoint, "best_checkpoint": best,
        "best_" + curve_keys[0].split("/")[1]: float(best_score) if best_score is not None else None,
        "val_curve": curve, "predictions_png": str(png),
        "fit_seconds": round(fit_s, 1), "draw_seconds": round(draw_s, 1), "total_seconds": round(total_s, 1),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average_end": _load(),
        "onnx": onnx_info,
    }
    metrics_path.write_text(json.dumps(metrics, indent=2, default=str))
    _print_dense_summary(args, out, metrics["demo"], curve_keys, best_score, (fit_s, total_s))


def _export_dense(args: argparse.Namespace, out: Path, model: Any, hp: Any, dm: Any, class_names: list[str]) -> dict:
    """The best detector / segmenter exported with its pre- and postprocessing in the graph (recipes.deploy),
    verified against PyTorch, its metadata written and its validation score in onnxruntime."""
    from recipes.deploy import detector_for_onnx, onnx_val_score, segmenter_for_onnx
    from recipes.predictions import write_onnx_metadata
    from zoo.export import export_onnx

    t_exp = time.perf_counter()
    onnx_path = out / f"{args.model}_{args.task}.onnx"
    s = args.img_size
    if args.task == "det":
        rep = export_onnx(detector_for_onnx(model), onnx_path, img_size=(s, s), dynamic_batch=False,
                          check_sizes=[(s, s), (s + 32, s + 16)], atol=1e-3, rtol=1e-3)
        write_onnx_metadata(onnx_path, "detection", class_names, input="0..1")
    else:
        rep = export_onnx(segmenter_for_onnx(model, hp.mean, hp.std), onnx_path, img_size=s, batch_size=2)
        write_onnx_metadata(onnx_path, "segmentation", class_names, input="0..1", size_multiple=32)
    onnx_info = {"path": str(onnx_path), "exporter": rep.exporter, "verified": rep.verified and rep.ok,
                 "max_abs_diff": rep.max_abs, "checks": [c.line() for c in rep.checks]}
    onnx_info.update(onnx_val_score(onnx_path, dm, args.task, len(class_names)))
    onnx_info["seconds"] = round(time.perf_counter() - t_exp, 1)
    return onnx_info


def _print_dense_summary(args: argparse.Namespace, out: Path, d: dict, curve_keys: tuple[str, ...], best_score: Any,
                         seconds: tuple[float, float]) -> None:
    """The detection / segmentation job's closing summary (``d``: the ``demo`` entry of metrics.json)."""
    import torch

    fit_s, total_s = seconds
    curve, onnx_info, best, png = d["val_curve"], d["onnx"], d["best_checkpoint"], d["predictions_png"]
    metrics_path = out / "metrics.json"
    print("\n" + "=" * 78)
    print("validation per epoch:")
    for row in curve:
        print("  epoch {epoch}: ".format(**row)
              + "  ".join(f"{k.split('/')[1]} {row[k]:.4f}" for k in curve_keys if k in row))
    name = "mAP" if args.task == "det" else "mIoU"
    best_row = max(curve, key=lambda r: r.get(curve_keys[0], -1)) if curve else {}
    extra = f"  mAP@0.5 {best_row.get('val/map_50', float('nan')):.4f}" if args.task == "det" else ""
    print(f"best validation {name}: {float(best_score) if best_score is not None else float('nan'):.4f}{extra} "
          f"({args.model}, {d['val_images']} validation images)")
    if onnx_info:
        score = (f"mAP {onnx_info['val_map']:.4f}  mAP@0.5 {onnx_info['val_map_50']:.4f}" if args.task == "det"
                 else f"mIoU {onnx_info['val_miou']:.4f}")
        print(f"ONNX (onnxruntime) validation {score}; verified against PyTorch: {onnx_info['verified']}")
    print(f"time: total {total_s / 60:.1f} min (training {fit_s / 60:.1f} min) on {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, load average now {_load()}")
    print("outputs:")
    rows = [("best checkpoint", Path(best)), ("last checkpoint (resume: --resume)", out / "checkpoints" / "last.ckpt"),
            ("CSV log", out / "logs" / "metrics.csv"), ("metrics JSON", metrics_path),
            ("training curves", out / "curves.png"), ("predictions | ground truth", png)]
    if onnx_info:
        rows.append(("ONNX model (tools/predict.py takes it)", Path(onnx_info["path"])))
    for label, p in rows:
        print(f"  {label:<40} {p}")
    print("=" * 78)


if __name__ == "__main__":
    main()
