"""Feed-forward layers and activations shared by the families."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .linear import Linear


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


def run_modules(x: torch.Tensor, *modules: nn.Module | None) -> torch.Tensor:
    """Apply ``modules`` in turn, skipping None."""
    for m in modules:
        if m is not None:
            x = m(x)
    return x


def linear_act(fc: nn.Module, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """``act(fc(x))``, in one call when ``fc`` is exactly a :class:`zoo.layers.Linear` and ``act`` a plain
    activation (``fc(x, act=name)``: a fused path where one exists, e.g. oneDNN for CPU inference). ``fc`` is
    always called as a module, so its hooks fire; any other ``fc`` (an ``nn.Linear``, a LoRA-style replacement)
    and any other activation run as ``act(fc(x))``."""
    if type(fc) is Linear:
        name = activation_name(act)
        if name is not None:
            return fc(x, act=name)
    y = fc(x)
    return y if act is None else act(y)


class Mlp(nn.Module):
    """Two-layer MLP on the last dim: ``[..., C] -> [..., C_out]`` (``fc1 → act → drop → fc2 → drop``).

    ``fc1``/``fc2`` are :class:`zoo.layers.Linear`; ``act`` is fused into ``fc1``'s call (:func:`linear_act`)
    while ``fc1`` is exactly that class and ``act`` a plain activation."""

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
        self.fc1 = Linear(in_features, hidden_features, bias=bias, **dd)
        self.act = get_act_layer(act_layer)()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, out_features, bias=bias, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(linear_act(self.fc1, x, self.act))
        return self.drop2(self.fc2(x))
