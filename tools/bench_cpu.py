"""CPU benchmarks of the tiny variants against a ConvNet, onnxruntime and torch.compile: every ratio is measured
side by side in one process (the runners of a row interleaved, repeat by repeat), so load hits them alike.

Sections (``--sections``, comma-separated):

- ``efficiency``: each tiny variant's eager time per GMAC divided by timm ``convnext_tiny``'s in the same row
  (1.00 = as efficient per multiply-add as ConvNeXt-T). ``--bf16`` adds the same ratio in bfloat16 (both
  models cast), the bf16/fp32 speed-up, and the logits' change on the official-parity fixtures
  (tests/fixtures/parity) when run from a checkout.
- ``onnxruntime``: the zoo's eager latency against onnxruntime on the zoo's own exported file
  (:func:`zoo.export.export_onnx`, the defaults a user gets: dynamic batch and size, verified), same threads
  (``intra_op_num_threads``, one inter-op thread). Runs in the same rows as ``efficiency``.
- ``profile``: where the time goes, eager (torch profiler, self time per op) against onnxruntime (its profiler,
  time per node type), per model: the profile that explains an eager/onnxruntime or per-GMAC gap.
- ``compile``: ``torch.compile`` (inductor, ``dynamic=False``): compile seconds (first call minus an eager call),
  speed-up over eager, and the graph breaks ``torch._dynamo.explain`` finds.

    python tools/bench_cpu.py --sections efficiency,onnxruntime --threads 1 2 --batch 1 8 --out out/bench_cpu.json
    python tools/bench_cpu.py --sections compile --threads 2 --batch 1 8 --out out/bench_cpu_compile.json
    python tools/bench_cpu.py --doc docs/bench_cpu.md --from out/bench_cpu.json out/bench_cpu_compile.json

``--doc`` rewrites the tables between ``<!-- bench_cpu:SECTION -->`` and ``<!-- /bench_cpu:SECTION -->`` in that
file (the prose around them is written by hand). GMACs are counted on the reference path (``zoo.profile``).
Timings describe the machine they ran on; nothing asserts them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402

import zoo  # noqa: E402, F401  (registers the zoo models)
from zoo.profile import model_macs  # noqa: E402

TINY = ["maxvit_tiny", "biformer_tiny", "crossformer_tiny", "agent_swin_t", "agent_pvt_t", "agent_deit_t",
        "nat_mini", "dinat_mini"]
BASELINE = "convnext_tiny"
PARITY = ROOT / "tests" / "fixtures" / "parity"
# tiny variant -> its official-parity case (the bf16 accuracy check)
PARITY_CASE = {"maxvit_tiny": "maxvit_tiny_tf_224", "biformer_tiny": "biformer_tiny",
               "crossformer_tiny": "crossformer_tiny", "agent_swin_t": "agent_swin_t", "agent_pvt_t": "agent_pvt_t",
               "agent_deit_t": "agent_deit_t", "nat_mini": "nat_mini", "dinat_mini": "dinat_mini"}


def interleaved(fns: dict[str, callable], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each callable over ``repeats`` rounds, one call of each per round (after ``warmup``
    calls of each), so a change of load during the row reaches every callable alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _eager(model: torch.nn.Module, x: torch.Tensor):
    def run():
        with torch.inference_mode():
            model(x)
    return run


def _build(name: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name).eval().to(dtype)


class OrtFile:
    """The zoo's exported file of a model (exported once per model, default settings) and one onnxruntime
    session per thread count."""

    def __init__(self, name: str, model: torch.nn.Module, workdir: Path):
        from zoo.export import export_onnx

        self.path = workdir / f"{name}.onnx"
        t0 = time.perf_counter()
        report = export_onnx(model, self.path, img_size=224, batch_size=2)
        self.export_s = time.perf_counter() - t0
        self.exporter = report.exporter
        self.sessions: dict[int, object] = {}

    def runner(self, threads: int, x: torch.Tensor):
        import onnxruntime as ort

        if threads not in self.sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.log_severity_level = 3
            self.sessions[threads] = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        sess = self.sessions[threads]
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return lambda: sess.run(None, feed)


def efficiency_rows(args, names: list[str]) -> list[dict]:
    """The efficiency / onnxruntime rows: one per (model, threads, batch), every runner of the row interleaved."""
    with_ort = "onnxruntime" in args.sections
    workdir = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    macs = {n: model_macs(n)[1] for n in [BASELINE, *names]}
    base = {torch.float32: _build(BASELINE)}
    if args.bf16:
        base[torch.bfloat16] = _build(BASELINE, torch.bfloat16)
    rows = []
    for name in names:
        model = _build(name)
        ort_file = OrtFile(name, model, workdir) if with_ort else None
        bf16 = copy.deepcopy(model).to(torch.bfloat16) if args.bf16 else None
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch:
                x = torch.randn(batch, 3, 224, 224)
                fns = {"zoo": _eager(model, x), "convnext": _eager(base[torch.float32], x)}
                if ort_file is not None:
                    fns["onnxruntime"] = ort_file.runner(threads, x)
                if bf16 is not None:
                    xb = x.to(torch.bfloat16)
                    fns["zoo_bf16"] = _eager(bf16, xb)
                    fns["convnext_bf16"] = _eager(base[torch.bfloat16], xb)
                t = interleaved(fns, args.repeats, args.warmup)
                row = {"model": name, "threads": threads, "batch": batch, "gmacs": macs[name] / 1e9,
                       "baseline_gmacs": macs[BASELINE] / 1e9, "seconds": t,
                       "time_vs_convnext": t["zoo"] / t["convnext"],
                       "per_gmac_vs_convnext": (t["zoo"] / macs[name]) / (t["convnext"] / macs[BASELINE])}
                if ort_file is not None:
                    row.update(eager_over_ort=t["zoo"] / t["onnxruntime"], exporter=ort_file.exporter)
                if bf16 is not None:
                    row.update(bf16_per_gmac_vs_convnext=(t["zoo_bf16"] / macs[name])
                               / (t["convnext_bf16"] / macs[BASELINE]), bf16_speedup=t["zoo"] / t["zoo_bf16"])
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model, bf16, ort_file
    return rows


def graph_breaks(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """``torch._dynamo.explain`` of one inference call: graphs, breaks and the first break reasons."""
    import torch._dynamo

    torch._dynamo.reset()
    with torch.inference_mode():
        out = torch._dynamo.explain(model)(x)
    reasons = [str(getattr(r, "reason", r)).splitlines()[0][:160] for r in out.break_reasons]
    return {"graphs": out.graph_count, "graph_breaks": out.graph_break_count, "break_reasons": reasons[:3]}


def compile_rows(args, names: list[str]) -> list[dict]:
    """torch.compile rows: per (model, threads, batch) the compile seconds and the compiled/eager ratio."""
    import torch._dynamo

    rows = []
    for name in names:
        model = _build(name)
        breaks = graph_breaks(model, torch.randn(1, 3, 224, 224))
        for threads in args.threads:
            torch.set_num_threads(threads)
            torch._dynamo.reset()
            compiled = torch.compile(model, dynamic=False)
            for batch in args.batch:
                x = torch.randn(batch, 3, 224, 224)
                eager, comp = _eager(model, x), _eager(compiled, x)
                t0 = time.perf_counter()
                comp()  # compiles for this shape
                first = time.perf_counter() - t0
                t = interleaved({"eager": eager, "compiled": comp}, args.repeats, args.warmup)
                row = {"model": name, "threads": threads, "batch": batch, "seconds": t,
                       "compile_s": max(first - t["eager"], 0.0), "speedup": t["eager"] / t["compiled"], **breaks}
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
    return rows


def bf16_accuracy(names: list[str]) -> list[dict]:
    """Logits of each model's official-parity case in bf16 against the official fp32 logits (the fp32 zoo model's
    own distance is listed alongside): max abs error over the logits' range, and top-1 agreement."""
    sys.path.insert(0, str(PARITY))
    sys.path.insert(0, str(ROOT / "tests"))
    from official_init import load_case
    from parity_models import parity_model

    rows = []
    for name in names:
        case_dir = PARITY / PARITY_CASE[name]
        case, official_sd, x, expected = load_case(case_dir)
        model = parity_model(case)
        family = sys.modules[timm.models.model_entrypoint(name).__module__]
        model.load_state_dict(family.checkpoint_filter_fn(official_sd, model), strict=True)
        model.eval()
        scale = (expected.max() - expected.min()).item()
        row = {"model": name, "case": case_dir.name, "logit_range": scale}
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            with torch.inference_mode():
                out = model.to(dtype)(x.to(dtype)).float()
            row[f"{label}_max_abs_err"] = (out - expected).abs().max().item()
            row[f"{label}_top1_agree"] = (out.argmax(-1) == expected.argmax(-1)).float().mean().item()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def op_profile(name: str, threads: int, batch: int, calls: int = 3, top: int = 8) -> dict:
    """Where the time goes, eager against onnxruntime: self time per op (torch profiler, averaged over ``calls``
    inference calls) and per node type (onnxruntime's own profiler on the zoo's exported file), in ms per call,
    the ``top`` largest of each."""
    import onnxruntime as ort
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    model = _build(name)
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x)
    eager = {e.key: e.self_cpu_time_total / 1e3 / calls for e in prof.key_averages()}
    workdir = Path(tempfile.mkdtemp(prefix="bench_cpu_prof_"))
    ort_file = OrtFile(name, model, workdir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling, opts.profile_file_prefix = True, str(workdir / "ort")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(ort_file.path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    for _ in range(2 + calls):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"][2:]
    t_first = runs[0]["ts"] if runs else 0
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t_first:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / calls
    biggest = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1])[:top])  # noqa: E731
    return {"model": name, "threads": threads, "batch": batch, "eager_total_ms": sum(eager.values()),
            "ort_total_ms": sum(per_op.values()), "eager_ops_ms": biggest(eager), "ort_ops_ms": biggest(per_op)}


