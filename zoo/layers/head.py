"""Classifier heads."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from .mlp import get_act_layer


def _act(name: str | Callable[[], nn.Module] | None) -> Callable[[], nn.Module]:
    return nn.Tanh if name == "tanh" else get_act_layer(name)


class NormMlpHead(nn.Module):
    """Pool → LayerNorm → (Linear → tanh) → dropout → Linear classifier (timm ``NormMlpClassifierHead``).

    Input: a map ``[B, H, W, C]`` (``input_fmt="NHWC"``) or ``[B, C, H, W]`` (``"NCHW"``), averaged over
    H, W (``pool="avg"``) or max-pooled (``"max"``); with ``pool=""`` the input is already ``[..., C]``.
    Output ``[B, num_classes]`` (or ``[B, hidden_size]`` with ``pre_logits=True``).

    Keys (MaxViT ``head.*``): ``norm.{weight,bias}``, ``pre_logits.fc.{weight,bias}`` (when
    ``hidden_size``), ``fc.{weight,bias}`` (when ``num_classes > 0``). MaxViT TF: ``norm_eps=1e-5``,
    ``hidden_size`` = last width, tanh.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_size: int | None = None,
        pool: str = "avg",
        input_fmt: str = "NHWC",
        norm_eps: float = 1e-5,
        act_layer: str | Callable[[], nn.Module] = "tanh",
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if pool not in ("avg", "max", ""):
            raise ValueError(f"NormMlpHead: pool must be 'avg', 'max' or '', got {pool!r}")
        if input_fmt not in ("NHWC", "NCHW"):
            raise ValueError(f"NormMlpHead: input_fmt must be 'NHWC' or 'NCHW', got {input_fmt!r}")
        if pool == "" and input_fmt == "NCHW":
            raise ValueError("NormMlpHead: pool='' needs channels-last input [..., C]; use input_fmt='NHWC'")
        self.pool, self.input_fmt = pool, input_fmt
        self.in_features = in_features
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(in_features, eps=norm_eps, **dd)
        if hidden_size:
            self.pre_logits = nn.Sequential(
                OrderedDict([("fc", nn.Linear(in_features, hidden_size, **dd)), ("act", _act(act_layer)())])
            )
            self.num_features = hidden_size
        else:
            self.pre_logits = nn.Identity()
            self.num_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        """Replace the classifier (``fc``) by a fresh one with ``num_classes`` outputs (0: identity)."""
        ref = self.norm.weight
        self.num_classes = num_classes
        self.fc = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool:
            if x.dim() != 4:
                raise ValueError(f"NormMlpHead expects a 4-D {self.input_fmt} map, got {tuple(x.shape)}")
            dims = (1, 2) if self.input_fmt == "NHWC" else (2, 3)
            x = x.mean(dims) if self.pool == "avg" else x.amax(dims)
        x = self.drop(self.pre_logits(self.norm(x)))
        return x if pre_logits else self.fc(x)
