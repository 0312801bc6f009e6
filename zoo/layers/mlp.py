"""Feed-forward layers and activations shared by the families."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules import module as _module

from .. import ops


def gelu_tanh() -> nn.Module:
    """GELU with the tanh approximation (the TF MaxViT weights were trained with it)."""
    return nn.GELU(approximate="tanh")


def get_act_layer(name: str | Callable[[], nn.Module] | None) -> Callable[[], nn.Module]:
    """Activation factory from a name: ``gelu`` (erf), ``gelu_tanh``, ``silu``, ``relu``, ``identity``."""
    if name is None:
        return nn.Identity
    if callable(name):
        return name
    table = {
        "gelu": nn.GELU,
        "gelu_tanh": gelu_tanh,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "relu": nn.ReLU,
        "identity": nn.Identity,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]


def activation_name(act: nn.Module | None) -> str | None:
    """The :data:`zoo.ops.ACTIVATIONS` name of an activation module (``None`` → ``"none"``), or None when
    ``act`` is not one of the plain ones (a custom module runs as itself, unfused)."""
    if act is None or type(act) is nn.Identity:
        return "none"
    kind = type(act)
    if kind is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(act.approximate)
    return {nn.SiLU: "silu", nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}.get(kind)


def _hooked(*modules: nn.Module | None) -> bool:
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in modules)


def run_modules(x: torch.Tensor, *modules: nn.Module | None) -> torch.Tensor:
    """Apply ``modules`` in turn, skipping None: the unfused fallback of the fused calls below."""
    for m in modules:
        if m is not None:
            x = m(x)
    return x


def linear_act(fc: nn.Module, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """``act(fc(x))`` through :func:`zoo.ops.linear` (one fused call where a fast path exists, e.g. oneDNN
    for CPU inference) when ``fc`` is a plain ``nn.Linear`` and ``act`` a plain activation, none of them
    hooked; otherwise the modules are called as they are (a LoRA/quantized replacement of ``fc``, forward
    hooks and custom activations behave exactly as with ``act(fc(x))``)."""
    name = activation_name(act)
    if type(fc) is nn.Linear and name is not None and not _hooked(fc, act):
        return ops.linear(x, fc.weight, fc.bias, act=name)
    return run_modules(x, fc, act)


class Mlp(nn.Module):
    """Two-layer MLP on the last dim: ``[..., C] -> [..., C_out]`` (``fc1 → act → drop → fc2 → drop``)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: str | Callable[[], nn.Module] = "gelu",
        drop: float = 0.0,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **dd)
        self.act = get_act_layer(act_layer)()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(linear_act(self.fc1, x, self.act))
        return self.drop2(linear_act(self.fc2, x))