def machine() -> dict:
    import onnxruntime

    return {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "timm": timm.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count()}


# ---------------------------------------------------------------------------------------------- markdown tables


def _ms(key: str):
    return lambda r: f"{r['seconds'][key] * 1e3:.0f}"


def _num(key: str, fmt: str = ".2f"):
    return lambda r: format(r[key], fmt)


def _top(key: str):
    return lambda r: ", ".join(f"{k.split('::')[-1]} {v:.1f}" for k, v in list(r[key].items())[:5])


_ROW = [("model", lambda r: f"`{r['model']}`", False), ("threads", _num("threads", "d"), True),
        ("batch", _num("batch", "d"), True)]
# section -> its columns: (header, cell of a row, right-aligned)
COLUMNS = {
    "efficiency": _ROW + [("GMACs", _num("gmacs"), True), ("zoo ms", _ms("zoo"), True),
                          ("ConvNeXt-T ms", _ms("convnext"), True),
                          ("time / ConvNeXt-T", _num("time_vs_convnext"), True),
                          ("per GMAC / ConvNeXt-T", _num("per_gmac_vs_convnext"), True)],
    "efficiency_bf16": [("bf16 per GMAC / ConvNeXt-T bf16", _num("bf16_per_gmac_vs_convnext"), True),
                        ("bf16 speed-up", _num("bf16_speedup"), True)],
    "onnxruntime": _ROW + [("zoo eager ms", _ms("zoo"), True), ("onnxruntime ms", _ms("onnxruntime"), True),
                           ("eager / onnxruntime", _num("eager_over_ort"), True),
                           ("exporter", lambda r: r["exporter"], False)],
    "compile": _ROW + [("eager ms", _ms("eager"), True), ("compiled ms", _ms("compiled"), True),
                       ("speed-up", _num("speedup"), True), ("compile s", _num("compile_s", ".0f"), True),
                       ("graphs", _num("graphs", "d"), True), ("graph breaks", _num("graph_breaks", "d"), True)],
    "bf16": [("model", lambda r: f"`{r['model']}`", False), ("parity case", lambda r: r["case"], False),
             ("logit range", _num("logit_range"), True), ("fp32 max abs err", _num("fp32_max_abs_err", ".1e"), True),
             ("bf16 max abs err", _num("bf16_max_abs_err", ".1e"), True),
             ("bf16 top-1 agreement", _num("bf16_top1_agree"), True)],
    "profile": _ROW + [("eager ms (profiled)", _num("eager_total_ms", ".0f"), True),
                       ("largest eager ops, ms", _top("eager_ops_ms"), False),
                       ("onnxruntime ms (profiled)", _num("ort_total_ms", ".0f"), True),
                       ("largest onnxruntime nodes, ms", _top("ort_ops_ms"), False)],
}


