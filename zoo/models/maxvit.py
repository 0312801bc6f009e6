"""MaxViT (ECCV 2022): multi-axis attention — MBConv, block (window) attention and grid attention per block.

Every block of every stage is ``MBConv → window Block → grid Block``: an inverted bottleneck with
squeeze-excite (the stage's first block carries the stride 2 in its depthwise conv and a pooled 1×1
shortcut), then two pre-norm transformer blocks whose attention runs inside non-overlapping ``P×P``
windows and inside a ``G×G`` grid spread evenly over the map, each with a TF-layout relative position bias
table ``[heads, 2P-1, 2P-1]``. The stem is two 3×3 convs (the first at stride 2), so stage ``i`` outputs
stride ``2**(i+2)`` — no separate downsamplers. The head is pool → LayerNorm → Linear + tanh → Linear.

Layout and numerics follow timm's port of the official TF weights (``maxvit_*_tf_*`` in
``timm/models/maxxvit.py``, timm 1.0.31): TF "same" padding, GELU-tanh, BatchNorm eps 1e-3, LayerNorm eps
1e-5, q/k/v outer and heads inner in ``qkv``, window = grid = ``img_size // 32`` per side. Keys are timm's
(``stem.conv1``, ``stages.{i}.blocks.{j}.{conv,attn_block,attn_grid}...``, ``head.{norm,pre_logits.fc,fc}``),
so the converter is the identity plus checks and a resize of the bias tables for another window.

Any input ≥ 32 px works: window and grid attention pad the map to a multiple of ``P`` / ``G`` and mask the
padded keys (the official code requires every stage map to be divisible by the partition).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClNormMlpClassifierHead
from timm.models import generate_default_cfgs
from torch import nn

from ..layers import Block, MaxViTStem, MBConv, PartitionAttention, RelPosBias, resize_rel_pos_bias_tables
from ..ops import pair
from ._base import Backbone, NetCfg, StageCfg, build_backbone, input_hw, register_block, register_stem
from ._convert import check_fits, unwrap_state_dict
from ._family import Family, tag_input_size

__all__ = [
    "FAMILY",
    "MaxViT",
    "MaxViTBlock",
    "checkpoint_filter_fn",
    "maxvit_cfg",
    "maxvit_cfg_from_official",
]


# ------------------------------------------------------------------------------------------------ parts
class MaxViTStemCl(MaxViTStem):
    """:class:`~zoo.layers.MaxViTStem` returning channels-last ``[B, ⌈H/2⌉, ⌈W/2⌉, C]`` (keys ``conv1``,
    ``norm1``, ``conv2``). Stride 2: the first MBConv of stage 0 brings the map to stride 4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).permute(0, 2, 3, 1)


def _attn_block(
    dim: int, partition: str, size: tuple[int, int], dim_head: int, mlp_ratio: float, norm_eps: float,
    act_layer: str, drop_path: float, dd: dict,
) -> Block:
    heads = dim // dim_head
    mixer = PartitionAttention(
        dim, heads, partition, size, dim_head=dim_head,
        pos_bias=RelPosBias(size, heads, layout="tf", **dd), pos_bias_name="rel_pos", mask_padding=True, **dd,
    )
    return Block(
        dim, mixer, mlp_ratio=mlp_ratio, norm_layer=partial(nn.LayerNorm, eps=norm_eps), act_layer=act_layer,
        drop_path=drop_path, **dd,
    )


