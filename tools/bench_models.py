"""Per-model benchmark: inference img/s (batch 1 and a larger batch), training-step img/s, peak memory, params
and GMACs for every family's nano/tiny/small, on the zoo's default path vs its reference path, and vs timm's
equivalent where timm has one (MaxViT, with the same weights), plus Swin-T / ConvNeXt-T / ResNet-50 as
context rows. Every comparison is measured side by side in one run (interleaved repeats) and reported as a
ratio. Timings describe this machine only; nothing asserts them.

    python tools/bench_models.py                      # CPU, fp32, default model set -> out/ + docs/bench_models.*
    python tools/bench_models.py --models 'maxvit_tiny,nat_mini' --batch 1 8 --train
    python tools/bench_models.py --device cuda --dtype bf16 --channels-last --compile   # on a GPU
    python tools/bench_models.py --merge out/a.json out/b.json   # parts run at once (e.g. one per core)
    python tools/bench_models.py --memory-only --out docs/bench_models.json --doc docs/bench_models
                                                      # re-measure only the peak-memory column of a result

Outputs: ``out/bench_models.json`` (raw), ``docs/bench_models.md`` (table) and ``docs/bench_models.png``
(throughput vs GMACs, one colour per family). GMACs are counted on the reference path (``zoo.profile``), so
attention is included, sparse patterns (routed, neighborhood) as the keys each query actually sees; timm rows
are counted with fused attention off (SDPA counts as 0 in the flop counters).
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402

import zoo  # noqa: E402
from zoo import ops  # noqa: E402
from zoo.profile import count_macs, count_params, peak_memory  # noqa: E402

DEFAULT_MODELS = [
    "maxvit_nano", "maxvit_tiny", "maxvit_small",
    "biformer_nano", "biformer_tiny", "biformer_small",
    "crossformer_nano", "crossformer_tiny", "crossformer_small",
    "agent_swin_nano", "agent_swin_t", "agent_swin_s", "agent_pvt_t", "agent_deit_t",
    "nat_nano", "nat_mini", "nat_tiny", "dinat_nano", "dinat_mini", "dinat_s_tiny",
    "hybrid_nat_biformer_nano",
]
# zoo model -> timm's implementation of the same architecture (weights copied through the zoo converter)
TIMM_EQUIVALENT = {"maxvit_tiny": "maxvit_tiny_tf_224", "maxvit_small": "maxvit_small_tf_224"}
CONTEXT = ["swin_tiny_patch4_window7_224", "convnext_tiny", "resnet50"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _family(name: str) -> str:
    module = timm.models.model_entrypoint(name).__module__
    return module.rsplit(".", 1)[-1] if module.startswith("zoo.") else "timm (context)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One benchmarked configuration: a model plus the backend it must run on."""

    def __init__(self, label, model, backend, device, dtype, channels_last, compile_):
        self.label, self.backend, self.device, self.dtype = label, backend, device, dtype
        self.model = model.to(device=device, dtype=dtype)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.fn = torch.compile(self.model) if compile_ else self.model
        self.build_name = model.pretrained_cfg["architecture"]
        self.dtype_name = next(k for k, v in DTYPES.items() if v == dtype)
        self.size_hw: tuple[int, int] | None = None  # a non-square input (child measurements)

    def _input(self, batch, size):
        H, W = self.size_hw or (size, size)
        x = torch.randn(batch, 3, H, W, device=self.device, dtype=self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step(self, kind: str, batch: int, size: int) -> float:
        """One timed call; returns seconds."""
        x = self._input(batch, size)
        with ops.use_backend(self.backend):
            if kind == "infer":
                self.model.eval()
                _sync(self.device)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    self.fn(x)
            else:
                self.model.train()
                _sync(self.device)
                t0 = time.perf_counter()
                loss = self.fn(x).float().logsumexp(-1).mean()
                loss.backward()
                for p in self.model.parameters():
                    p.grad = None
            _sync(self.device)
        return time.perf_counter() - t0

    def peak_memory(self, kind: str, batch: int, size: int) -> int | None:
        """Peak bytes of one step measured in a fresh child process (:func:`measure_in_child`), so an earlier,
        larger model in this process cannot hide it, as the process-wide peak resident set did."""
        spec = {"model": self.build_name, "backend": self.backend, "kind": kind, "batch": batch, "size": [size, size],
                "device": str(self.device), "dtype": self.dtype_name, "channels_last": self.channels_last}
        return measure_in_child(spec)["peak_bytes"]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child_measure(spec: dict) -> dict:
    """Run in a fresh process: build ``spec['model']``, then run ``spec.get('steps', 1)`` steps of ``spec['kind']``
    on ``spec['backend']``; the first step's peak is measured. CPU: the peak resident set of the step above the
    resident set before it (the kernel's high-water mark is reset first through ``/proc/self/clear_refs``); CUDA:
    the allocator's peak (:func:`zoo.profile.peak_memory`). Returns the peak, the process's peak RSS and the
    seconds of every step."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    if spec.get("routed_chunked_min") is not None:  # the routed op's chunked-form threshold (docs/bench_cpu.md)
        from zoo.ops import routed

        routed.CHUNKED_MIN_GATHER_ELEMENTS = int(spec["routed_chunked_min"])
    device, (H, W) = torch.device(spec.get("device", "cpu")), spec["size"]
    torch.manual_seed(0)
    r = Runner("child", timm.create_model(spec["model"]), spec.get("backend"), device,
               DTYPES[spec.get("dtype", "fp32")], spec.get("channels_last", False), False)
    r.size_hw = (H, W)
    gc.collect()
    times, cpu = [], []

    def step():
        c0 = time.process_time()
        times.append(r.step(spec["kind"], spec["batch"], H))
        cpu.append(time.process_time() - c0)

    if device.type == "cuda":
        peak = peak_memory(step, device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kb("VmRSS")
        step()
        peak = (_rss_kb("VmHWM") - before) * 1024
    for _ in range(spec.get("steps", 1) - 1):
        step()
    rss = _rss_kb("VmHWM") * 1024 if device.type == "cpu" else None
    return {"peak_bytes": peak, "process_peak_rss_bytes": rss, "seconds": times, "cpu_seconds": cpu}


def measure_in_child(spec: dict) -> dict:
    """:func:`child_measure` in a fresh ``python tools/bench_models.py --child SPEC`` process."""
    import subprocess

    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child measurement of {spec} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_weights(zoo_model: torch.nn.Module, timm_name: str) -> torch.nn.Module:
    """timm's implementation of the same architecture, with the same weights: timm's random init is copied
    into the zoo model through the family's converter, and the two must agree on an input."""
    family = sys.modules[timm.models.model_entrypoint(zoo_model.pretrained_cfg["architecture"]).__module__]
    ref = timm.create_model(timm_name).eval()
    zoo_model.load_state_dict(family.checkpoint_filter_fn(ref.state_dict(), zoo_model), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        err = (zoo_model.eval()(x) - ref(x)).abs().max().item()
    if err > 1e-3:
        raise RuntimeError(f"{timm_name} and its zoo counterpart disagree by {err:.2e} with the same weights")
    return ref


def _macs(name: str, size: int, zoo_model: bool) -> int:
    with torch.device("meta"):
        model = timm.create_model(name)
    if zoo_model:
        return count_macs(model, (3, size, size))
    from timm.layers import set_fused_attn

    set_fused_attn(False)
    try:
        return count_macs(model, (3, size, size))
    finally:
        set_fused_attn(True)


def _machine(device: torch.device) -> dict:
    return {
        "platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
        "torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


def _settings(args) -> dict:
    return {k: v for k, v in vars(args).items()
            if k not in ("out", "doc", "resume", "merge", "child", "memory_only")}


def bench(args, previous: dict | None = None, save=None) -> dict:
    """Benchmark every selected model. ``previous``: a result of the same settings whose models are kept
    and skipped (``--resume``); ``save(result)`` is called after each model, so an interrupted run keeps
    what it measured. A model that fails is recorded under ``errors`` and the run goes on."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    result = {"machine": _machine(device), "settings": _settings(args), "rows": [], "errors": {}}
    if previous:
        result["rows"] = list(previous.get("rows", []))
    done = {r["model"] for r in result["rows"]}
    names = []
    for pattern in args.models.split(","):
        matched = fnmatch.filter(zoo.list_models(), pattern) or ([pattern] if timm.is_model(pattern) else [])
        if not matched:
            print(f"skip {pattern!r}: not registered", file=sys.stderr)
        names += [m for m in matched if m not in names]
    if args.context:
        names += [c for c in CONTEXT if c not in names]
    kinds = ["infer"] + (["train"] if args.train else [])
    for name in names:
        if name in done:
            print(f"{name}: kept from {args.out}", flush=True)
            continue
        try:
            result["rows"] += _bench_model(name, args, device, dtype, kinds)
        except Exception as e:  # noqa: BLE001 - recorded and reported; the other models still run
            result["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"{name}: FAILED {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        gc.collect()
        if save is not None:
            save(result)
    return result


def _child_spec(row: dict, settings: dict, machine: dict) -> dict:
    """The child-process measurement that gives ``row`` its peak memory: the row's model (timm's architecture
    for a 'timm NAME' runner), backend, kind, batch and size, with the settings of the run it came from."""
    runner = row["runner"]
    if runner == "zoo default":
        model, backend = row["model"], None
    elif runner == "zoo reference":
        model, backend = row["model"], "reference"
    elif runner.startswith("timm "):
        model, backend = runner.removeprefix("timm "), None
    else:
        raise ValueError(f"row of {row['model']} has an unknown runner {runner!r}")
    return {"model": model, "backend": backend, "kind": row["kind"], "batch": row["batch"],
            "size": [row["img_size"], row["img_size"]], "device": settings.get("device", "cpu"),
            "dtype": settings.get("dtype", "fp32"), "channels_last": bool(settings.get("channels_last")),
            "threads": settings.get("threads") or machine.get("threads")}


def refresh_memory(result: dict, save=None, keep_refreshed: bool = False) -> dict:
    """Re-measure the peak-memory column of every row of ``result`` in fresh child processes (no timing: the
    img/s and ratios stay those of the run that made ``result``). Rows record the method and when it ran;
    ``save(result)`` is called after each row, so an interrupted refresh keeps what it measured, and
    ``keep_refreshed`` (``--resume``) skips the rows an earlier refresh measured."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for row in result["rows"]:
        if keep_refreshed and row.get("peak_mem_refreshed"):
            continue
        peak = measure_in_child(_child_spec(row, result["settings"], result["machine"]))["peak_bytes"]
        row.update(peak_mem_mb=round(peak / 2**20, 1), peak_mem_method=CHILD_METHOD, peak_mem_refreshed=when)
        print(f"{row['model']:28s} {row['runner']:28s} {row['kind']:5s} b{row['batch']:<3d} "
              f"{row['peak_mem_mb']:8.1f} MB", flush=True)
        if save is not None:
            save(result)
    result["memory_refreshed"] = {"at": when, "machine": _machine(torch.device("cpu")),
                                  "command": "python tools/bench_models.py --memory-only"}
    return result


CHILD_METHOD = "fresh child process: peak RSS of one step above the RSS before it"


def _bench_model(name: str, args, device: torch.device, dtype: torch.dtype, kinds: list[str]) -> list[dict]:
    rows = []
    is_zoo = name in zoo.list_models()
    torch.manual_seed(0)
    model = timm.create_model(name)
    runners = []
    if is_zoo:
        if name in TIMM_EQUIVALENT:
            ref = _same_weights(model, TIMM_EQUIVALENT[name])
        runners.append(Runner("zoo default", model, None, device, dtype, args.channels_last, args.compile))
        if not args.no_reference:
            twin = timm.create_model(name)
            twin.load_state_dict(model.state_dict())
            runners.append(Runner("zoo reference", twin, "reference", device, dtype, args.channels_last, False))
        if name in TIMM_EQUIVALENT:
            runners.append(Runner(f"timm {TIMM_EQUIVALENT[name]}", ref, None, device, dtype,
                                  args.channels_last, args.compile))
    else:
        runners.append(Runner(f"timm {name}", model, None, device, dtype, args.channels_last, args.compile))
    macs = _macs(name, args.img_size, is_zoo)
    params = count_params(model)
    for kind in kinds:
        for batch in args.batch:
            for r in runners:  # warm-up (and compile) every runner first
                for _ in range(args.warmup):
                    r.step(kind, batch, args.img_size)
            times = {r.label: [] for r in runners}
            for _ in range(args.repeats):  # interleave so load changes hit every runner alike
                for r in runners:
                    times[r.label].append(r.step(kind, batch, args.img_size))
            base = statistics.median(times[runners[0].label])
            for r in runners:
                med = statistics.median(times[r.label])
                row = {
                    "model": name, "family": _family(name), "runner": r.label, "kind": kind, "batch": batch,
                    "img_size": args.img_size, "median_s": med, "img_per_s": batch / med,
                    "speedup_of_zoo_default": med / base if r is not runners[0] else 1.0,
                    "peak_mem_mb": (lambda b: None if b is None else round(b / 2**20, 1))(
                        r.peak_memory(kind, batch, args.img_size)),
                    "peak_mem_method": CHILD_METHOD,
                    "params_m": round(params / 1e6, 3), "gmacs": round(macs / 1e9, 3),
                    "paths": ops.explain() if r.backend is None and device.type == "cuda" else None,
                }
                rows.append(row)
                print(f"{name:28s} {r.label:28s} {kind:5s} b{batch:<3d} {row['img_per_s']:9.1f} img/s "
                      f"zoo-default is {row['speedup_of_zoo_default']:.2f}x this", flush=True)
    del runners, model
    return rows


_PER_RUN = ("models", "context")  # settings that may differ between the parts of a merged benchmark


def merge(parts: list[dict]) -> dict:
    """One result from runs of disjoint model lists made with the same settings (e.g. two processes at once,
    one per core). Rows keep the default model order; every ratio stays within its own run."""
    first = parts[0]
    same = {k: v for k, v in first["settings"].items() if k not in _PER_RUN and v is not None}
    seen: set[str] = set()
    for part in parts:
        other = {k: v for k, v in part["settings"].items() if k not in _PER_RUN and v is not None}
        diff = sorted(k for k in set(same) | set(other) if same.get(k) != other.get(k))
        if diff:
            raise ValueError(f"cannot merge benchmarks made with other settings ({', '.join(diff)} differ)")
        models = {r["model"] for r in part["rows"]} | set(part.get("errors", {}))
        if models & seen:
            raise ValueError(f"models measured in two parts: {sorted(models & seen)}; merge disjoint runs")
        seen |= models
    order = {name: i for i, name in enumerate(DEFAULT_MODELS + CONTEXT)}
    rows = [dict(r, part=i) for i, part in enumerate(parts) for r in part["rows"]]
    rows.sort(key=lambda r: order.get(r["model"], len(order)))  # stable: unknown models keep run order
    models = list(dict.fromkeys(r["model"] for r in rows))
    merged = {
        "machine": dict(first["machine"], parts=len(parts)),
        "settings": dict(first["settings"], models=",".join(models),
                         context=any(p["settings"].get("context") for p in parts)),
        "rows": rows,
        "errors": {k: v for p in parts for k, v in p.get("errors", {}).items()},
    }
    refreshed = [p["memory_refreshed"] for p in parts if p.get("memory_refreshed")]
    if refreshed:  # the rows that carry peak_mem_refreshed say which ones it covers
        merged["memory_refreshed"] = max(refreshed, key=lambda r: r["at"])
    return merged


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    parts = m.get("parts", 1)
    how = "" if parts == 1 else (
        f" Merged from {parts} runs, each with its own part of the model list ({m['threads']} thread(s) each; "
        f"parts may have run at the same time, sharing the machine): compare absolute img/s within a part only; "
        f"each ratio is within one run."
    )
    lines = [
        "# Model benchmark",
        "",
        f"Machine: {m['device']} ({m['processor'] or m['platform']}, {m['threads']} threads), torch {m['torch']}, "
        f"timm {m['timm']}; {s['dtype']}, {s['img_size']} px, median of {s['repeats']} interleaved runs after "
        f"{s['warmup']} warm-up. Generated by `python tools/bench_models.py`.{how}",
        "",
        "'x zoo' = how many times faster the zoo default path is than that row (same model, same run). "
        "'peak MB' = memory of one step above the process before it, measured in a fresh child process per row "
        "(CPU: peak resident set; CUDA: allocator peak); '—' where a row predates this measurement."
        + _refreshed_note(result),
        "",
        "| model | family | runner | kind | batch | img/s | x zoo | params (M) | GMACs | peak MB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        # rows measured before the child-process method (a process-wide peak RSS: mostly 0) are not shown
        valid = r["peak_mem_mb"] is not None and str(r.get("peak_mem_method")).startswith("fresh child")
        mem = f"{r['peak_mem_mb']:.0f}" if valid else "—"
        lines.append(
            f"| `{r['model']}` | {r['family']} | {r['runner']} | {r['kind']} | {r['batch']} | {r['img_per_s']:.1f} | "
            f"{r['speedup_of_zoo_default']:.2f} | {r['params_m']:.2f} | {r['gmacs']:.2f} | {mem} |"
        )
    for name, err in result.get("errors", {}).items():
        lines.append(f"\n**{name} failed**: {err}")
    return "\n".join(lines) + "\n"


def _refreshed_note(result: dict) -> str:
    refreshed = result.get("memory_refreshed")
    if not refreshed:
        return ""
    n, total = sum(bool(r.get("peak_mem_refreshed")) for r in result["rows"]), len(result["rows"])
    which = "The peak column was" if n == total else (
        f"The peak column of {n} of the {total} rows (the others: measured in their own run) was")
    return (f" {which} re-measured on its own at {refreshed['at']} (`{refreshed['command']}`, "
            f"torch {refreshed['machine']['torch']}), after the timings.")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["kind"] == "infer" and r["runner"] in ("zoo default",)
            or (r["family"] == "timm (context)" and r["kind"] == "infer")]
    batch = max(r["batch"] for r in rows)
    rows = [r for r in rows if r["batch"] == batch]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    families = sorted({r["family"] for r in rows})
    cmap = plt.get_cmap("tab10")
    for i, fam in enumerate(families):
        pts = [r for r in rows if r["family"] == fam]
        ax.scatter([r["gmacs"] for r in pts], [r["img_per_s"] for r in pts], color=cmap(i % 10), label=fam, s=40)
        for r in pts:
            ax.annotate(r["model"], (r["gmacs"], r["img_per_s"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"GMACs at {result['settings']['img_size']} px")
    ax.set_ylabel(f"inference img/s (batch {batch}, zoo default path)")
    ax.set_title(f"Throughput vs cost — {result['machine']['device']}, {result['settings']['dtype']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated names or globs")
    parser.add_argument("--no-context", dest="context", action="store_false", help="skip Swin/ConvNeXt/ResNet rows")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--train", action="store_true", help="also time a training step (forward + backward)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the default-path runners")
    parser.add_argument("--no-reference", action="store_true", help="skip the zoo reference-path runner")
    parser.add_argument("--out", default="out/bench_models.json")
    parser.add_argument("--doc", default="docs/bench_models", help="stem of the .md table and .png plot")
    parser.add_argument("--resume", action="store_true", help="keep the models already in --out (same settings)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="measure nothing: merge these results (disjoint models, same settings) into --out/--doc")
    parser.add_argument("--memory-only", action="store_true",
                        help="time nothing: re-measure the peak-memory column of --out (one fresh child process "
                             "per row) and rewrite --doc")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)  # JSON: see child_measure
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_measure(json.loads(args.child))))
        return 0
    if args.merge:
        try:
            result = merge([json.loads(Path(p).read_text()) for p in args.merge])
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        _write(result, Path(args.out), Path(args.doc))
        return 0
    out = Path(args.out)
    if args.memory_only:
        if not out.is_file():
            print(f"error: --memory-only refreshes an existing result; {out} does not exist", file=sys.stderr)
            return 2
        result = refresh_memory(json.loads(out.read_text()), save=lambda res: _save(res, out),
                                keep_refreshed=args.resume)
        _write(result, out, Path(args.doc))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = None
    if args.resume and out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("settings") != _settings(args):
            print(f"error: {out} was made with other settings ({previous.get('settings')}); "
                  f"drop --resume or pass the same flags", file=sys.stderr)
            return 2
    out.parent.mkdir(parents=True, exist_ok=True)

    result = bench(args, previous, lambda res: _save(res, out))
    _write(result, out, Path(args.doc))
    return 1 if result["errors"] else 0


def _save(result: dict, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


def _write(result: dict, out: Path, doc: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.with_suffix(".md").write_text(markdown(result))
    plot(result, doc.with_suffix(".png"))
    print(f"wrote {out}, {doc.with_suffix('.md')}, {doc.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
