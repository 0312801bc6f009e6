"""BiFormer (CVPR 2023): a hierarchical vision transformer built on bi-level routing attention (BRA).

* Stem: two 3×3 stride-2 convs with BatchNorm and a GELU between them (``ConvBNStem``); between stages a
  3×3 stride-2 conv + BatchNorm (``ConvBNDownsample``).
* Blocks: ``x + pos(x)`` (3×3 depthwise conv, official ``pos_embed``), then pre-norm attention and MLP
  (LayerNorm eps 1e-6, MLP ratio 3, GELU). The mixer is :class:`~zoo.layers.BiLevelRoutingAttention` in the
  stages with ``topk > 0`` (``n_win × n_win`` regions per map, each query region attends to the ``topk``
  regions chosen by region-mean ``q·k`` without gradient, logit scale ``qk_dim ** -0.5``, LePE = 5×5 depthwise
  conv on V) and :class:`~zoo.layers.AttentionLePE` (dense attention, 8 heads, LePE on the input) where
  ``topk == -2`` (stage 4 of every released model). ``topk == -1`` is the official plain ``Attention``.
* Head: BatchNorm2d on the last map, mean pool, linear classifier.

Sizes: ``n_win`` is the number of regions per side (7), so regions grow with the map (8×8, 4×4, 2×2 tokens at
224²). The released classifiers assert that each map divides by ``n_win`` (``auto_pad=False``: 224, 448...);
the zoo pads at the bottom/right and crops, as the official ``auto_pad=True`` (detection/segmentation) code
does, so any input ≥ 32 px works. At sizes the official classifier accepts, nothing is padded and the two agree.
Nothing depends on the size (``n_win`` regions grow with the map, LePE is a convolution), so
``set_input_size(img_size)`` only records the size (``pretrained_cfg['input_size']``, timm's traits).

Official code: rayleizhu/BiFormer (commit 1697bbb) ``models/biformer.py`` (``BiFormer``, ``Block``,
``biformer_{tiny,small,base}``), ``ops/bra_legacy.py`` (BRA), ``models/_common.py`` (``Attention``,
``AttentionLePE``). Official keys: ``downsample_layers.0.{0,1,3,4}.*`` (stem), ``downsample_layers.{1,2,3}.{0,1}.*``
(start of stage ``i``), ``stages.{i}.{j}.{pos_embed, norm1, attn.{qkv.qkv | qkv, wo | proj, lepe}, norm2,
mlp.0, mlp.3, gamma1, gamma2}``, ``norm.*`` (BatchNorm2d), ``head.*``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs
from torch import nn

from ..layers import AttentionLePE, BiLevelRoutingAttention, ConvBNDownsample, ConvBNStem
from ._base import BlockSite, NetCfg, StageCfg, build_backbone, register_downsampler, register_mixer, register_stem
from ._convert import official_to_zoo, unwrap_state_dict
from ._family import Family

__all__ = ["FAMILY", "VARIANTS", "biformer_cfg", "biformer_cfg_from_official", "checkpoint_filter_fn"]


# ------------------------------------------------------------------------------------------------ parts
# official stem conv3×3/2 → BN → GELU → conv3×3/2 → BN (keys 0, 1, 3, 4; hidden width out_dim/2) and downsampler
# conv3×3/2 (bias) → BatchNorm2d (keys 0, 1): the layers are the builders
register_stem("biformer")(ConvBNStem)
register_downsampler("biformer")(ConvBNDownsample)


@register_mixer("biformer", mlp_ratio=3.0, norm_eps=1e-6, pos_kernel=3)
def _biformer_mixer(
    dim: int, site: BlockSite, topk: int, num_heads: int = 8, n_win: int = 7, qk_dim: int | None = None,
    qk_scale: float | None = None, side_dwconv: int = 5,
) -> nn.Module:
    """BiFormer block: ``x + pos(x)``, ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (LayerNorm eps 1e-6, MLP
    ratio 3, ``pos`` a 3×3 depthwise conv: ``pos_kernel`` 0 drops it, official ``before_attn_dwconv=0``;
    ``layer_scale`` None: no official ``gamma1``/``gamma2``). The mixers have no dropout.

    ``topk > 0``: bi-level routing attention over ``n_win × n_win`` regions with ``num_heads`` heads of
    ``qk_dim / num_heads`` channels (official ``num_heads = qk_dim // head_dim``); ``topk == -2``: dense
    attention + LePE on the input (``AttentionLePE``, official 8 heads); ``topk == -1``: plain dense attention
    (official ``Attention``: no LePE, ``qkv`` without bias).
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < -2 or topk == 0:
        raise ValueError(
            f"biformer block: topk must be > 0 (routed attention), -1 (dense attention) or -2 (dense attention "
            f"with LePE), got {topk!r} (stage {site.stage}); the official topk=0 conv stand-in is not supported"
        )
    if topk > 0:
        return BiLevelRoutingAttention(
            dim, num_heads, n_win=n_win, topk=topk, qk_dim=qk_dim, qk_scale=qk_scale, side_dwconv=side_dwconv,
            **site.dd,
        )
    if topk == -2:
        return AttentionLePE(dim, num_heads, qk_scale=qk_scale, side_dwconv=side_dwconv, **site.dd)
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"biformer block: num_heads={num_heads} must divide dim={dim}; pick a divisor")
    return BiLevelRoutingAttention(
        dim, num_heads, n_win=1, topk=-1, qk_scale=qk_scale or (dim // num_heads) ** -0.5, side_dwconv=0,
        qkv_bias=False, proj_name="proj", **site.dd,
    )


# ---------------------------------------------------------------------------------------------- configs
def biformer_cfg(
    depths: Sequence[int],
    embed_dims: Sequence[int],
    qk_dims: Sequence[int] | None = None,
    mlp_ratios: Sequence[float] | float = 3,
    topks: Sequence[int] = (1, 4, 16, -2),
    n_win: int = 7,
    head_dim: int = 32,
    qk_scale: float | None = None,
    side_dwconv: int = 5,
    before_attn_dwconv: int = 3,
    layer_scale: float | None = None,
    drop_path_rate: float = 0.1,
) -> NetCfg:
    """The :class:`NetCfg` of a BiFormer (argument names as the official ``BiFormer`` constructor).

    Stage ``i`` has width ``embed_dims[i]``; routed stages (``topks[i] > 0``) use ``qk_dims[i] // head_dim``
    heads, dense stages (``topks[i] < 0``) the official fixed 8 heads. ``qk_dims`` defaults to ``embed_dims``.
    """
    n = len(depths)
    qk_dims = tuple(embed_dims) if qk_dims is None else tuple(qk_dims)
    mlp_ratios = (mlp_ratios,) * n if isinstance(mlp_ratios, (int, float)) else tuple(mlp_ratios)
    for name, seq in (("embed_dims", embed_dims), ("qk_dims", qk_dims), ("mlp_ratios", mlp_ratios),
                      ("topks", topks)):
        if len(seq) != n:
            raise ValueError(f"biformer_cfg: {len(seq)} {name} for {n} stages (depths {list(depths)}); give one "
                             f"per stage")
    if before_attn_dwconv not in (0, 3):
        raise ValueError(
            f"biformer_cfg: before_attn_dwconv must be 3 or 0 (the official conv hard-codes padding 1), got "
            f"{before_attn_dwconv!r}"
        )
    stages = []
    for i in range(n):
        routed = int(topks[i]) > 0
        if routed and qk_dims[i] % head_dim:
            raise ValueError(
                f"biformer_cfg: qk_dims[{i}]={qk_dims[i]} is not a multiple of head_dim={head_dim}; pick qk_dims "
                f"that head_dim divides"
            )
        kw = dict(
            topk=int(topks[i]), num_heads=int(qk_dims[i]) // head_dim if routed else 8, mlp_ratio=float(mlp_ratios[i]),
            side_dwconv=int(side_dwconv), pos_kernel=int(before_attn_dwconv), qk_scale=qk_scale,
            layer_scale=layer_scale,
        )
        if routed:
            kw.update(n_win=int(n_win), qk_dim=int(qk_dims[i]))
        stages.append(
            StageCfg(
                depth=int(depths[i]), dim=int(embed_dims[i]), block="biformer", block_kwargs=kw,
                downsample=None if i == 0 else "biformer",
            )
        )
    return NetCfg(
        stem="biformer",
        stages=tuple(stages),
        norm="batchnorm",
        head="classifier",
        drop_path_rate=drop_path_rate,
        # The official model's no_weight_decay() is {'pos_embed', 'cls_token'}, which timm's optimizer factory
        # compares with FULL parameter names: no BiFormer parameter is called that, so the official recipe
        # decays every >1-D weight (pos_embed / lepe convs included) and skips only 1-D params, as timm does.
        no_weight_decay=(),
    )


def biformer_cfg_from_official(official_kwargs: dict[str, Any]) -> tuple[NetCfg, dict[str, Any]]:
    """Zoo config for the official ``BiFormer(**kwargs)`` constructor arguments.

    Returns ``(cfg, model_kwargs)`` with ``num_classes`` and ``in_chans``. Options the released models do not use
    and the zoo does not build (key/value downsampling, parametric/differentiable/soft routing, post-norm,
    positional-encoding layers, the MLP's depthwise conv, a pre-logits layer) raise a ValueError.
    """
    kw = dict(official_kwargs)
    model_kwargs = dict(num_classes=kw.pop("num_classes", 1000), in_chans=kw.pop("in_chans", 3))
    kw.pop("drop_rate", None)  # accepted but unused by the official model
    unsupported = {
        "kv_downsample_mode": ("identity",), "param_routing": (False,), "diff_routing": (False,),
        "soft_routing": (False,), "pre_norm": (True,), "pe": (None,), "representation_size": (None, 0),
        "mlp_dwconv": (False,), "param_attention": ("qkvo",),
    }
    for name, allowed in unsupported.items():
        if name in kw and kw.pop(name) not in allowed:
            raise ValueError(f"biformer: official option {name}={official_kwargs[name]!r} is not supported "
                             f"(supported: {allowed})")
    kv_per_wins = kw.pop("kv_per_wins", None)
    if kv_per_wins is not None and any(k != -1 for k in kv_per_wins):
        raise ValueError(f"biformer: kv_per_wins={kv_per_wins} needs key/value downsampling; only -1 is supported")
    for ignored in ("kv_downsample_kernels", "kv_downsample_ratios", "use_checkpoint_stages", "pe_stages",
                    "auto_pad", "img_size"):
        kw.pop(ignored, None)  # no effect with kv_downsample_mode='identity'; checkpointing; the zoo always pads
    layer_scale = kw.pop("layer_scale_init_value", -1)
    known = dict(
        depths=kw.pop("depth", (3, 4, 8, 3)), embed_dims=kw.pop("embed_dim", (64, 128, 320, 512)),
        qk_dims=kw.pop("qk_dims", None), mlp_ratios=kw.pop("mlp_ratios", (4, 4, 4, 4)),
        topks=kw.pop("topks", (8, 8, -1, -1)), n_win=kw.pop("n_win", 7), head_dim=kw.pop("head_dim", 64),
        qk_scale=kw.pop("qk_scale", None), side_dwconv=kw.pop("side_dwconv", 5),
        before_attn_dwconv=kw.pop("before_attn_dwconv", 3),
        layer_scale=layer_scale if layer_scale and layer_scale > 0 else None,
        drop_path_rate=kw.pop("drop_path_rate", 0.0),
    )
    if kw:
        raise ValueError(f"biformer: unknown official constructor arguments {sorted(kw)}")
    if known["qk_dims"] is not None and any(q is None for q in known["qk_dims"]):
        known["qk_dims"] = [e if q is None else q for q, e in zip(known["qk_dims"], known["embed_dims"])]
    return biformer_cfg(**known), model_kwargs


def _v(depths, dims, dpr) -> dict[str, Any]:
    # every released BiFormer: MLP ratio 3, qk_dims = embed_dims, head_dim 32, n_win 7, topks 1/4/16/-2,
    # LePE 5x5, pos conv 3x3, no layer scale (models/biformer.py biformer_{tiny,small,base})
    return dict(depths=depths, embed_dims=dims, qk_dims=dims, mlp_ratios=(3, 3, 3, 3), topks=(1, 4, 16, -2),
                n_win=7, head_dim=32, drop_path_rate=dpr)


# name -> kwargs of biformer_cfg. Drop-path rates: training defaults (the official model functions leave it to
# the training command: configs/train_args.yaml drop_path 0.1; README trains biformer_small with 0.15).
VARIANTS: dict[str, dict[str, Any]] = {
    "biformer_nano": _v((2, 2, 4, 2), (32, 64, 128, 256), 0.05),  # zoo addition
    "biformer_tiny": _v((2, 2, 8, 2), (64, 128, 256, 512), 0.1),
    "biformer_small": _v((4, 4, 18, 4), (64, 128, 256, 512), 0.15),
    "biformer_base": _v((4, 4, 18, 4), (96, 192, 384, 768), 0.4),
}


# -------------------------------------------------------------------------------------------- converter
_STAT = r"weight|bias|running_mean|running_var|num_batches_tracked"
_BLOCK = r"^stages\.(\d+)\.(\d+)\."
# official regex -> zoo template
_KEY_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(rf"^downsample_layers\.0\.([0134])\.({_STAT})$"), r"stem.\1.\2"),
    (re.compile(rf"^downsample_layers\.([123])\.([01])\.({_STAT})$"), r"stages.\1.downsample.\2.\3"),
    (re.compile(_BLOCK + r"pos_embed\.(weight|bias)$"), r"stages.\1.blocks.\2.pos.\3"),
    (re.compile(_BLOCK + r"attn\.qkv\.qkv\.(weight|bias)$"), r"stages.\1.blocks.\2.attn.qkv.\3"),
    (re.compile(_BLOCK + r"(norm1|norm2|attn\.qkv|attn\.wo|attn\.proj|attn\.lepe)\.(weight|bias)$"),
     r"stages.\1.blocks.\2.\3.\4"),
    (re.compile(_BLOCK + r"mlp\.0\.(weight|bias)$"), r"stages.\1.blocks.\2.mlp.fc1.\3"),
    (re.compile(_BLOCK + r"mlp\.3\.(weight|bias)$"), r"stages.\1.blocks.\2.mlp.fc2.\3"),
    (re.compile(_BLOCK + r"gamma([12])$"), r"stages.\1.blocks.\2.ls\3.gamma"),
    (re.compile(rf"^norm\.({_STAT})$"), r"norm.\1"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
]