class MaxViTBlock(nn.Module):
    """One MaxViT block ``[B, H, W, C_in] -> [B, ⌈H/s⌉, ⌈W/s⌉, C]`` (channels-last in and out).

    ``conv``: :class:`~zoo.layers.MBConv` (NCHW inside; stride ``s`` and the width change happen here);
    ``attn_block``: pre-norm :class:`~zoo.layers.Block` around window attention (``P×P`` windows);
    ``attn_grid``: the same around grid attention (a ``G×G`` grid with stride ``H/G``). Heads =
    ``C // dim_head``; MLP width ``mlp_ratio·C``; no layer scale.

    Official keys (timm ``MaxxVitBlock``): ``conv.*`` (see MBConv), ``attn_{block,grid}.norm1``,
    ``.attn.qkv``, ``.attn.rel_pos.relative_position_bias_table [heads, 2P-1, 2P-1]``, ``.attn.proj``,
    ``.norm2``, ``.mlp.fc1``, ``.mlp.fc2``.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        stride: int = 1,
        dim_head: int = 32,
        window_size: int | tuple[int, int] = 7,
        grid_size: int | tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
        act_layer: str = "gelu_tanh",
        norm_eps: float = 1e-5,
        conv_norm_eps: float = 1e-3,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
        **conv_kwargs,
    ):
        """``conv_kwargs``: :class:`~zoo.layers.MBConv`'s ``expand_ratio``, ``kernel_size``, ``se_ratio``,
        ``padding`` (defaults: MaxViT's); ``conv_norm_eps``: its BatchNorm eps."""
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim_head < 1 or dim % dim_head:
            raise ValueError(
                f"MaxViTBlock: dim_head={dim_head} must divide dim={dim} (heads = dim // dim_head); "
                f"choose widths that are multiples of dim_head"
            )
        window = pair(window_size)
        grid = window if grid_size is None else pair(grid_size)
        if min(window) < 1 or min(grid) < 1:
            raise ValueError(
                f"MaxViTBlock: window_size {window} and grid_size {grid} must be >= 1 "
                f"(img_size // 32: use img_size >= 32)"
            )
        self.conv = MBConv(
            in_dim, dim, stride, act_layer=act_layer, norm_eps=conv_norm_eps, drop_path=drop_path, **conv_kwargs, **dd
        )
        common = dict(dim_head=dim_head, mlp_ratio=mlp_ratio, norm_eps=norm_eps, act_layer=act_layer,
                      drop_path=drop_path, dd=dd)
        self.attn_block = _attn_block(dim, "window", window, **common)
        self.attn_grid = _attn_block(dim, "grid", grid, **common)

    def set_partition(self, window: tuple[int, int], grid: tuple[int, int]) -> None:
        """New window and grid sizes (``set_input_size``); the bias tables are resized as the converter does."""
        for block, size in ((self.attn_block, window), (self.attn_grid, grid)):
            block.attn.size = size
            block.attn.rel_pos.set_window_size(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.attn_grid(self.attn_block(x))


@register_stem("maxvit")
def _maxvit_stem(
    in_chans: int,
    out_dim: int,
    *,
    width: int | tuple[int, int] | None = None,
    kernel_size: int = 3,
    padding: str = "same",
    bias: bool = True,
    act_layer: str = "gelu_tanh",
    norm_eps: float = 1e-3,
    device=None,
    dtype=None,
) -> nn.Module:
    """MaxViT conv stem (stride 2, channels-last out); ``width`` (default ``out_dim``) is timm's
    ``stem_width`` (int or ``(conv1, conv2)`` widths)."""
    return MaxViTStemCl(
        in_chans, out_dim if width is None else width, kernel_size, padding, bias, act_layer, norm_eps,
        device=device, dtype=dtype,
    )


@register_block("maxvit")
def _maxvit_block(
    dim: int, *, index: int, depth: int, stage: int, drop_path: float, in_dim: int, **kw
) -> nn.Module:
    """A :class:`MaxViTBlock` (``kw``: its settings); block 0 of a stage maps ``in_dim`` (previous width) →
    ``dim`` at stride 2."""
    return MaxViTBlock(in_dim if index == 0 else dim, dim, 2 if index == 0 else 1, drop_path=drop_path, **kw)


# ---------------------------------------------------------------------------------------------- configs
def maxvit_cfg(
    embed_dim: Sequence[int],
    depths: Sequence[int],
    stem_width: int | Sequence[int] = 64,
    head_hidden_size: int | None = None,
    dim_head: int = 32,
    window_size: int | Sequence[int] = 7,
    grid_size: int | Sequence[int] | None = None,
    mlp_ratio: float = 4.0,
    expand_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
) -> NetCfg:
    """The :class:`NetCfg` of a MaxViT (TF-weights numerics).

    ``embed_dim``/``depths``: one per stage; ``stem_width`` int or ``(conv1, conv2)``; ``head_hidden_size``:
    width of the tanh pre-logits layer (None/0: a LayerNorm + linear classifier instead); ``window_size`` /
    ``grid_size`` (P, G; grid defaults to the window): timm sets both to ``img_size // 32``.
    """
    if len(embed_dim) != len(depths):
        raise ValueError(f"maxvit_cfg: {len(embed_dim)} embed_dim for {len(depths)} depths; give one per stage")
    window = pair(window_size)
    grid = window if grid_size is None else pair(grid_size)
    stem = pair(stem_width)
    stages, prev = [], stem[1]
    for d, c in zip(depths, embed_dim):
        stages.append(StageCfg(
            depth=int(d), dim=int(c), block="maxvit",
            block_kwargs=dict(in_dim=prev, dim_head=dim_head, window_size=window, grid_size=grid,
                              mlp_ratio=mlp_ratio, expand_ratio=expand_ratio),
            downsample=None, stride=2,  # the stride lives in each stage's first MBConv
        ))
        prev = int(c)
    return NetCfg(
        stem="maxvit",
        stem_kwargs=dict(width=stem if stem[0] != stem[1] else stem[0]),
        stages=tuple(stages),
        norm=None if head_hidden_size else "layernorm",
        head="norm_mlp" if head_hidden_size else "classifier",
        head_hidden_size=head_hidden_size or None,
        drop_path_rate=drop_path_rate,
        no_weight_decay=("relative_position_bias_table",),  # as timm's MaxxVit.no_weight_decay
        stem_stride=2,
    )


def _with_window(cfg: NetCfg, window: tuple[int, int], grid: tuple[int, int] | None = None) -> NetCfg:
    grid = window if grid is None else grid
    stages = tuple(
        dataclasses.replace(s, block_kwargs={**s.block_kwargs, "window_size": window, "grid_size": grid})
        for s in cfg.stages
    )
    return cfg.replace(stages=stages)


# name -> kwargs of maxvit_cfg (timm maxxvit.py model_cfgs maxvit_*_tf: embed_dim, depths, stem_width,
# head_hidden_size = last width)
VARIANTS: dict[str, dict[str, Any]] = {
    "maxvit_nano": dict(embed_dim=(32, 64, 128, 256), depths=(1, 2, 3, 1), stem_width=32, head_hidden_size=256),
    "maxvit_tiny": dict(embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=64, head_hidden_size=512),
    "maxvit_small": dict(embed_dim=(96, 192, 384, 768), depths=(2, 2, 5, 2), stem_width=64, head_hidden_size=768),
    "maxvit_base": dict(embed_dim=(96, 192, 384, 768), depths=(2, 6, 14, 2), stem_width=64, head_hidden_size=768),
    "maxvit_large": dict(
        embed_dim=(128, 256, 512, 1024), depths=(2, 6, 14, 2), stem_width=128, head_hidden_size=1024
    ),
    "maxvit_xlarge": dict(
        embed_dim=(192, 384, 768, 1536), depths=(2, 6, 14, 2), stem_width=192, head_hidden_size=1536
    ),
}

# timm's config-overlay kwargs (MaxxVit(**kwargs) on the maxvit_tiny_tf config) the zoo understands; the
# defaults are the maxvit_tiny_tf values. Anything else raises.
_OFFICIAL_DEFAULTS = dict(
    embed_dim=(64, 128, 256, 512), depths=(2, 2, 5, 2), stem_width=64, head_hidden_size=512,
    transformer_dim_head=32, transformer_expand_ratio=4.0, conv_expand_ratio=4.0,
    transformer_window_size=None, transformer_grid_size=None, transformer_partition_ratio=32,
)


def maxvit_cfg_from_official(official_kwargs: dict[str, Any]) -> tuple[NetCfg, dict[str, Any]]:
    """The zoo config for ``timm.create_model('maxvit_tiny_tf_224', **official_kwargs)`` (timm overlays the
    kwargs on the ``maxvit_tiny_tf`` config; ``transformer_x`` sets ``transformer_cfg.x``).

    Returns ``(cfg, model_kwargs)``; ``model_kwargs`` holds ``num_classes``, ``in_chans``, ``drop_path_rate``.
    Window = grid = ``img_size // partition_ratio`` unless given.
    """
    kw = dict(official_kwargs)
    model_kwargs = dict(
        num_classes=kw.pop("num_classes", 1000), in_chans=kw.pop("in_chans", 3),
        drop_path_rate=kw.pop("drop_path_rate", 0.0),
    )
    img = pair(kw.pop("img_size", 224))
    v = {k: kw.pop(k, d) for k, d in _OFFICIAL_DEFAULTS.items()}
    if kw:
        raise ValueError(
            f"maxvit: unsupported official kwargs {sorted(kw)}; supported: img_size, num_classes, in_chans, "
            f"drop_path_rate, {', '.join(_OFFICIAL_DEFAULTS)}"
        )
    ratio = int(v["transformer_partition_ratio"])
    part = (img[0] // ratio, img[1] // ratio)
    if v["transformer_window_size"] is None:  # timm cfg_window_size: both from img_size
        window = grid = part
    else:
        window = pair(v["transformer_window_size"])
        grid = window if v["transformer_grid_size"] is None else pair(v["transformer_grid_size"])
    cfg = maxvit_cfg(
        embed_dim=tuple(v["embed_dim"]), depths=tuple(v["depths"]), stem_width=v["stem_width"],
        head_hidden_size=v["head_hidden_size"], dim_head=int(v["transformer_dim_head"]),
        window_size=window, grid_size=grid, mlp_ratio=float(v["transformer_expand_ratio"]),
        expand_ratio=float(v["conv_expand_ratio"]),
    )
    return cfg, model_kwargs


# ------------------------------------------------------------------------------------------------ model
class MaxViT(Backbone):
    """:class:`~zoo.models.Backbone` for MaxViT: ``img_size`` (timm's convention) sets window = grid =
    ``img_size // 32`` per side (the training resolution's partition; any input size still runs).

    ``set_input_size(img_size)`` does what the official 384/512 px models differ in: window = grid =
    ``img_size // 32`` (``window_size=``: another window = grid), every bias table resized to it (timm's
    geometric resize, what the converter does to 224 px weights loaded at 384)."""

    def __init__(self, cfg: NetCfg, *args, img_size: int | tuple[int, int] | None = None, **kwargs):
        """As :class:`~zoo.models.Backbone` (``img_size`` by keyword)."""
        if img_size is not None:
            hw = input_hw("MaxViT", img_size)  # >= 32: a window of img_size // 32 >= 1
            cfg = _with_window(cfg, (hw[0] // 32, hw[1] // 32))
        super().__init__(cfg, *args, img_size=img_size, **kwargs)

    def resized_cfg(self, hw: tuple[int, int], window_size: int | tuple[int, int] | None = None) -> NetCfg:
        if window_size is None:
            return _with_window(self.cfg, (hw[0] // 32, hw[1] // 32))
        return _with_window(self.cfg, pair(window_size, name="MaxViT.set_input_size: window_size"))

    def apply_cfg(self, cfg: NetCfg) -> None:
        for stage, sc in zip(self.stages, cfg.stages):
            for block in stage.blocks:
                block.set_partition(sc.block_kwargs["window_size"], sc.block_kwargs["grid_size"])

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """As the skeleton's; pruning the head also drops the norm-MLP head's norm and pre-logits layer (as
        timm's ``MaxxVit``), so a pruned model has no parameters left unused."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_head and isinstance(self.head, ClNormMlpClassifierHead) and self.head.hidden_size:
            self.head.reset(0, reset_other=True)
            self.head_hidden_size = self.head.num_features
        return take_indices


# -------------------------------------------------------------------------------------------- converter
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_MB = (
    rf"shortcut\.expand\.(weight|bias)|pre_norm\.{_BN}|conv1_1x1\.weight|norm1\.{_BN}|conv2_kxk\.weight|"
    rf"norm2\.{_BN}|se\.fc[12]\.(weight|bias)|conv3_1x1\.(weight|bias)"
)
_TR = r"norm[12]\.(weight|bias)|attn\.(qkv|proj)\.(weight|bias)|attn\.rel_pos\.relative_position_bias_table|" \
      r"mlp\.fc[12]\.(weight|bias)"
# official (timm maxvit_*_tf) key -> zoo key: the layouts coincide, so every pattern maps to itself
_KEY_MAP: list[re.Pattern] = [
    re.compile(rf"^stem\.(conv[12]\.(weight|bias)|norm1\.{_BN})$"),
    re.compile(rf"^stages\.\d+\.blocks\.\d+\.conv\.({_MB})$"),
    re.compile(rf"^stages\.\d+\.blocks\.\d+\.attn_(block|grid)\.({_TR})$"),
    re.compile(r"^head\.(norm|pre_logits\.fc|fc)\.(weight|bias)$"),
    re.compile(r"^norm\.(weight|bias)$"),
]
# buffers timm builds itself that the zoo does not hold (rel-pos index tables of other timm variants)
_DROP = re.compile(r".*\.(relative_position_index|height_lookup|width_lookup)$")

def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """timm/TF MaxViT checkpoint (``maxvit_*_tf_*``, e.g. the hub's ``timm/maxvit_tiny_tf_224.in1k``) → zoo
    state dict (strict, explicit key map — the layouts coincide).

    Accepts a plain state dict or one wrapped in ``model`` / ``state_dict_ema`` / ``state_dict``. Raises a
    ValueError for another family's checkpoint, for timm's ``maxvit_*_rw`` / CoAtNet layouts (other bias
    tables and head order), for every key without a mapping and, with ``model``, for every zoo key nothing
    mapped to and every shape mismatch (``head.fc`` is left to timm, which drops it when ``num_classes``
    differs). With ``model``, bias tables trained for another window (e.g. 384 px weights into a 224 px
    model) are resized as timm does (geometric interpolation); missing BatchNorm ``num_batches_tracked`` are
    filled with 0.
    """
    sd = unwrap_state_dict(state_dict)
    keys = list(sd)
    if not any(k.startswith("stem.conv1.") for k in keys):
        raise FAMILY.not_a_checkpoint(keys, "no 'stem.conv1.*' keys")
    rw = [k for k in keys if k.endswith("relative_position_bias_table") and sd[k].dim() != 3]
    if rw or any(".attn.rel_pos.mlp." in k or k.startswith("stages.0.blocks.0.conv.down") for k in keys):
        raise ValueError(
            "checkpoint_filter_fn(maxvit): this is a timm maxvit_*_rw / maxxvit / coatnet checkpoint (relative "
            f"position tables of another layout or MLP position biases, e.g. {(rw or keys)[:2]}); the zoo's "
            "MaxViT loads the TF-port layout (timm maxvit_*_tf_*) only"
        )
    out, unmatched = {}, []
    for k, v in sd.items():
        if _DROP.match(k):
            continue
        if any(p.match(k) for p in _KEY_MAP):
            out[k] = v
        else:
            unmatched.append(k)
    if unmatched:
        raise ValueError(
            f"checkpoint_filter_fn(maxvit): {len(unmatched)} keys have no mapping (not a maxvit_*_tf layout, "
            f"or another model): {unmatched}"
        )
    if model is not None:
        expected = model.state_dict()
        nbt = "num_batches_tracked"
        for k in expected:  # older exports may lack BatchNorm step counters
            if k.endswith(nbt) and k not in out and k[: -len(nbt)] + "weight" in out:
                out[k] = torch.zeros((), dtype=torch.long)
        try:
            out = resize_rel_pos_bias_tables(out, model)
        except ValueError as e:
            raise ValueError(f"checkpoint_filter_fn(maxvit): {e}") from e
        check_fits(out, expected, "maxvit", "another variant?")
    return out


# -------------------------------------------------------------------------------------------------- timm
FAMILY = Family(
    "maxvit", "MaxViT", markers=("stem.conv1.", "stages.0.blocks.0.conv.", "head.pre_logits."), crop_pct=0.95,
    cfg=dict(first_conv="stem.conv1", license="apache-2.0", paper_ids="arXiv:2204.01697",
             origin_url="https://github.com/google-research/maxvit"),
)


def _dcfg(hub: str = "", size: int = 224, **kw) -> dict[str, Any]:
    """Pretrained cfg; ``hub`` is timm's hub repo of the TF-port weights (same keys, loaded through the
    converter). 224 px in1k weights use ImageNet mean/std, the others 0.5 (as timm's cfgs)."""
    inet = size == 224 and kw.get("num_classes", 1000) == 1000
    return FAMILY.tag_cfg(
        size=size, hf_hub_id=f"timm/{hub}" if hub else None, crop_mode="center" if size == 224 else "squash",
        mean=IMAGENET_DEFAULT_MEAN if inet else (0.5, 0.5, 0.5), std=IMAGENET_DEFAULT_STD if inet else (0.5, 0.5, 0.5),
        **kw,
    )


def _tags() -> dict[str, dict[str, Any]]:
    cfgs: dict[str, dict[str, Any]] = {"maxvit_nano": _dcfg()}
    for v in ("tiny", "small", "base", "large"):
        cfgs[f"maxvit_{v}.tf_in1k"] = _dcfg(f"maxvit_{v}_tf_224.in1k")
        for s in (384, 512):
            cfgs[f"maxvit_{v}.tf_in1k_{s}"] = _dcfg(f"maxvit_{v}_tf_{s}.in1k", s)
    for v in ("base", "large", "xlarge"):
        cfgs[f"maxvit_{v}.tf_in21k"] = _dcfg(f"maxvit_{v}_tf_224.in21k", num_classes=21843)
        for s in (384, 512):
            cfgs[f"maxvit_{v}.tf_in21k_ft_in1k_{s}"] = _dcfg(f"maxvit_{v}_tf_{s}.in21k_ft_in1k", s)
    return cfgs


default_cfgs = generate_default_cfgs(_tags())


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    # the tag's resolution (or img_size) decides the window, as timm's fixed-size maxvit_*_tf_{224,384,512};
    # only a caller's img_size is passed on (recorded as the model's size: timm's traits, saved model args)
    h, w = input_hw(variant, tag_input_size(variant, kwargs))
    cfg = _with_window(maxvit_cfg(**VARIANTS[variant]), (h // 32, w // 32))
    return build_backbone(variant, cfg, pretrained, filter_fn=checkpoint_filter_fn, model_cls=MaxViT, **kwargs)


FAMILY.register_models(__name__, _create, {
    "maxvit_nano": "MaxViT-nano (zoo addition): widths 32/64/128/256, depths 1/2/3/1, stem 32.",
    "maxvit_tiny": "MaxViT-T (31 M): widths 64/128/256/512, depths 2/2/5/2, stem 64.",
    "maxvit_small": "MaxViT-S (69 M): widths 96/192/384/768, depths 2/2/5/2, stem 64.",
    "maxvit_base": "MaxViT-B (120 M): widths 96/192/384/768, depths 2/6/14/2, stem 64.",
    "maxvit_large": "MaxViT-L (212 M): widths 128/256/512/1024, depths 2/6/14/2, stem 128.",
    "maxvit_xlarge": "MaxViT-XL (475 M): widths 192/384/768/1536, depths 2/6/14/2, stem 192.",
})
