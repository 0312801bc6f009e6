"""The families, registered with timm on import. See :mod:`zoo.models._base` for the shared skeleton."""

from . import (
    agent,  # noqa: F401  (registers the Agent-Swin/PVT/DeiT models with timm)
    biformer,  # noqa: F401  (registers the BiFormer models with timm)
    crossformer,  # noqa: F401  (registers the CrossFormer models with timm)
    hybrid,  # noqa: F401  (registers the hybrid models, e.g. NAT + BiFormer stages, with timm)
    maxvit,  # noqa: F401  (registers the MaxViT models with timm)
    nat,  # noqa: F401  (registers the NAT/DiNAT/DiNAT_s models with timm)
)
from ._base import (
    BLOCKS,
    DOWNSAMPLERS,
    STEMS,
    Backbone,
    BlockSite,
    NetCfg,
    StageCfg,
    build_backbone,
    mixer_block,
    register_block,
    register_downsampler,
    register_mixer,
    register_stem,
)
from ._pretrained import allow_pickle, read_checkpoint

__all__ = [
    "BLOCKS",
    "DOWNSAMPLERS",
    "STEMS",
    "Backbone",
    "BlockSite",
    "NetCfg",
    "StageCfg",
    "allow_pickle",
    "build_backbone",
    "mixer_block",
    "read_checkpoint",
    "register_block",
    "register_downsampler",
    "register_mixer",
    "register_stem",
]
