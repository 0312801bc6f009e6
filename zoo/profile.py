"""Model cost figures as the papers report them: parameters and multiply-adds ("FLOPs" in the papers'
tables, i.e. fvcore-style MACs); and the peak memory of one call (:func:`peak_memory`).

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` while the model runs its *reference*
paths, so attention is counted as the matmuls it is (SDPA and fused kernels count as 0 in the counters),
including the sparse patterns of routed and neighborhood attention (the reference gathers only the keys
each query sees). By default the model is built and run on the meta device: no memory, no compute, so even
the largest variants take well under a second.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import ops

__all__ = ["count_macs", "count_params", "model_macs", "peak_memory"]


def peak_memory(fn, device: torch.device | str = "cpu") -> int | None:
    """Peak bytes of tensor memory allocated by one call of ``fn()`` above what was allocated before it.

    CUDA: the caching allocator's peak (``max_memory_allocated``). CPU: PyTorch's CPU allocations and frees as the
    profiler records them (``profile_memory=True``), counted from the start of the call; tensors that existed
    before the call (weights, inputs) are not in the figure, everything the call allocates is, freed or not.
    This is per call and does not depend on what ran earlier in the process, unlike the process's peak
    resident set (a high-water mark an earlier, larger model leaves behind). Returns None where neither applies.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if device.type != "cpu":
        return None
    import json
    import os
    import tempfile

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each allocation and free is one "[memory]" event of the trace (+/- bytes; in the in-memory event list an
    # allocation is folded into the op that made it, so a temporary freed inside an op would be invisible).
    # Blocks from before the call were never counted, so their frees are not either.
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f).get("traceEvents", [])
    finally:
        os.remove(path)
    events = sorted((e for e in trace if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0),
                    key=lambda e: e.get("ts", 0))
    live = peak = 0
    for e in events:
        live += int(e["args"].get("Bytes", 0))
        peak = max(peak, live)
    return peak



def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass of ``model`` (eval mode) on a ``[batch_size, *input_size]`` input,
    counted on the reference paths; the input lives on the model's device (meta works)."""
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.zeros(batch_size, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with ops.use_backend("reference"), FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2  # the counter reports FLOPs = 2 x MACs


def model_macs(name: str, input_size: tuple[int, int, int] = (3, 224, 224), **kwargs) -> tuple[int, int]:
    """``(params, MACs)`` of the timm model ``name`` built on the meta device (``kwargs`` go to
    ``timm.create_model``)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, **kwargs)
    return count_params(model), count_macs(model, input_size)
