"""Hybrids: one network whose stages use different families' mixers, written as one config line per stage.

Stems, downsamplers and blocks are looked up by the names the family modules register (see
:mod:`zoo.models._base`), so a hybrid needs no code of its own: here NAT neighborhood-attention blocks
(:mod:`zoo.models.nat`, ``"nat"``) in the high-resolution stages 1–2, where a 7×7 neighborhood is cheap and
local, and BiFormer blocks (:mod:`zoo.models.biformer`, ``"biformer"``) in stages 3–4: bi-level routing
attention (top-16 of 7×7 regions) in stage 3 and dense attention with LePE in stage 4.

These are zoo designs with no published weights: their pretrained cfgs have no ``url`` (``pretrained=True``
has nothing to load) and train from scratch with the recipes. Nothing in them depends on the input size (NAT's
``rpb`` depends on the kernel, BiFormer's regions grow with the map), so ``set_input_size(img_size)`` only
records the size.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs
from torch import nn

from . import biformer, nat  # noqa: F401  (register the "nat" and "biformer" stems, downsamplers and blocks)
from ._base import NetCfg, StageCfg, build_backbone
from ._family import Family

__all__ = ["FAMILY", "HYBRIDS"]


def _nat_biformer(dims: tuple[int, int, int, int], depths: tuple[int, int, int, int], drop_path_rate: float) -> NetCfg:
    """NAT stem and stages 1–2 (7×7 neighborhoods, heads of 32 channels), BiFormer stages 3–4 (7×7 regions,
    top-16 routing, then dense attention + LePE); MLP ratio 3 throughout (the blocks' defaults fill the rest)."""
    (d1, d2, d3, d4), (n1, n2, n3, n4) = dims, depths
    return NetCfg(
        stem="nat",
        stages=(
            StageCfg(n1, d1, "nat", dict(num_heads=d1 // 32, mlp_ratio=3)),
            StageCfg(n2, d2, "nat", dict(num_heads=d2 // 32, mlp_ratio=3), downsample="nat"),
            StageCfg(n3, d3, "biformer", dict(topk=16, qk_dim=d3, num_heads=d3 // 32), downsample="biformer"),
            StageCfg(n4, d4, "biformer", dict(topk=-2, num_heads=8), downsample="biformer"),
        ),
        norm="layernorm",
        drop_path_rate=drop_path_rate,
        no_weight_decay=("rpb",),  # NAT's relative position biases, as NAT's recipe
    )


HYBRIDS: dict[str, NetCfg] = {
    "hybrid_nat_biformer_nano": _nat_biformer((32, 64, 128, 256), (2, 2, 6, 2), 0.05),
    "hybrid_nat_biformer_tiny": _nat_biformer((64, 128, 256, 512), (2, 2, 8, 2), 0.1),
}


# zoo designs with no published weights: no url, no license or paper fields; no official checkpoints to recognise
FAMILY = Family("hybrid", "hybrid", cfg=dict(first_conv="stem.proj.0"))
default_cfgs = generate_default_cfgs({name: FAMILY.tag_cfg() for name in HYBRIDS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    return build_backbone(variant, HYBRIDS[variant], pretrained, **kwargs)


FAMILY.register_models(__name__, _create, {
    "hybrid_nat_biformer_nano": "NAT (stages 1–2) + BiFormer (stages 3–4), dims 32/64/128/256, depths 2/2/6/2; no "
                                "pretrained weights.",
    "hybrid_nat_biformer_tiny": "NAT (stages 1–2) + BiFormer (stages 3–4), dims 64/128/256/512, depths 2/2/8/2; no "
                                "pretrained weights.",
})
