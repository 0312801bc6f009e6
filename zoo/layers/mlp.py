"""Feed-forward layers and activations shared by the families."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


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
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
