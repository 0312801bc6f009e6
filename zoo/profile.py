"""Model cost figures as the papers report them: parameters and multiply-adds ("FLOPs" in the papers'
tables, i.e. fvcore-style MACs).

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

__all__ = ["count_macs", "count_params", "model_macs"]


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
