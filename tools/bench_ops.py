"""Micro-benchmark of every zoo op on every available path, at the shapes of the tiny variants' stages.

Attention ops at their stage shapes, and the dense ops (``linear``/``conv2d`` with a fused activation and a
folded eval BatchNorm) at MaxViT-T's MLP and MBConv shapes.

For each op and stage shape it times each backend that can run here (forced through
``zoo.ops.use_backend`` and confirmed with ``zoo.ops.last_path``): the median of ``--repeats`` runs after
warm-up, the paths of a shape interleaved, forward only (``--backward`` adds forward+backward). Prints a
table and writes JSON. Timings are measurements of this machine, never asserted anywhere. On CUDA
(``--device cuda``, the default when a GPU is present) the ``triton`` kernels are timed too, with
``--dtype bfloat16`` for the usual GPU setting. The peak memory of one run is recorded (CUDA: the
allocator's peak; CPU: the profiler's allocation events). On CPU the triton
path is skipped (its interpreter is for tests only).

    python tools/bench_ops.py --out out/bench_ops.json [--backward] [--ops attention,routed_attention]
    python tools/bench_ops.py --out docs/bench_ops_fwd.json --md docs/bench_ops.md   # table, appended per mode
    python tools/bench_ops.py --device cuda --dtype bfloat16 --backward --out out/bench_ops_cuda.json
    python tools/bench_ops.py --overhead [--md docs/bench_ops.md]   # the dispatcher's Python cost per call

``--overhead`` times the dispatcher's Python cost instead: a 1x1 ``zoo.ops.linear`` called in a loop against
``F.linear`` on the same tensors (inference, no grad, CPU), blocks of calls interleaved, and the same op forced
onto the reference path (the same F.linear underneath, so the difference is the dispatch alone).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import zoo.ops as ops
from zoo.ops import _dispatch

DEVICE = torch.device("cpu")
DTYPE = torch.float32

TINY_STAGES = [(56, 64, 2), (28, 128, 4), (14, 256, 8), (7, 512, 16)]  # map side, dim, heads (d = 32)


def _t(*shape, grad):
    return torch.randn(*shape, device=DEVICE, dtype=DTYPE).requires_grad_(grad)


def case_attention(grad: bool):
    """MaxViT-T block attention: 7x7 windows, learnable relative-position bias [1, heads, 49, 49]."""
    for side, _dim, heads in TINY_STAGES:
        groups = (side // 7) ** 2
        q, k, v = (_t(groups, heads, 49, 32, grad=grad) for _ in range(3))
        bias = _t(1, heads, 49, 49, grad=grad)
        yield f"maxvit_t window {side}x{side}", lambda q=q, k=k, v=v, b=bias: ops.attention(q, k, v, b)


def case_routed(grad: bool):
    """BiFormer-T bi-level routing: n_win 7, top-k 1/4/16/all, d 32."""
    for (side, _dim, heads), topk in zip(TINY_STAGES, (1, 4, 16, -1)):
        q, k, v = (_t(1, heads, side, side, 32, grad=grad) for _ in range(3))
        yield f"biformer_t stage {side}x{side} topk {topk}", (
            lambda q=q, k=k, v=v, t=topk: ops.routed_attention(q, k, v, 7, t)
        )


def case_agent(grad: bool):
    """Agent-Swin-T global agent attention: agents 9/16/49/49 over the whole stage map, d 32."""
    for (side, _, _), agents, heads in zip(TINY_STAGES, (9, 16, 49, 49), (3, 6, 12, 24)):
        n = side * side
        q, k, v = (_t(1, heads, n, 32, grad=grad) for _ in range(3))
        a = _t(1, heads, agents, 32, grad=grad)
        ab, qb = _t(1, heads, agents, n, grad=grad), _t(1, heads, n, agents, grad=grad)
        yield f"agent_swin_t stage {side}x{side} agents {agents}", (
            lambda q=q, k=k, v=v, a=a, ab=ab, qb=qb: ops.agent_attention(q, k, v, a, ab, qb)
        )


def case_neighborhood(grad: bool):
    """NAT-mini / DiNAT-mini neighborhood attention: kernel 7, RPB, dilation 1 and the DiNAT schedule."""
    if not hasattr(ops, "neighborhood_attention2d"):
        return
    for (side, _, heads), dil in zip(TINY_STAGES, (8, 4, 2, 1)):
        q, k, v = (_t(1, heads, side, side, 32, grad=grad) for _ in range(3))
        rpb = _t(heads, 13, 13, grad=grad)
        for d in sorted({1, dil}):
            yield f"nat_mini stage {side}x{side} k7 dil {d}", (
                lambda q=q, k=k, v=v, r=rpb, d=d: ops.neighborhood_attention2d(q, k, v, 7, d, r)
            )


def case_linear(grad: bool):
    """MaxViT-T MLP at batch 8: fc1 (dim -> 4·dim) + tanh-GELU, fc2 (4·dim -> dim), attention qkv (dim -> 3·dim)."""
    for side, dim, _ in TINY_STAGES:
        n = 8 * side * side
        x, h = _t(n, dim, grad=grad), _t(n, 4 * dim, grad=grad)
        w1, b1 = _t(4 * dim, dim, grad=grad), _t(4 * dim, grad=grad)
        w2, b2 = _t(dim, 4 * dim, grad=grad), _t(dim, grad=grad)
        wq, bq = _t(3 * dim, dim, grad=grad), _t(3 * dim, grad=grad)
        yield f"b8 {side}x{side} fc1 {dim}->{4 * dim} +gelu_tanh", (
            lambda x=x, w=w1, b=b1: ops.linear(x, w, b, "gelu_tanh"))
        yield f"b8 {side}x{side} fc2 {4 * dim}->{dim}", lambda x=h, w=w2, b=b2: ops.linear(x, w, b)
        yield f"b8 {side}x{side} qkv {dim}->{3 * dim}", lambda x=x, w=wq, b=bq: ops.linear(x, w, b)


def case_conv2d(grad: bool):
    """MaxViT-T MBConv at batch 8, channels-last, eval BatchNorm: 1x1 expansion + BN + tanh-GELU, 3x3 depthwise
    + BN + tanh-GELU."""
    for side, dim, _ in TINY_STAGES:
        mid = 4 * dim
        x = _t(8, dim, side, side, grad=grad).contiguous(memory_format=torch.channels_last)
        h = _t(8, mid, side, side, grad=grad).contiguous(memory_format=torch.channels_last)
        bn = ops.BatchNormStats(torch.randn(mid), torch.rand(mid) + 0.5, torch.rand(mid) + 0.5, torch.randn(mid), 1e-3)
        bn = ops.BatchNormStats(*(t.to(DEVICE, DTYPE) for t in bn[:4]), bn.eps)
        w1, wd = _t(mid, dim, 1, 1, grad=grad), _t(mid, 1, 3, 3, grad=grad)
        yield f"b8 {side}x{side} 1x1 {dim}->{mid} +bn+gelu_tanh", (
            lambda x=x, w=w1, bn=bn: ops.conv2d(x, w, None, 1, 0, 1, 1, "gelu_tanh", bn))
        yield f"b8 {side}x{side} dw3x3 {mid} +bn+gelu_tanh", (
            lambda x=h, w=wd, bn=bn, g=mid: ops.conv2d(x, w, None, 1, 1, 1, g, "gelu_tanh", bn))


CASES: dict[str, Callable] = {
    "attention": case_attention,
    "routed_attention": case_routed,
    "agent_attention": case_agent,
    "neighborhood_attention2d": case_neighborhood,
    "linear": case_linear,
    "conv2d": case_conv2d,
}


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _run_once(fn: Callable, backward: bool) -> None:
    """One run of an op: forward, and in the forward+backward mode a backward through a scalar of it."""
    out = fn()
    if backward:
        out.float().square().mean().backward()


def _time(runs: dict[str, Callable], backward: bool, repeats: int) -> dict[str, tuple[float, float | None]]:
    """Per path: median milliseconds over ``repeats`` runs after 2 warm-up runs, the paths INTERLEAVED (one run
    of each in turn, so a change of machine load hits them alike), and the peak memory of one run (MiB: the
    CUDA allocator's peak; on CPU the profiler's allocation events). ``runs`` maps a path to a callable that
    runs the op on it."""
    for fn in runs.values():
        for _ in range(2):
            _run_once(fn, backward)
    _sync()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            _run_once(fn, backward)
            _sync()
            times[name].append(time.perf_counter() - t0)
    result = {}
    for name, fn in runs.items():
        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats(DEVICE)
            base = torch.cuda.memory_allocated(DEVICE)
            _run_once(fn, backward)
            _sync()
            peak = round((torch.cuda.max_memory_allocated(DEVICE) - base) / 2**20, 2)
        else:
            peak = _peak_cpu_mib(fn, backward)
        result[name] = (statistics.median(times[name]) * 1e3, peak)
    return result


def _on_path(fn: Callable, backend: str, grad: bool) -> Callable:
    """``fn`` forced onto ``backend`` (and with autograd on for the forward+backward mode)."""

    def run():
        with ops.use_backend(backend), torch.set_grad_enabled(grad):
            return fn()

    return run


def _peak_cpu_mib(fn: Callable, backward: bool) -> float | None:
    """Peak MiB of tensor memory one run allocates on the CPU (:func:`zoo.profile.peak_memory`: the profiler's
    allocation and free events of that run)."""
    from zoo.profile import peak_memory

    peak = peak_memory(lambda: _run_once(fn, backward), "cpu")
    return None if peak is None else round(peak / 2**20, 2)


def dispatch_overhead(calls: int = 2000, repeats: int = 15) -> dict:
    """Microseconds per call of a 1x1 linear (``x [1, 1]``, ``weight [1, 1]``, ``bias [1]``) under ``no_grad``:
    ``F.linear``, ``zoo.ops.linear`` (default path, and forced onto the reference: the same F.linear underneath,
    so the difference is the dispatch alone), and the modules ``nn.Linear`` and ``zoo.layers.Linear`` (eval mode,
    the same weights). The median over ``repeats`` blocks of ``calls`` calls, all interleaved block by block."""
    import torch.nn.functional as F

    from zoo.layers import Linear

    x, w, b = torch.randn(1, 1), torch.randn(1, 1), torch.randn(1)
    plain, zoo_fc = torch.nn.Linear(1, 1).eval(), Linear(1, 1).eval()
    zoo_fc.load_state_dict(plain.state_dict())

    # every loop has the same form (a plain for loop, results dropped), so only the call differs
    def f_linear():
        for _ in range(calls):
            F.linear(x, w, b)

    def zoo_linear():
        for _ in range(calls):
            ops.linear(x, w, b)

    def forced_reference():
        with ops.use_backend("reference"):
            for _ in range(calls):
                ops.linear(x, w, b)

    def nn_module():
        for _ in range(calls):
            plain(x)

    def zoo_module():
        for _ in range(calls):
            zoo_fc(x)

    loops = {"F.linear": f_linear, "zoo.ops.linear": zoo_linear, "zoo.ops.linear (reference forced)": forced_reference,
             "nn.Linear module": nn_module, "zoo.layers.Linear module": zoo_module}
    times: dict[str, list[float]] = {name: [] for name in loops}
    with torch.no_grad():
        for fn in loops.values():
            fn()
        for _ in range(repeats):
            for name, fn in loops.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) / calls * 1e6)
        ops.linear(x, w, b)
    us = {name: statistics.median(t) for name, t in times.items()}
    base = {name: us["nn.Linear module"] if "module" in name else us["F.linear"] for name in us}
    return {"us_per_call": us, "path": ops.last_path("linear"), "calls": calls, "repeats": repeats,
            "ratio": {name: t / base[name] for name, t in us.items()},
            "baseline": {name: "nn.Linear" if "module" in name else "F.linear" for name in us}}


def markdown(result: dict) -> str:
    """One table per run: each op and shape, each path's time and how many times faster than the reference."""
    m = result["meta"]
    where = m["gpu"] or f"{m['processor']}, {m['cpu_threads']} thread(s)"
    lines = [f"## {m['mode']}, {m['dtype']}, {m['device']} ({where}), torch {m['torch']}", "",
             f"Median of {m['repeats']} interleaved runs after 2 warm-up runs. "
             "'x ref' = reference time / this path's time. "
             f"Default path here: {', '.join(f'{k} → {v}' for k, v in m['auto_path'].items())}.", "",
             "Peak MiB = memory allocated during one run above what was allocated before it (inputs excluded).", "",
             "| op | shape | path | ms | x ref | peak MiB |", "|---|---|---|---:|---:|---:|"]
    ref = {(r["op"], r["shape"]): r["ms"] for r in result["results"] if r["path"] == "reference" and r["ms"]}
    for r in result["results"]:
        if r["ms"] is None:
            lines.append(f"| {r['op']} | {r['shape']} | {r['path']} | error: {r['error'][:80]} | | |")
            continue
        base = ref.get((r["op"], r["shape"]))
        ratio = f"{base / r['ms']:.2f}" if base else "—"
        peak = "—" if r.get("peak_mib") is None else f"{r['peak_mib']:.1f}"
        lines.append(f"| {r['op']} | {r['shape']} | {r['path']} | {r['ms']:.2f} | {ratio} | {peak} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/bench_ops.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backward", action="store_true", help="time forward+backward instead of forward")
    ap.add_argument("--ops", default=",".join(CASES), help="comma-separated op names")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--md", help="append a markdown table of this run to this file")
    ap.add_argument("--overhead", action="store_true",
                    help="time the dispatcher's Python overhead (1x1 zoo.ops.linear vs F.linear) instead")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.overhead:
        res = dispatch_overhead(repeats=max(args.repeats, 5))
        lines = [f"## dispatch overhead, cpu ({platform.processor() or platform.machine()}, "
                 f"{torch.get_num_threads()} thread(s)), torch {torch.__version__}", "",
                 f"1x1 linear under no_grad, median of {res['repeats']} interleaved blocks of {res['calls']} calls; "
                 f"default path: {res['path']}.", "", "| call | us/call | x baseline | baseline |",
                 "|---|---:|---:|---|"]
        lines += [f"| {name} | {us:.2f} | {res['ratio'][name]:.2f} | {res['baseline'][name]} |"
                  for name, us in res["us_per_call"].items()]
        print("\n".join(lines))
        if args.md:
            with Path(args.md).open("a") as f:
                f.write("\n".join(lines) + "\n\n")
        return
    torch.manual_seed(0)
    global DEVICE, DTYPE
    DEVICE = device = torch.device(args.device)
    DTYPE = getattr(torch, args.dtype)
    rows = []
    print(ops.explain().split("ops (")[0])
    mode = "fwd+bwd" if args.backward else "fwd"
    print(f"{'op':<26} {'shape':<40} {'path':<10} {mode + ' ms':>10}")
    for op in args.ops.split(","):
        if op not in CASES:
            raise SystemExit(f"unknown op {op!r}; choose from {sorted(CASES)}")
        impls = _dispatch._REGISTRY.get(op, {})
        for label, fn in CASES[op](args.backward):
            runs: dict[str, Callable] = {}
            for backend in impls:
                if backend == "triton" and device.type != "cuda":
                    continue  # the Triton interpreter (TRITON_INTERPRET=1) is for tests, far too slow here
                run = _on_path(fn, backend, args.backward)
                try:
                    run()
                except Exception as err:  # a path that cannot run this shape is reported, not hidden
                    rows.append(dict(op=op, shape=label, path=backend, ms=None, error=str(err)[:200]))
                    print(f"{op:<26} {label:<40} {backend:<10} {'error':>10}  {str(err)[:60]}")
                    continue
                if ops.last_path(op) == backend:  # else this backend cannot run here; the dispatcher fell back
                    runs[backend] = run
            for backend, (ms, peak) in _time(runs, args.backward, args.repeats).items():
                rows.append(dict(op=op, shape=label, path=backend, ms=round(ms, 3), peak_mib=peak))
                extra = "" if peak is None else f"  {peak:>9.1f} MiB"
                print(f"{op:<26} {label:<40} {backend:<10} {ms:>10.2f}{extra}", flush=True)
    meta = dict(
        machine=platform.machine(), processor=platform.processor() or platform.machine(),
        cpu_threads=torch.get_num_threads(), torch=torch.__version__, mode=mode, repeats=args.repeats,
        device=str(device), dtype=args.dtype,
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        auto_path={op: _dispatch.select(op, device, DTYPE, needs_grad=args.backward).backend
                   for op in args.ops.split(",") if op in _dispatch._REGISTRY},
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(meta=meta, results=rows)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if args.md:
        md = Path(args.md)
        md.parent.mkdir(parents=True, exist_ok=True)
        head = "" if md.exists() else "# Op benchmark\n\nGenerated by `python tools/bench_ops.py --md`.\n\n"
        with md.open("a") as f:
            f.write(head + markdown(result) + "\n")
        print(f"appended to {md}")


if __name__ == "__main__":
    main()