def table(section: str, rows: list[dict]) -> str:
    """The markdown table of a section's rows (efficiency gets the bf16 columns where the rows have them)."""
    cols = COLUMNS[section]
    if section == "efficiency" and any("bf16_speedup" in r for r in rows):
        cols = cols + COLUMNS["efficiency_bf16"]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |",
             "|" + "|".join("---:" if c[2] else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(c[1](r) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _settings_line(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    return (f"_{m['processor'] or m['platform']}, {m['cpu_count']} cores; torch {m['torch']}, timm {m['timm']}, "
            f"onnxruntime {m['onnxruntime']}; 224 px, median of {s['repeats']} interleaved rounds after "
            f"{s['warmup']} warm-up{'; freed memory retained (--retain-memory)' if s.get('retain_memory') else ''}"
            f"; load average at start {s.get('load_start', '?')}, at end "
            f"{result.get('load_end', '?')}; {result.get('started', '')}._")


# doc section -> the result key holding its rows
SOURCES = {"efficiency": "efficiency", "onnxruntime": "efficiency", "compile": "compile", "bf16": "bf16_accuracy",
           "profile": "profile"}


def write_doc(doc: Path, results: list[dict]) -> list[str]:
    """Replace the text between each section's markers in ``doc`` by the table of the results that hold it;
    returns the sections written. A section whose markers are missing is an error (the doc says where it goes)."""
    text = doc.read_text()
    written = []
    for section, key in SOURCES.items():
        result = next((r for r in results if r.get(key) and (section != "onnxruntime"
                                                             or "eager_over_ort" in r[key][0])), None)
        if result is None:
            continue
        start, end = f"<!-- bench_cpu:{section} -->", f"<!-- /bench_cpu:{section} -->"
        if start not in text or end not in text:
            raise ValueError(f"{doc} has no {start} ... {end} markers; add them where the {section} table goes")
        body = f"{start}\n{_settings_line(result)}\n\n{table(section, result[key])}\n{end}"
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _, body=body: body, text, flags=re.S)
        written.append(section)
    doc.write_text(text)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="efficiency,onnxruntime",
                   help="efficiency, onnxruntime, compile, profile")
    p.add_argument("--models", default=",".join(TINY), help="comma-separated model names")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time bf16 and check its logits on the parity cases")
    p.add_argument("--retain-memory", action="store_true",
                   help="zoo.cpu_memory.retain_freed_memory() first (glibc keeps freed memory for reuse)")
    p.add_argument("--out", default="out/bench_cpu.json")
    p.add_argument("--doc", type=Path, help="rewrite the generated tables of this markdown file")
    p.add_argument("--from", dest="sources", nargs="+", type=Path, help="with --doc: results to write (no run)")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - {"efficiency", "onnxruntime", "compile", "profile"}
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from efficiency, onnxruntime, compile, profile")
    if args.sources:
        if not args.doc:
            p.error("--from needs --doc")
        print("wrote", write_doc(args.doc, [json.loads(s.read_text()) for s in args.sources]))
        return 0
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    missing = [n for n in names if not timm.is_model(n)]
    if missing:
        p.error(f"not registered: {missing}")
    if args.retain_memory:
        from zoo.cpu_memory import retain_freed_memory, retain_freed_memory_unavailable

        if not retain_freed_memory():
            p.error(f"--retain-memory: {retain_freed_memory_unavailable() or 'mallopt refused'}")
    result = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {k: v for k, v in vars(args).items() if k not in ("doc", "sources", "out")}}
    result["settings"]["load_start"] = round(os.getloadavg()[0], 1)
    if {"efficiency", "onnxruntime"} & set(args.sections):
        result["efficiency"] = efficiency_rows(args, names)
        if args.bf16:
            result["bf16_accuracy"] = bf16_accuracy([n for n in names if n in PARITY_CASE])
    if "compile" in args.sections:
        result["compile"] = compile_rows(args, names)
    if "profile" in args.sections:
        result["profile"] = [op_profile(n, t, b) for n in names for t in args.threads for b in args.batch]
    result["load_end"] = round(os.getloadavg()[0], 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if args.doc:
        print("wrote", write_doc(args.doc, [result]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
