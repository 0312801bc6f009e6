"""The families, registered with timm on import. See :mod:`zoo.models._base` for the shared skeleton."""

from ._base import (
    BLOCKS,
    DOWNSAMPLERS,
    STEMS,
    Backbone,
    NetCfg,
    StageCfg,
    build_backbone,
    register_block,
    register_downsampler,
    register_stem,
)

__all__ = [
    "BLOCKS",
    "DOWNSAMPLERS",
    "STEMS",
    "Backbone",
    "NetCfg",
    "StageCfg",
    "build_backbone",
    "register_block",
    "register_downsampler",
    "register_stem",
]