def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Official BiFormer checkpoint → zoo state dict (strict, explicit key map).

    Accepts a plain state dict or one wrapped in ``model`` / ``state_dict_ema`` / ``state_dict`` (the released
    files hold ``{'model': ...}``). Renames ``downsample_layers.0`` → ``stem``, ``downsample_layers.i`` →
    ``stages.i.downsample``, ``stages.i.j`` → ``stages.i.blocks.j``, ``pos_embed`` → ``pos``,
    ``attn.qkv.qkv`` → ``attn.qkv``, ``mlp.0``/``mlp.3`` → ``mlp.fc1``/``mlp.fc2``, ``gamma1/2`` →
    ``ls1/2.gamma``, ``head`` → ``head.fc``. A zoo-layout dict is checked and returned. Nothing in BiFormer
    depends on the resolution (all position terms are convolutions), so nothing is resized. With ``model``:
    raises a ValueError naming every official key without a mapping, every zoo key nothing mapped to and
    every shape mismatch (``head.fc`` is left to timm).
    """
    sd = unwrap_state_dict(state_dict)
    return official_to_zoo(
        sd, FAMILY, _KEY_MAP, official=lambda keys: any(k.startswith("downsample_layers.0.") for k in keys),
        missing="no 'downsample_layers.0.*' stem keys",
        unmatched_hint="another model, BiFormer-STL, or an unsupported option such as kv downsampling / param "
        "routing?", model=model, fit_hint="another variant? layer scale?",
    )


# -------------------------------------------------------------------------------------------------- timm
FAMILY = Family(
    "biformer", "BiFormer", markers=("downsample_layers.", "attn.router"),
    cfg=dict(first_conv="stem.0", license="mit", paper_ids="arXiv:2303.08810",
             origin_url="https://github.com/rayleizhu/BiFormer"),
)
# Release links from the official README (= models/biformer.py model_urls): OneDrive share links whose path
# ends in ".../root/content" (no file name; the official code downloads them as biformer_<size>_in1k.pth).
_OD = "https://api.onedrive.com/v1.0/shares"
default_cfgs = generate_default_cfgs({
    "biformer_nano": FAMILY.tag_cfg(),
    "biformer_tiny.official_in1k": FAMILY.tag_cfg(f"{_OD}/s!AkBbczdRlZvChHEOoGkgwgQzEDlM/root/content"),
    "biformer_small.official_in1k": FAMILY.tag_cfg(f"{_OD}/s!AkBbczdRlZvChHDyM-x9KWRBZ832/root/content"),
    "biformer_base.official_in1k": FAMILY.tag_cfg(f"{_OD}/s!AkBbczdRlZvChHI_XPhoadjaNxtO/root/content"),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    return build_backbone(variant, biformer_cfg(**VARIANTS[variant]), pretrained, filter_fn=checkpoint_filter_fn,
                          **kwargs)


FAMILY.register_models(__name__, _create, {
    "biformer_nano": "BiFormer-nano (zoo addition): dims 32/64/128/256, depths 2/2/4/2, top-k 1/4/16/dense, "
                     "MLP ratio 3.",
    "biformer_tiny": "BiFormer-T (13.1 M): dims 64/128/256/512, depths 2/2/8/2, top-k 1/4/16/dense, MLP ratio 3.",
    "biformer_small": "BiFormer-S (25.5 M): dims 64/128/256/512, depths 4/4/18/4, top-k 1/4/16/dense, MLP ratio 3.",
    "biformer_base": "BiFormer-B (56.8 M in the README): dims 96/192/384/768, depths 4/4/18/4, top-k 1/4/16/dense.",
})
