"""Functional attention ops, and dense layers with fused activations: a plain-PyTorch reference per op plus
fast paths, chosen by a dispatcher.

>>> import zoo.ops as ops
>>> print(ops.explain())           # which backends exist here, and which path each op took last
>>> with ops.use_backend("reference"):
...     y = ops.attention(q, k, v, bias)
"""

from ._dispatch import BACKENDS, backend_status, explain, forced_backend, is_tracing, last_path, use_backend
from .agent import adaptive_avg_pool2d_matmul, agent_attention
from .attention import attention
from .dense import ACTIVATIONS, BatchNormStats, conv2d, fold_batchnorm, linear
from .neighborhood import neighborhood_attention1d, neighborhood_attention2d, neighborhood_window
from .partition import (
    grid_merge,
    grid_partition,
    pad_mask,
    pad_to_multiple,
    roll_map,
    valid_map,
    window_merge,
    window_partition,
)
from .routed import routed_attention, routing_indices
from .sizes import DynamicSizeExportError, greater, is_traced, refuse_symbolic_sizes, size_max, size_min

__all__ = [
    "BACKENDS",
    "attention",
    "backend_status",
    "explain",
    "forced_backend",
    "grid_merge",
    "grid_partition",
    "last_path",
    "pad_mask",
    "pad_to_multiple",
    "use_backend",
    "window_merge",
    "window_partition",
]
__all__ += ["adaptive_avg_pool2d_matmul", "agent_attention"]
__all__ += ["routed_attention", "routing_indices"]
__all__ += ["neighborhood_attention1d", "neighborhood_attention2d", "neighborhood_window"]
__all__ += ["is_tracing", "valid_map"]
__all__ += [
    "DynamicSizeExportError", "greater", "is_traced", "refuse_symbolic_sizes", "roll_map", "size_max", "size_min"
]
__all__ += ["ACTIVATIONS", "BatchNormStats", "conv2d", "fold_batchnorm", "linear"]
