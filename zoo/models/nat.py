"""NAT (CVPR 2023), DiNAT and DiNAT_s: hierarchical transformers built on (dilated) neighborhood attention.

* **NAT**: ``ConvTokenizer`` stem (two 3×3 stride-2 convs, LayerNorm), four levels of pre-norm blocks whose
  mixer is 7×7 neighborhood attention with a relative position bias (``rpb``), 3×3 stride-2 conv
  downsamplers (no bias, LayerNorm) between levels, final LayerNorm, average pool, linear head. Small/Base
  use layer scale 1e-5 (official ``gamma1``/``gamma2``).
* **DiNAT**: NAT with a per-block dilation schedule (e.g. ``[1, 8, 1]``, ``[1, 4, 1, 4]``, ``[1, 2, ...]``,
  ``[1, ...]`` at 224²); only DiNAT-Base uses layer scale.
* **DiNAT_s**: the Swin-like variant: 4×4 patch-embedding stem, Swin patch merging between levels, MLP ratio
  4, dilations alternating ``1, d`` per level, no layer scale.

Maps smaller than ``kernel · dilation`` are zero-padded by the mixer (legacy NATTEN behaviour, see
:class:`~zoo.layers.NeighborhoodAttention2D`), so any input ≥ 32 px works; nothing is resized.

Official code: SHI-Labs/Neighborhood-Attention-Transformer (commit d334f5b) ``classification/nat.py``,
``classification/dinat.py``, ``classification/dinats.py``. Official keys: ``patch_embed.*``,
``levels.{i}.blocks.{j}.{norm1, attn.{qkv, rpb, proj}, norm2, mlp.fc1, mlp.fc2, gamma1, gamma2}``,
``levels.{i}.downsample.{reduction, norm}`` (end of level ``i``), ``norm``, ``head`` (DiNAT_s: ``layers.``
instead of ``levels.``, downsample ``{norm, reduction}`` a Linear).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs, get_pretrained_cfg, list_pretrained
from torch import nn

from ..layers import (
    ConvDownsampler,
    ConvTokenizer,
    NeighborhoodAttention2D,
    PatchEmbed,
    PatchMerging,
    resize_rel_pos_bias_table,
)
from ._base import (
    Backbone,
    BlockSite,
    NetCfg,
    StageCfg,
    build_backbone,
    current_input_size,
    input_hw,
    register_downsampler,
    register_mixer,
    register_stem,
)
from ._convert import check_fits, official_to_zoo, swin_layout_keys, unwrap_state_dict
from ._family import Family, tag_input_size

__all__ = ["FAMILY", "NAT", "VARIANTS", "checkpoint_filter_fn", "dinat_resized", "nat_cfg", "nat_cfg_from_official"]


# ------------------------------------------------------------------------------------------------ parts
# official ConvTokenizer (conv3×3/2 → conv3×3/2 → LayerNorm: keys proj.0, proj.1, norm), DiNAT_s PatchEmbed (conv
# p×p/p on the zero-padded input → LayerNorm), NAT ConvDownsampler (conv3×3/2 without bias → LayerNorm), DiNAT_s
# Swin PatchMerging (2×2 concat → LayerNorm(4C) → Linear without bias): the layers are the builders
register_stem("nat")(ConvTokenizer)
register_stem("nat_patch")(PatchEmbed)
register_downsampler("nat")(ConvDownsampler)
register_downsampler("nat_merge")(PatchMerging)


@register_mixer("nat")
def _nat_mixer(
    dim: int, site: BlockSite, num_heads: int, kernel_size: int = 7, dilations: Sequence[int] | None = None, **kw
) -> nn.Module:
    """NAT/DiNAT layer (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, optional layer scale): the mixer is
    ``NeighborhoodAttention2D`` with dilation ``dilations[index]`` (1 when ``dilations`` is None); ``kw``: its
    ``qkv_bias``, ``qk_scale``, ``attn_drop``."""
    if dilations is not None and len(dilations) != site.depth:
        raise ValueError(
            f"nat block: stage {site.stage} has depth {site.depth} but {len(dilations)} dilations; give one per block"
        )
    dilation = 1 if dilations is None else int(dilations[site.index])
    return NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation=dilation, proj_drop=site.drop, **kw, **site.dd)


# ---------------------------------------------------------------------------------------------- configs
def nat_cfg(
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    mlp_ratio: float = 4.0,
    kernel_size: int = 7,
    dilations: Sequence[Sequence[int]] | None = None,
    layer_scale: float | None = None,
    qkv_bias: bool = True,
    qk_scale: float | None = None,
    drop: float = 0.0,
    attn_drop: float = 0.0,
    drop_path_rate: float = 0.2,
    swin_like: bool = False,
    patch_size: int = 4,
) -> NetCfg:
    """The :class:`NetCfg` of a NAT / DiNAT (``swin_like=False``) or DiNAT_s (``swin_like=True``).

    Level ``i`` has width ``embed_dim · 2**i``; ``dilations`` is one list per level with one dilation per
    block (None: NAT, all 1). ``layer_scale`` None disables layer scale.
    """
    n = len(depths)
    if len(num_heads) != n:
        raise ValueError(f"nat_cfg: {len(num_heads)} num_heads for {n} stages; give one per stage")
    if dilations is not None:
        if len(dilations) != n or any(len(d) != k for d, k in zip(dilations, depths)):
            raise ValueError(
                f"nat_cfg: dilations {dilations} must hold one list per stage with one value per block "
                f"(depths {list(depths)})"
            )
    stages = []
    for i in range(n):
        stages.append(
            StageCfg(
                depth=int(depths[i]),
                dim=int(embed_dim * 2**i),
                block="nat",
                block_kwargs=dict(
                    num_heads=int(num_heads[i]), kernel_size=int(kernel_size),
                    dilations=None if dilations is None else tuple(int(d) for d in dilations[i]),
                    mlp_ratio=float(mlp_ratio), qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                    attn_drop=attn_drop, layer_scale=layer_scale,
                ),
                downsample=None if i == 0 else ("nat_merge" if swin_like else "nat"),
            )
        )
    return NetCfg(
        stem="nat_patch" if swin_like else "nat",
        stem_kwargs=dict(patch_size=patch_size) if swin_like else {},
        stages=tuple(stages),
        norm="layernorm",
        head="classifier",
        drop_path_rate=drop_path_rate,
        no_weight_decay=("rpb",),  # official no_weight_decay_keywords() == {"rpb"}
    )


def nat_cfg_from_official(
    official_kwargs: dict[str, Any], swin_like: bool = False
) -> tuple[NetCfg, dict[str, Any]]:
    """Zoo config for the official ``NAT``/``DiNAT`` (or ``DiNAT_s`` with ``swin_like``) constructor kwargs.

    Returns ``(cfg, model_kwargs)`` with ``num_classes`` and ``in_chans``.
    """
    kw = dict(official_kwargs)
    model_kwargs = dict(num_classes=kw.pop("num_classes", 1000), in_chans=kw.pop("in_chans", 3))
    kw.pop("img_size", None)
    if kw.pop("patch_norm", True) is not True:
        raise ValueError("nat: official option patch_norm=False is not supported")
    known = dict(
        embed_dim=kw.pop("embed_dim", 96 if swin_like else None), depths=kw.pop("depths", None),
        num_heads=kw.pop("num_heads", None), mlp_ratio=kw.pop("mlp_ratio", 4.0),
        kernel_size=kw.pop("kernel_size", 7), dilations=kw.pop("dilations", None),
        layer_scale=kw.pop("layer_scale", None), qkv_bias=kw.pop("qkv_bias", True),
        qk_scale=kw.pop("qk_scale", None), drop=kw.pop("drop_rate", 0.0),
        attn_drop=kw.pop("attn_drop_rate", 0.0), drop_path_rate=kw.pop("drop_path_rate", 0.2),
        swin_like=swin_like, patch_size=kw.pop("patch_size", 4),
    )
    if kw:
        raise ValueError(f"nat: unknown official constructor arguments {sorted(kw)}")
    missing = [k for k in ("embed_dim", "depths", "num_heads") if known[k] is None]
    if missing:
        raise ValueError(f"nat: official kwargs lack {missing} (the NAT constructor requires them)")
    if swin_like and known["layer_scale"] is not None:
        raise ValueError("nat: DiNAT_s has no layer scale")
    return nat_cfg(**known), model_kwargs


_D7 = ([1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5)
_D18 = ([1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5)
# the 384-px fine-tunes of the Large models spread their dilations further (dinat_large_384, dinat_s_large_384)
_D18_384 = ([1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5)
_DS18_384 = ([1, 13], [1, 6], [1, 3] * 9, [1, 1])
_DS6 = ([1, 8], [1, 4], [1, 2] * 3, [1, 1])
_DS18 = ([1, 8], [1, 4], [1, 2] * 9, [1, 1])
_T, _S, _B, _L = (2, 4, 8, 16), (3, 6, 12, 24), (4, 8, 16, 32), (6, 12, 24, 48)


def _v(embed_dim, depths, heads, mlp_ratio, dpr, dilations=None, layer_scale=None, swin_like=False,
       kernel_size=7) -> dict:
    return dict(embed_dim=embed_dim, depths=depths, num_heads=heads, mlp_ratio=mlp_ratio, drop_path_rate=dpr,
                dilations=dilations, layer_scale=layer_scale, swin_like=swin_like, kernel_size=kernel_size)


# name -> kwargs of nat_cfg (classification/nat.py, dinat.py, dinats.py @register_model functions)
VARIANTS: dict[str, dict[str, Any]] = {
    "nat_nano": _v(32, (2, 2, 6, 2), (1, 2, 4, 8), 3, 0.1),  # zoo addition
    "nat_mini": _v(64, (3, 4, 6, 5), _T, 3, 0.2),
    "nat_tiny": _v(64, (3, 4, 18, 5), _T, 3, 0.2),
    "nat_small": _v(96, (3, 4, 18, 5), _S, 2, 0.3, layer_scale=1e-5),
    "nat_base": _v(128, (3, 4, 18, 5), _B, 2, 0.5, layer_scale=1e-5),
    "dinat_nano": _v(32, (2, 2, 6, 2), (1, 2, 4, 8), 3, 0.1, _DS6),  # zoo addition
    "dinat_mini": _v(64, (3, 4, 6, 5), _T, 3, 0.2, _D7),
    "dinat_tiny": _v(64, (3, 4, 18, 5), _T, 3, 0.2, _D18),
    "dinat_small": _v(96, (3, 4, 18, 5), _S, 2, 0.3, _D18),
    "dinat_base": _v(128, (3, 4, 18, 5), _B, 2, 0.5, _D18, layer_scale=1e-5),
    "dinat_large": _v(192, (3, 4, 18, 5), _L, 2, 0.35, _D18),
    "dinat_large_384": _v(192, (3, 4, 18, 5), _L, 2, 0.35, _D18_384),
    "dinat_large_11x11": _v(192, (3, 4, 18, 5), _L, 2, 0.35, _D18, kernel_size=11),
    "dinat_s_tiny": _v(96, (2, 2, 6, 2), _S, 4, 0.2, _DS6, swin_like=True),
    "dinat_s_small": _v(96, (2, 2, 18, 2), _S, 4, 0.3, _DS18, swin_like=True),
    "dinat_s_base": _v(128, (2, 2, 18, 2), _B, 4, 0.5, _DS18, swin_like=True),
    "dinat_s_large": _v(192, (2, 2, 18, 2), _L, 4, 0.35, _DS18, swin_like=True),
    "dinat_s_large_384": _v(192, (2, 2, 18, 2), _L, 4, 0.35, _DS18_384, swin_like=True),
}


def dinat_resized(cfg: NetCfg, hw: tuple[int, int]) -> NetCfg:
    """``cfg`` with DiNAT's dilation rule at input size ``hw``: in a stage whose blocks dilate (``dilations``
    given), odd blocks get the largest dilation whose ``kernel · dilation`` neighborhood fits the stage map
    (``max(1, map // kernel)``, map ``min(h, w) / (4 · 2**i)``), even blocks 1. It gives every DiNAT/DiNAT_s
    table at 224 px and the official 384 px ones (13/6/3); NAT (no dilations) is unchanged."""
    side = min(hw) // 4
    stages = []
    for i, s in enumerate(cfg.stages):
        d = s.block_kwargs.get("dilations")
        if d is not None:
            dil = max(1, (side // 2**i) // int(s.block_kwargs.get("kernel_size", 7)))
            d = tuple(dil if j % 2 else 1 for j in range(len(d)))
            s = dataclasses.replace(s, block_kwargs={**s.block_kwargs, "dilations": d})
        stages.append(s)
    return cfg.replace(stages=tuple(stages))


class NAT(Backbone):
    """:class:`~zoo.models.Backbone` of NAT/DiNAT/DiNAT_s. ``set_input_size(img_size)``: NAT has nothing
    size-dependent (its ``rpb`` depends on the kernel only), so only the recorded size changes; DiNAT takes
    the dilations of :func:`dinat_resized` at the new size (what the official 384 px models differ in; no
    table to resize), except at the sizes of its variant's official checkpoints, where it takes the
    variant's own table (``dinat_large_11x11`` keeps 8/4/2 at 224 and 384, as its two checkpoints)."""

    def __init__(self, cfg: NetCfg, *args, **kwargs):
        super().__init__(cfg, *args, **kwargs)
        self.dilation_table = ({current_input_size(self)}, cfg)  # (sizes, cfg) where the table holds

    def resized_cfg(self, hw: tuple[int, int], window_size: int | tuple[int, int] | None = None) -> NetCfg:
        super().resized_cfg(hw, window_size)  # no window_size
        sizes, table = self.dilation_table
        return table if hw in sizes else dinat_resized(self.cfg, hw)

    def apply_cfg(self, cfg: NetCfg) -> None:
        for stage, sc in zip(self.stages, cfg.stages):
            for block, d in zip(stage.blocks, sc.block_kwargs.get("dilations") or ()):
                block.attn.dilation = d
                block.attn.window_size = block.attn.kernel_size * d


# -------------------------------------------------------------------------------------------- converter
_BLOCK_PART = r"norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2"
# official regex -> zoo template; (NAT/DiNAT "levels", DiNAT_s "layers")
_KEY_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^patch_embed\.(proj\.[01]|proj|norm)\.(weight|bias)$"), r"stem.\1.\2"),
    (re.compile(r"^(?:levels|layers)\.(\d+)\.blocks\.(\d+)\.gamma([12])$"), r"stages.\1.blocks.\2.ls\3.gamma"),
    *swin_layout_keys(rf"(?:{_BLOCK_PART})\.(?:weight|bias)|attn\.rpb", r"reduction|norm", levels="(?:levels|layers)"),
]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Official NAT / DiNAT / DiNAT_s checkpoint → zoo state dict (strict, explicit key map).

    Accepts a plain state dict or one wrapped in ``model`` / ``state_dict_ema`` / ``state_dict``. Renames
    ``patch_embed`` → ``stem``, ``levels``/``layers`` → ``stages``, ``gamma1/2`` → ``ls1/2.gamma``, moves
    ``levels.i.downsample`` to ``stages.{i+1}.downsample`` and ``head`` to ``head.fc``. A zoo-layout dict is
    checked and returned. With ``model``: ``rpb`` tables of another kernel size are resized (bicubic, as the
    official 11×11 checkpoints were made); raises a ValueError naming every official key without a mapping,
    every zoo key nothing mapped to and every shape mismatch (``head.fc`` is left to timm).
    """
    sd = unwrap_state_dict(state_dict)
    out = official_to_zoo(
        sd, FAMILY, _KEY_MAP,
        official=lambda keys: any(k.startswith(("levels.", "layers.")) and k.endswith("attn.rpb") for k in keys),
        missing="no 'levels.*.attn.rpb' / 'layers.*.attn.rpb' keys",
        unmatched_hint="another model or an unsupported option?",
    )
    if model is not None:
        expected = model.state_dict()
        for k, v in list(out.items()):
            if k.endswith("attn.rpb") and k in expected and v.shape != expected[k].shape:
                if v.dim() == 3 and v.shape[0] == expected[k].shape[0]:
                    new_k = (expected[k].shape[1] + 1) // 2
                    out[k] = resize_rel_pos_bias_table(v, new_k, mode="bicubic")
        check_fits(out, expected, "nat", "another variant? NAT vs DiNAT_s? layer scale?")
    return out


# -------------------------------------------------------------------------------------------------- timm
_NAT_PAPER, _DINAT_PAPER = "arXiv:2204.07143", "arXiv:2209.15001"
_CK = "https://shi-labs.com/projects"
FAMILY = Family(
    "nat", "NAT/DiNAT", markers=("levels.", "patch_embed.proj.0."),
    cfg=dict(first_conv="stem.proj.0", license="mit", paper_ids=_DINAT_PAPER,
             origin_url="https://github.com/SHI-Labs/Neighborhood-Attention-Transformer"),
)


def _dcfg(url: str = "", swin_like: bool = False, **kw) -> dict[str, Any]:
    """DiNAT_s (``swin_like``) has a one-conv patch stem: first conv ``stem.proj``."""
    return FAMILY.tag_cfg(url, **(dict(first_conv="stem.proj") if swin_like else {}), **kw)


# Release links from classification/nat.py, dinat.py and dinats.py (model_urls; for DiNAT_s the README links
# name the files `dinat_s_<size>_1k_<res>.pth` instead: see weights/manifest.json notes).
default_cfgs = generate_default_cfgs({
    "nat_nano": _dcfg(paper_ids=_NAT_PAPER),
    "nat_mini.official_in1k": _dcfg(f"{_CK}/nat/checkpoints/CLS/nat_mini.pth", paper_ids=_NAT_PAPER),
    "nat_tiny.official_in1k": _dcfg(f"{_CK}/nat/checkpoints/CLS/nat_tiny.pth", paper_ids=_NAT_PAPER),
    "nat_small.official_in1k": _dcfg(f"{_CK}/nat/checkpoints/CLS/nat_small.pth", paper_ids=_NAT_PAPER),
    "nat_base.official_in1k": _dcfg(f"{_CK}/nat/checkpoints/CLS/nat_base.pth", paper_ids=_NAT_PAPER),
    "dinat_nano": _dcfg(),
    "dinat_mini.official_in1k": _dcfg(f"{_CK}/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth"),
    "dinat_tiny.official_in1k": _dcfg(f"{_CK}/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth"),
    "dinat_small.official_in1k": _dcfg(f"{_CK}/dinat/checkpoints/imagenet1k/dinat_small_in1k_224.pth"),
    "dinat_base.official_in1k": _dcfg(f"{_CK}/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth"),
    "dinat_large.official_in22k_ft_in1k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_224.pth"
    ),
    "dinat_large.official_in22k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth", num_classes=21841
    ),
    "dinat_s_tiny.official_in1k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_s_tiny_in1k_224.pth", swin_like=True
    ),
    "dinat_s_small.official_in1k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_s_small_in1k_224.pth", swin_like=True
    ),
    "dinat_s_base.official_in1k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_s_base_in1k_224.pth", swin_like=True
    ),
    "dinat_s_large.official_in22k_ft_in1k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_s_large_in1k_224.pth", swin_like=True
    ),
    "dinat_large_384.official_in22k_ft_in1k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384.pth", size=384
    ),
    "dinat_large_11x11.official_in22k_ft_in1k_384": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384_11x11.pth", size=384
    ),
    "dinat_large_11x11.official_in22k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet22k/dinat_large_in22k_224_11x11interp.pth", num_classes=21841
    ),
    "dinat_s_large_384.official_in22k_ft_in1k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet1k/dinat_s_large_in1k_384.pth", swin_like=True, size=384
    ),
    "dinat_s_large.official_in22k": _dcfg(
        f"{_CK}/dinat/checkpoints/imagenet22k/dinat_s_large_in22k_224.pth", swin_like=True, num_classes=21841
    ),
})


def _table_sizes(variant: str) -> set[tuple[int, int]]:
    """The input sizes of the variant's pretrained tags (224 when it has none): where its table holds."""
    cfgs = [get_pretrained_cfg(t) for t in list_pretrained(f"{variant}.*")]
    return {tuple(c.input_size[-2:]) for c in cfgs if c is not None and c.input_size} or {(224, 224)}


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    # DiNAT's dilations follow the size (dinat_resized) away from the sizes of the variant's checkpoints
    table, sizes = nat_cfg(**VARIANTS[variant]), _table_sizes(variant)
    hw = input_hw(variant, tag_input_size(variant, kwargs))
    cfg = table if hw in sizes else dinat_resized(table, hw)
    model = build_backbone(variant, cfg, pretrained, filter_fn=checkpoint_filter_fn, model_cls=NAT, **kwargs)
    if isinstance(model, NAT):
        model.dilation_table = (sizes, table)
    return model


FAMILY.register_models(__name__, _create, {
    "nat_nano": "NAT-nano (zoo addition): embed 32, depths 2/2/6/2, heads 1/2/4/8, MLP ratio 3, kernel 7.",
    "nat_mini": "NAT-Mini (20 M): embed 64, depths 3/4/6/5, heads 2/4/8/16, MLP ratio 3, kernel 7.",
    "nat_tiny": "NAT-Tiny (28 M): embed 64, depths 3/4/18/5, heads 2/4/8/16, MLP ratio 3, kernel 7.",
    "nat_small": "NAT-Small (51 M): embed 96, depths 3/4/18/5, heads 3/6/12/24, MLP ratio 2, layer scale 1e-5.",
    "nat_base": "NAT-Base (90 M): embed 128, depths 3/4/18/5, heads 4/8/16/32, MLP ratio 2, layer scale 1e-5.",
    "dinat_nano": "DiNAT-nano (zoo addition): NAT-nano with dilations 1,8 / 1,4 / 1,2,... / 1,1.",
    "dinat_mini": "DiNAT-Mini (20 M): NAT-Mini with dilations [1,8,1] / [1,4,1,4] / [1,2]*3 / [1]*5.",
    "dinat_tiny": "DiNAT-Tiny (28 M): NAT-Tiny with dilations [1,8,1] / [1,4,1,4] / [1,2]*9 / [1]*5.",
    "dinat_small": "DiNAT-Small (51 M): embed 96, heads 3/6/12/24, MLP ratio 2, no layer scale; dilations as Tiny.",
    "dinat_base": "DiNAT-Base (90 M): embed 128, heads 4/8/16/32, MLP ratio 2, layer scale 1e-5; dilations as Tiny.",
    "dinat_large": "DiNAT-Large (200 M): embed 192, heads 6/12/24/48, MLP ratio 2; dilations for 224² (as Tiny).",
    "dinat_s_tiny": "DiNAT_s-Tiny (28 M): Swin-T layout (patch stem, patch merging, 2/2/6/2, MLP 4), dilations 1,d.",
    "dinat_s_small": "DiNAT_s-Small (50 M): Swin-S layout (embed 96, depths 2/2/18/2, heads 3/6/12/24).",
    "dinat_s_base": "DiNAT_s-Base (88 M): Swin-B layout (embed 128, depths 2/2/18/2, heads 4/8/16/32).",
    "dinat_s_large": "DiNAT_s-Large (197 M): Swin-L layout (embed 192, depths 2/2/18/2, heads 6/12/24/48).",
    "dinat_large_384": "DiNAT-Large at 384² (200 M): as DiNAT-Large with the 384-px dilations 13/6/3 in levels 1-3.",
    "dinat_large_11x11": "DiNAT-Large with 11×11 neighborhoods (201 M; the 224-px dilations, used at 224 and 384).",
    "dinat_s_large_384": "DiNAT_s-Large at 384² (197 M): as DiNAT_s-Large with the 384-px dilations 13/6/3 in "
                         "levels 1-3.",
})
