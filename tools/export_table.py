"""Export every registered zoo model to ONNX, verify it, time it, and write docs/onnx.md + docs/onnx.json.

Per model (each in its own subprocess, with a timeout): :func:`zoo.export.export_onnx` with dynamic batch and
dynamic H/W (exporter ``auto``: TorchScript, then dynamo), verified in onnxruntime at two batch sizes and two
input sizes (one not a multiple of 32); if no dynamic-size graph verifies, a static-size export is tried so
the table says what does work. Then onnxruntime and PyTorch eager CPU latency at batch 1 and the model's
default input size. A model that fails is listed with the reason; nothing fails silently.

Models matching ``--variants`` (default ``*_nano``) are also exported in fp16 and int8 (dynamic, and static
calibrated on the embedded Fashion-MNIST images), each verified against PyTorch fp32 at the same sizes, with file
size and onnxruntime latency. ``--fashion-mnist-ckpt`` measures the int8 top-1 change on a model trained by the
main job (``tools/demo.py``) over the 2000 test images.

Resumable: models already in the JSON are skipped unless ``--force`` (``--retry-failed`` redoes failures).

    python tools/export_table.py --model '*_nano' --timeout 600
    python tools/export_table.py                        # every model (slow: run when the CPU is free)
    python tools/export_table.py --model none --fashion-mnist-ckpt runs/demo/checkpoints/best-<...>.ckpt
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Export, verify and time one model in this process; returns its table record."""
    import torch

    import zoo  # noqa: F401  (registers the models)
    from zoo.export import ExportError, build_model, export_onnx, measure_latency

    torch.set_num_threads(args.threads)
    rec: dict = {"model": name, "exports": False, "exporter": None, "dynamic_hw": False}
    model = build_model(name)
    rec["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    with tempfile.TemporaryDirectory(prefix="zoo-onnx-", dir=args.workdir) as tmp:
        path = Path(tmp) / f"{name}.onnx"
        report, errors = None, []
        for dynamic_size in (True, False):
            try:
                report = export_onnx(model, path, dynamic_batch=True, dynamic_size=dynamic_size,
                                     exporter=args.exporter, opset=args.opset)
                break
            except (ExportError, ValueError) as e:
                errors.append(("dynamic H/W" if dynamic_size else "static H/W") + f": {e}")
        if report is None:
            rec["reason"] = "\n".join(errors)
            return rec
        if errors:
            rec["dynamic_hw_reason"] = errors[0]
        rec.update(
            exports=True, exporter=report.exporter, dynamic_hw=report.dynamic_size, opset=report.opset,
            max_abs=report.max_abs, max_rel=report.max_rel, file_mb=round(report.file_size / 2**20, 1),
            external_data=report.external_data, export_s=round(report.export_seconds, 1),
            input_size=list(report.input_size), checks=[c.__dict__ for c in report.checks],
            attempts=report.attempts,
        )
        meta = report.metadata
        rec.update(min_size=meta.get("min_size"), verified_sizes=meta.get("verified_sizes"))
        shape = (1, *report.input_size)
        ort_ms, pt_ms = measure_latency(path, model, shape, runs=args.runs, threads=args.threads)
        rec.update(ort_ms=round(ort_ms, 2), torch_ms=round(pt_ms, 2))
        if fnmatch.fnmatch(name, args.variants):
            rec["variants"] = [_variant(model, Path(tmp), kind, report, shape, args)
                               for kind in ("fp16", "int8-dynamic", "int8-static")]
    return rec


def _variant(model, tmp: Path, kind: str, fp32, shape, args: argparse.Namespace) -> dict:  # noqa: ANN001
    """One fp16 / int8 export of ``model`` at the fp32 export's settings: verified, sized and timed."""
    from zoo.export import ExportError, export_onnx, measure_latency

    path = tmp / f"{kind}.onnx"
    kw = {"fp16": True} if kind == "fp16" else {"int8": kind.split("-")[1], "calibration": "fashion_mnist"}
    rec: dict = {"kind": kind}
    try:
        rep = export_onnx(model, path, dynamic_batch=True, dynamic_size=fp32.dynamic_size, exporter=fp32.exporter,
                          opset=args.opset, **kw)
    except (ExportError, ValueError) as e:
        return {**rec, "ok": False, "reason": " ".join(str(e).split())[:400]}
    ort_ms, _ = measure_latency(path, model, shape, runs=args.runs, threads=args.threads)
    worst = (max(c.rel_l2 for c in rep.checks) if rep.int8_tol is not None else rep.max_abs)
    agree = [c.top1_agree for c in rep.checks if c.top1_agree is not None]
    return {**rec, "ok": rep.ok, "criterion": rep.metadata.get("tolerance"), "worst": worst,
            "top1_agree": min(agree) if agree else None, "file_mb": round(rep.file_size / 2**20, 2),
            "fp32_file_mb": round(fp32.file_size / 2**20, 2), "ort_ms": round(ort_ms, 2),
            "verified_sizes": rep.metadata.get("verified_sizes")}


def fashion_mnist_int8(ckpt: str, args: argparse.Namespace) -> dict:
    """fp32 / int8-dynamic / int8-static files of a recipe checkpoint trained on the embedded Fashion-MNIST
    (tools/demo.py): top-1 over the 2000 test images (the demo's test transform), file size, batch-1 latency."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    import zoo  # noqa: F401
    from recipes.checkpoint import load_model
    from recipes.data import NpzData
    from zoo.export import OnnxRunner, export_onnx, measure_latency

    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("tools_export", ROOT / "tools" / "export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    model, info = load_model(ckpt)
    meta = {"model": str(info.get("model_name")), **cli.recipe_metadata(Path(ckpt), info)}
    img = int(info.get("img_size") or 32)
    dm = NpzData(img_size=img, batch_size=64, eval_batch_size=250, num_workers=0)
    dm.setup("test")
    xs, ys = zip(*[(x, y) for x, y in dm.test_dataloader()])
    x, y = torch.cat(xs), torch.cat(ys).numpy()
    with torch.no_grad():
        pt = torch.cat([model(x[i:i + 250]) for i in range(0, len(x), 250)]).numpy()
    out = {"checkpoint": str(ckpt), "model": meta["model"], "img_size": img, "test_images": len(y),
           "torch_top1": float((pt.argmax(1) == y).mean()), "rows": []}
    with tempfile.TemporaryDirectory(prefix="zoo-fm-", dir=args.workdir) as tmp:
        for kind in ("fp32", "int8-dynamic", "int8-static"):
            kw = {} if kind == "fp32" else {"int8": kind.split("-")[1], "calibration": "fashion_mnist"}
            path = Path(tmp) / f"{kind}.onnx"
            rep = export_onnx(model, path, img_size=img, metadata=meta, **kw)
            run = OnnxRunner(path, threads=args.threads)
            o = np.concatenate([run(x[i:i + 250])[0] for i in range(0, len(x), 250)])
            ort_ms, _ = measure_latency(path, model, (1, 3, img, img), runs=max(args.runs, 50), threads=args.threads)
            out["rows"].append({"kind": kind, "ok": rep.ok, "top1": float((o.argmax(1) == y).mean()),
                                "agree_torch": float((o.argmax(1) == pt.argmax(1)).mean()),
                                "file_mb": round(rep.file_size / 2**20, 2), "ort_ms": round(ort_ms, 3),
                                "criterion": rep.metadata.get("tolerance"),
                                "quantization": rep.metadata.get("quantization")})
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fmt(v, spec: str, dash: str = "-") -> str:
    return dash if v is None else format(v, spec)


def _sizes(r: dict) -> str:
    """The valid-size cell: the minimum and the sizes checked against PyTorch (no upper bound is claimed)."""
    if not r.get("verified_sizes"):
        return "-"
    mh, mw = (r.get("min_size") or [32, 32])[-2:]
    lo = f"≥ {mh}" if mh == mw else f"≥ {mh}x{mw}"
    checked = ", ".join(f"{h}" if h == w else f"{h}x{w}" for h, w in r["verified_sizes"])
    return f"{lo}; checked {checked}" if r.get("dynamic_hw") else f"{checked} only"


def _header(meta: dict) -> list[str]:
    return [
        "# ONNX export of every registered model",
        "",
        "Generated by `tools/export_table.py` (do not edit by hand). Each model: `zoo.export.export_onnx` with ",
        "dynamic batch and dynamic H/W, random weights, verified in onnxruntime (CPU) against PyTorch (fp32) at ",
        "batch 1 and 2 and at sizes far from the export size (about 0.5x and 2x, and an odd non-square size; ",
        "tolerance `|a-b| <= 1e-4 + 1e-4·|b|`). Valid sizes: the file's `zoo.min_size` (the model's ",
        "`min_input_size`, else 32) and the sizes it was checked at (`zoo.verified_sizes`); the graph takes larger ",
        "sizes too, but no upper bound was checked. Latency: median of batch-1 runs at the default input size, "
        f"{meta['threads']} CPU thread(s), {meta['cpu']} (a shared 2-core machine: other jobs ran at the same time, "
        f"so latencies are indicative); torch {meta['torch']}, onnxruntime {meta['ort']}.",
        "",
        "`torch.export` and `torch.onnx.export(dynamo=True)` with dynamic H/W: NAT, DiNAT, BiFormer, Agent-PVT and ",
        "Agent-DeiT trace with symbolic H/W and their files are right far from the example size (checked with ",
        "`export_onnx(exporter=\"dynamo\")` at 64..448 px for nat_nano, dinat_nano, biformer_nano, agent_pvt_t, ",
        "agent_deit_t: `make test-heavy`). MaxViT, CrossFormer and Agent-Swin (window/grid attention, whose ",
        "padding and partition shapes torch.export would specialise to the example size) refuse dynamic H/W there ",
        "with `zoo.ops.DynamicSizeExportError`, which points to `tools/export.py` (the TorchScript exporter below ",
        "keeps them dynamic); strict `torch.export` refuses them at any shape; static H/W export works. Under any ",
        "exporter the ops take their export-safe paths by themselves (no backend needs forcing).",
        "",
        "| model | params (M) | exports | exporter | dynamic H/W | valid sizes (px) | max abs err | max rel err "
        "| file (MiB) | ORT ms | PyTorch ms |",
        "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|",
    ]


def _model_rows(results: dict, names: list[str]) -> tuple[list[str], list[str]]:
    """One table row per model, and the notes of the failures (export, or dynamic H/W)."""
    lines, notes = [], []
    for name in names:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | | not run | | | | | | | | |")
            continue
        if not r.get("exports"):
            reason = " ".join(str(r.get("reason", "unknown")).split())
            notes.append(f"- **{name}**: {reason[:600]}")
            lines.append(f"| {name} | {_fmt(r.get('params_m'), '.1f')} | **no** (see below) | | | | | | | | |")
            continue
        if r.get("dynamic_hw") and not r.get("verified_sizes"):
            # a row from before the far-size checks was verified near its export size only, which could not
            # see a graph baked to it (CrossFormer, Agent-Swin): it claims nothing until re-run
            dyn = "not re-checked at far sizes (row from an older run)"
        else:
            dyn = "yes" if r.get("dynamic_hw") else "**no** (see below)"
        if r.get("dynamic_hw_reason"):
            notes.append(f"- **{name}** (dynamic H/W): {' '.join(r['dynamic_hw_reason'].split())[:600]}")
        file_mb = _fmt(r.get("file_mb"), ".1f") + (" + data" if r.get("external_data") else "")
        lines.append(
            f"| {name} | {_fmt(r.get('params_m'), '.1f')} | yes | {r.get('exporter')} | {dyn} | {_sizes(r)} "
            f"| {_fmt(r.get('max_abs'), '.1e')} | {_fmt(r.get('max_rel'), '.1e')} | {file_mb} "
            f"| {_fmt(r.get('ort_ms'), '.1f')} | {_fmt(r.get('torch_ms'), '.1f')} |"
        )
    return lines, notes


def _variant_section(results: dict, names: list[str]) -> list[str]:
    """The fp16 / int8 table of the models exported in those precisions (empty when none was)."""
    variant_rows = []
    for name in names:
        r = results.get(name) or {}
        for v in r.get("variants") or []:
            if not v.get("ok"):
                variant_rows.append(f"| {name} | {v['kind']} | **no**: {v.get('reason', '')[:300]} | | | | |")
                continue
            worst = (f"rel L2 {v['worst']:.3f}" if v["kind"].startswith("int8") else f"max abs {v['worst']:.1e}")
            agree = "" if v.get("top1_agree") is None else f"{100 * v['top1_agree']:.0f}%"
            ratio_ms = f" ({v['ort_ms'] / r['ort_ms']:.2f}x)" if r.get("ort_ms") else ""
            crit = str(v["criterion"]).replace("|", "\\|")  # a pipe would end the table cell
            variant_rows.append(
                f"| {name} | {v['kind']} | yes ({crit}) | {worst} | {agree} "
                f"| {v['file_mb']:.1f} ({v['file_mb'] / v['fp32_file_mb']:.2f}x) | {v['ort_ms']:.1f}{ratio_ms} |")
    if not variant_rows:
        return []
    return (["", "## fp16 and int8 of the nano models", "",
             "The same export (dynamic batch and H/W, random weights, 1000 classes), then onnxruntime's float16 "
             "converter (fp16) or `onnxruntime.quantization` (int8 dynamic: MatMul/Gemm weights; int8 static: "
             "QDQ, Conv/MatMul/Gemm, 64 embedded Fashion-MNIST images spread over the checked sizes), checked "
             "against PyTorch fp32 at the same sizes (fp16: `|a-b| <= 5e-2 + 5e-2·|b|`; int8: relative L2 "
             "error of the logits <= 0.1 on 8 images that did not calibrate; top-1 agreement over those 8 "
             "images is reported, not required: random weights give near-tied logits). File size and ORT "
             "latency relative to the fp32 row above.", "",
             "| model | precision | verified | worst error | top-1 agree (min) | file MiB (x fp32) "
             "| ORT ms (x fp32) |", "|---|---|---|---:|---:|---:|---:|"] + variant_rows)


def _fmnist_section(fmnist: dict, meta: dict) -> list[str]:
    """The int8 top-1 change on the main job's trained Fashion-MNIST model."""
    lines = ["", "## int8 on the main job's Fashion-MNIST model", "",
           f"`{fmnist['model']}` trained by `tools/demo.py --threads 1` (defaults: 10 epochs, "
           f"{fmnist['img_size']} px), exported from its best checkpoint with the recipe's metadata (class "
           f"names, Fashion-MNIST mean/std), scored on the {fmnist['test_images']} test images with the "
           "demo's test transform. "
           f"PyTorch top-1 {100 * fmnist['torch_top1']:.2f}%. Static int8: 64 calibration images from the "
           "train split (`--calibration fashion_mnist`). Latency: batch 1, "
           f"{fmnist['img_size']} px, median of 50 runs, {meta['threads']} thread(s), shared 2-core machine.",
           "", "| file | top-1 | change (points) | same top-1 as PyTorch | file MiB | ORT ms |",
           "|---|---:|---:|---:|---:|---:|"]
    base = fmnist["rows"][0]
    for row in fmnist["rows"]:
        size = f"{row['file_mb']:.1f} ({row['file_mb'] / base['file_mb']:.2f}x)"
        lines.append(f"| {row['kind']} | {100 * row['top1']:.2f}% | {100 * (row['top1'] - base['top1']):+.2f} "
                     f"| {100 * row['agree_torch']:.2f}% | {size} "
                     f"| {row['ort_ms']:.2f} ({row['ort_ms'] / base['ort_ms']:.2f}x) |")
    return lines


def write_markdown(results: dict, names: list[str], meta: dict, path: Path, fmnist: dict | None = None) -> None:
    """docs/onnx.md from the JSON records: the header, one row per model, the fp16/int8 and Fashion-MNIST
    sections, then the failures."""
    rows, notes = _model_rows(results, names)
    lines = _header(meta) + rows + _variant_section(results, names)
    if fmnist:
        lines += _fmnist_section(fmnist, meta)
    if notes:
        lines += ["", "## Failures", ""] + notes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="*", help="glob of zoo model names (default: all registered)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per model (default 1800)")
    ap.add_argument("--force", action="store_true", help="redo models already in the JSON")
    ap.add_argument("--retry-failed", action="store_true", help="redo models that failed or timed out")
    ap.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for export and latency (default 1)")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per latency (default 10)")
    ap.add_argument("--json", default=str(ROOT / "docs" / "onnx.json"))
    ap.add_argument("--md", default=str(ROOT / "docs" / "onnx.md"))
    ap.add_argument("--workdir", default=None, help="where the temporary .onnx files go (default: system tmp)")
    ap.add_argument("--variants", default="*_nano", help="glob of models also exported in fp16 and int8 (*_nano)")
    ap.add_argument("--fashion-mnist-ckpt", help="recipe checkpoint of tools/demo.py: measure its int8 top-1 change")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model, print its record as JSON
    return ap


