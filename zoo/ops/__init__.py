"""Functional attention ops, and dense layers with fused activations: a plain-PyTorch reference per op plus
fast paths, chosen by a dispatcher.

>>> import zoo.ops as ops
>>> print(ops.explain())           # which backends exist here; for each op's last call, which path ran and why
>>> with ops.use_backend("reference"):          # force a path (falls back where it cannot run; explain() says)
...     y = ops.attention(q, k, v, bias)
>>> with ops.use_backend("triton", strict=True):  # or raise BackendUnavailableError with the reasons
...     y = ops.attention(q, k, v, bias)

How a path is chosen, the validation record that makes a GPU kernel a default, and opting in: docs/dispatch.md.
"""

from ._dispatch import (
    BACKENDS,
    BackendUnavailableError,
    backend_status,
    explain,
    forced_backend,
    last_decision,
    last_path,
    refresh,
    use_backend,
)
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
from .sizes import (
    DynamicSizeExportError,
    greater,
    is_capturing,
    is_torchscript,
    is_traced,
    is_tracing,
    pair,
    refuse_symbolic_sizes,
    size_max,
    size_min,
)

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
__all__ += ["is_capturing", "is_torchscript", "is_tracing", "pair", "valid_map"]
__all__ += ["BackendUnavailableError", "last_decision", "refresh"]
__all__ += [
    "DynamicSizeExportError", "greater", "is_traced", "refuse_symbolic_sizes", "roll_map", "size_max", "size_min"
]
__all__ += ["ACTIVATIONS", "BatchNormStats", "conv2d", "fold_batchnorm", "linear"]
