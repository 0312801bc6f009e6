"""``Linear``: an ``nn.Linear`` that owns its fast path.

Its ``forward`` calls :func:`zoo.ops.linear`, so the dispatcher's paths (oneDNN for CPU inference, the
reference elsewhere) run inside an ordinary module call: forward hooks and pre-hooks on it fire, a wrapper
that replaces it (LoRA-style, quantised) or ``torch.nn.utils.parametrize`` on its weight work as with
``nn.Linear``, and checkpoints load unchanged (parameters ``weight [out, in]`` and ``bias [out]``). In training
mode it runs the autograd reference (``F.linear``).

The choice of path is made once per module and input signature: a module in eval mode under ``no_grad`` keeps
the dispatcher's decision for the last input shape, dtype and device (and the forced backend and dispatcher
generation it was made under) and reuses it while they hold, so such a call costs one tuple comparison more than
``nn.Linear``. Decisions that depend on more than that (linears large enough for oneDNN, whose choice also
reads autocast and the oneDNN switch) go through :func:`zoo.ops.linear`'s own cache on every call.

A parent may fuse the activation that follows: ``fc(x, act="gelu")`` returns ``gelu(fc(x))`` in one call
(one oneDNN primitive on the CPU inference path). :class:`zoo.layers.Mlp` does that only while its ``fc1`` is
exactly this class, so a replacement of ``fc1`` runs unfused; a forward hook on a fused ``fc1`` fires and
sees the activated output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import _dispatch
from ..ops.dense import activation, linear_decision
from ..ops.sizes import is_capturing


class Linear(nn.Linear):
    """``nn.Linear`` (same arguments and parameters) whose ``forward(x, act="none")`` is
    :func:`zoo.ops.linear`: ``act(x @ weightᵀ + bias)`` on ``x [..., in_features]``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plan: tuple | None = None  # (key, Decision, fn) of the last eager inference call

    def forward(self, x: torch.Tensor, act: str = "none") -> torch.Tensor:
        if self.training:  # the autograd reference, whatever is forced (oneDNN has no backward)
            y = F.linear(x, self.weight, self.bias)
            return y if act == "none" else activation(y, act)
        if torch.is_grad_enabled() or is_capturing():
            return ops.linear(x, self.weight, self.bias, act)
        key = (x.shape, x.dtype, x.device, act, _dispatch._forced.get(), _dispatch.generation)
        plan = self._plan
        if plan is None or plan[0] != key:
            return self._decide(key, x, act)
        _dispatch._last["linear"] = plan[1]
        return plan[2](x, self.weight, self.bias, act)

    def _decide(self, key: tuple, x: torch.Tensor, act: str) -> torch.Tensor:
        """First call with a new signature: run the op (it checks the arguments and decides), keep the decision
        when it holds for every call with this key."""
        out = ops.linear(x, self.weight, self.bias, act)
        d, stable = linear_decision(x, self.weight, self.bias)
        self._plan = (key, d, d.impl.fn) if stable else None
        return out


__all__ = ["Linear"]