def _run_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    """``run_one(name)`` in a child process (a crash or a hang costs one row, not the table) -> its record."""
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--threads", str(args.threads),
           "--runs", str(args.runs), "--exporter", args.exporter, "--opset", str(args.opset),
           "--variants", args.variants]
    if args.workdir:
        cmd += ["--workdir", args.workdir]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
        out = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")]
        if out:
            rec = json.loads(out[-1][len("@@RESULT@@"):])
        else:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            rec = {"model": name, "exports": False,
                   "reason": f"the export process died (exit {proc.returncode}): {tail[-500:]}"}
    except subprocess.TimeoutExpired:
        rec = {"model": name, "exports": False, "reason": f"timeout: no verified export in {args.timeout:.0f} s"}
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    return rec


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    if args.one:
        try:
            rec = run_one(args.one, args)
        except Exception as e:  # anything unexpected is a reason in the table, not a crash of the tool
            rec = {"model": args.one, "exports": False, "reason": f"{type(e).__name__}: {e}"}
        print("@@RESULT@@" + json.dumps(rec, default=str))
        return 0

    import onnxruntime
    import torch

    import zoo

    if args.workdir:  # a missing folder would fail every model's export and write those failures into the table
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    all_names = zoo.list_models()
    names = [n for n in all_names if fnmatch.fnmatch(n, args.model)]
    if not names and args.model != "none":
        print(f"no registered model matches {args.model!r}; registered: {', '.join(all_names)}", file=sys.stderr)
        return 1
    json_path, md_path = Path(args.json), Path(args.md)
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    results: dict = data.get("models", {})
    fmnist = data.get("fashion_mnist")
    meta = {"torch": torch.__version__, "ort": onnxruntime.__version__, "cpu": _cpu_name(), "threads": args.threads}

    def save() -> None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        body = {"meta": meta, "models": results, **({"fashion_mnist": fmnist} if fmnist else {})}
        json_path.write_text(json.dumps(body, indent=1, default=str) + "\n")
        write_markdown(results, all_names, meta, md_path, fmnist)

    if args.fashion_mnist_ckpt:
        fmnist = fashion_mnist_int8(args.fashion_mnist_ckpt, args)
        save()
        for row in fmnist["rows"]:
            print(f"fashion-mnist {row['kind']:<13} top-1 {100 * row['top1']:.2f}%  {row['file_mb']:.1f} MiB  "
                  f"ORT {row['ort_ms']:.2f} ms", flush=True)

    for name in names:
        old = results.get(name)
        if old is not None and not args.force and not (args.retry_failed and not old.get("exports")):
            print(f"{name:<24} skipped (in {json_path.name}; --force to redo)")
            continue
        results[name] = rec = _run_in_subprocess(name, args)
        save()
        if rec.get("exports"):
            print(f"{name:<24} ok   {rec['exporter']:<11} dynamic H/W {'yes' if rec['dynamic_hw'] else 'no ':<3} "
                  f"max abs {rec['max_abs']:.1e}  {rec['file_mb']:.1f} MiB  ORT {rec['ort_ms']:.1f} ms  "
                  f"PyTorch {rec['torch_ms']:.1f} ms  ({rec['wall_s']:.0f} s)", flush=True)
        else:
            print(f"{name:<24} FAIL {' '.join(str(rec.get('reason')).split())[:300]}", flush=True)
    save()
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
