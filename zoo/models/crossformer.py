"""CrossFormer (ICLR 2022) and CrossFormer++ (TPAMI): cross-scale embeddings, short/long distance attention.

Each stage is a cross-scale embedding (the stem: convs with kernels 4/8/16/32 at stride 4; between stages:
LayerNorm then convs with kernels 2/4 at stride 2, outputs concatenated) followed by pre-norm blocks whose
attention alternates (block index ``i % 2``) between

* SDA, short distance attention: non-overlapping ``G×G`` windows (``partition="window"``);
* LDA, long distance attention: ``G×G`` groups of pixels ``I`` apart inside each ``G·I`` region
  (``partition="dilated"``),

both with a dynamic position bias (an MLP on the relative offsets, :class:`~zoo.layers.DynamicPosBias`).
Maps are padded at the bottom/right to a multiple of ``G`` (SDA) or ``G·I`` (LDA) and padded keys are masked,
as in the official main branch. When the map is not larger than ``G`` (``min(H, W) <= G``) the block attends
within windows of ``min(H, W)`` instead; the official classifier decides this once from ``img_size``, the zoo
decides it from the actual map on each call (the same thing at the official size, and any size works).

CrossFormer++ adds the *amplitude cooling layer* in blocks ``i`` with ``(i + 1) % 3 == 0 and i < depth - 1``:
after the MLP residual the map is REPLACED by ``LayerNorm(depthwise 3×3 conv(x))`` (keys ``ex_conv``,
``ex_ln``); its configs use per-stage group sizes ``[4, 4, 14, 7]`` and intervals ``[4, 2, 1, 1]``.

Official code: cheerss/CrossFormer ``models/crossformer.py`` (main branch, commit 7952010); configs
``configs/crossformer/*.yaml`` and ``configs/crossformer_pp/*.yaml``. The released CrossFormer-T/S/B/L weights
were made by the older ``crossformer`` branch, whose LDA uses a stride of ``H / G`` instead of a fixed ``I``;
both agree at 224×224 (``G·I`` equals the map size in stages 1–3), which is where the weights were trained.
Nothing depends on the input size (fixed ``G`` and ``I``, the position bias is an MLP of the offsets), so
``set_input_size(img_size)`` only records the size (``pretrained_cfg['input_size']``, timm's traits).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.models import generate_default_cfgs
from torch import nn

from .. import ops
from ..layers import Block, CrossScaleEmbedding, DynamicPosBias, PartitionAttention
from ._base import (
    BlockSite,
    NetCfg,
    StageCfg,
    build_backbone,
    mixer_block,
    register_block,
    register_downsampler,
    register_stem,
)
from ._convert import official_to_zoo, swin_layout_keys, unwrap_state_dict
from ._family import Family

__all__ = [
    "FAMILY",
    "CrossFormerAttention",
    "CrossFormerBlock",
    "checkpoint_filter_fn",
    "crossformer_cfg",
    "crossformer_cfg_from_official",
]


# ------------------------------------------------------------------------------------------------ parts
class CrossFormerAttention(PartitionAttention):
    """SDA (``long_distance=False``) or LDA (``True``) on ``[B, H, W, C]`` with a dynamic position bias.

    Keys as the official ``Attention``: ``qkv``, ``proj``, ``pos.{pos_proj, pos1, pos2, pos3}`` (the DPB is
    ``DynamicPosBias(C // 4, heads)``, MLP width ``C // 16``). If ``min(H, W) <= group_size`` the call
    falls back to windows of ``min(H, W)`` (no long-distance grouping), as the official block does.
    """

    def __init__(
        self, dim: int, num_heads: int, group_size: int = 7, interval: int = 1, long_distance: bool = False, **kwargs
    ):
        """``kwargs``: :class:`~zoo.layers.PartitionAttention`'s ``qkv_bias``, ``qk_scale``, ``proj_drop``,
        ``device``, ``dtype``."""
        if dim // 16 < 1:
            raise ValueError(
                f"CrossFormerAttention: dim={dim} gives a dynamic position bias of width dim // 16 = 0; "
                f"use dim >= 16"
            )
        if group_size < 1 or interval < 1:
            raise ValueError(
                f"CrossFormerAttention: group_size and interval must be >= 1, got {group_size}, {interval}"
            )
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        super().__init__(
            dim, num_heads, "dilated" if long_distance else "window", group_size, interval=interval,
            pos_bias=DynamicPosBias(dim // 4, num_heads, **dd), pos_bias_name="pos", mask_padding=True, **kwargs,
        )
        self.group_size = group_size
        self.long_distance = long_distance

    def forward(
        self, x: torch.Tensor, partition: str | None = None, size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        if partition is None and size is None and x.dim() == 4:
            small = ops.size_min(x.shape[1], x.shape[2])
            if ops.is_tracing():
                return self._forward_traced(x, small)
            if small <= self.group_size:
                return super().forward(x, partition="window", size=small)
        return super().forward(x, partition, size)

    def _forward_traced(self, x: torch.Tensor, small) -> torch.Tensor:
        """The eager choice written as arithmetic on the (traced) map size, so an exported graph keeps it.

        Groups of ``g = min(H, W, G)``; SDA: windows of ``g``; LDA: ``dilated`` groups of ``g`` spaced
        ``i = I if min(H, W) > G else 1`` apart (interval 1 is exactly windows of ``g``). For a map larger
        than the group this is the regular SDA/LDA, for a smaller one the official window of ``min(H, W)``.
        """
        g = ops.size_min(small, self.group_size)
        if not self.long_distance:
            return super().forward(x, partition="window", size=g)
        big = ops.greater(small, self.group_size)  # 1 when the map is larger than the group, else 0
        interval = (1 + (self.interval[0] - 1) * big, 1 + (self.interval[1] - 1) * big)
        return super().forward(x, partition="dilated", size=g, interval=interval)

    def extra_repr(self) -> str:
        kind = f"LDA, interval={self.interval[0]}" if self.long_distance else "SDA"
        return f"{kind}, group_size={self.group_size}, num_heads={self.num_heads}"


class CrossFormerBlock(Block):
    """:class:`~zoo.layers.Block` (``[B, H, W, C]``) with CrossFormer++'s optional amplitude cooling layer:
    ``x = ex_ln(ex_conv(x))`` (depthwise 3×3 conv with bias, then LayerNorm) after the MLP residual."""

    def __init__(self, dim: int, mixer: nn.Module, cooling: bool = False, **kwargs):
        """``kwargs``: :class:`~zoo.layers.Block`'s settings (``mlp_ratio``, ``drop``, ``drop_path``, ``device``...)."""
        super().__init__(dim, mixer, **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        if cooling:
            self.ex_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
            self.ex_ln = nn.LayerNorm(dim, **dd)
        else:
            self.ex_conv = None
            self.ex_ln = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.ex_conv is not None:
            x = self.ex_ln(self.ex_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return x


@register_stem("crossformer")
def _crossformer_stem(
    in_chans: int,
    out_dim: int,
    *,
    kernel_sizes: Sequence[int] = (4, 8, 16, 32),
    norm: bool = True,
    device=None,
    dtype=None,
) -> nn.Module:
    """Cross-scale patch embedding (official ``PatchEmbed``; ``norm`` is ``patch_norm``)."""
    return CrossScaleEmbedding(
        in_chans, out_dim, kernel_sizes, mode="stem", norm=norm, device=device, dtype=dtype
    )


@register_downsampler("crossformer")
def _crossformer_merge(
    in_dim: int, out_dim: int, *, kernel_sizes: Sequence[int] = (2, 4), device=None, dtype=None
) -> nn.Module:
    """Cross-scale patch merging (official ``PatchMerging``): LayerNorm, convs at stride 2, concat."""
    return CrossScaleEmbedding(in_dim, out_dim, kernel_sizes, mode="merge", device=device, dtype=dtype)


def _crossformer_mixer(dim: int, site: BlockSite, num_heads: int, **kw) -> nn.Module:
    """SDA for even ``index``, LDA for odd; ``kw``: :class:`CrossFormerAttention`'s ``group_size``,
    ``interval``, ``qkv_bias``, ``qk_scale``."""
    return CrossFormerAttention(dim, num_heads, long_distance=site.index % 2 == 1, proj_drop=site.drop, **kw, **site.dd)


@register_block("crossformer")
def _crossformer_block(dim: int, *, index: int, depth: int, cooling: bool = False, **kw) -> nn.Module:
    """:func:`~zoo.models._base.mixer_block` around :func:`_crossformer_mixer` (``kw``: the block's and the
    mixer's settings); ``cooling`` (CrossFormer++) adds the amplitude cooling layer to blocks with
    ``(index + 1) % 3 == 0`` except the stage's last."""
    cool = cooling and (index + 1) % 3 == 0 and index < depth - 1
    return mixer_block(
        _crossformer_mixer, dim, index=index, depth=depth, block=partial(CrossFormerBlock, cooling=cool), **kw
    )


# ---------------------------------------------------------------------------------------------- configs
def _per_stage(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"crossformer_cfg: {name} has {len(value)} entries, expected one per stage ({n})"
            )
        return list(value)
    return [value] * n


def crossformer_cfg(
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    group_size: int | Sequence[int] = 7,
    interval: int | Sequence[int] = (8, 4, 2, 1),
    mlp_ratio: float | Sequence[float] = 4.0,
    qkv_bias: bool = True,
    qk_scale: float | None = None,
    drop: float = 0.0,
    drop_path_rate: float = 0.1,
    cooling: bool = False,
    patch_size: Sequence[int] = (4, 8, 16, 32),
    merge_size: Sequence[Sequence[int]] = ((2, 4), (2, 4), (2, 4)),
    patch_norm: bool = True,
) -> NetCfg:
    """The :class:`NetCfg` of a CrossFormer (``cooling=False``) or CrossFormer++ (``cooling=True``).

    Stage ``i`` has width ``embed_dim · 2**i``; ``group_size`` (G), ``interval`` (I), ``mlp_ratio`` are one
    value or one per stage; ``patch_size`` the stem kernels, ``merge_size`` the kernels of each merge.
    """
    n = len(depths)
    if len(num_heads) != n:
        raise ValueError(f"crossformer_cfg: {len(num_heads)} num_heads for {n} stages; give one per stage")
    if len(merge_size) != n - 1:
        raise ValueError(
            f"crossformer_cfg: merge_size needs {n - 1} entries (one per merge), got {len(merge_size)}"
        )
    gs = _per_stage(group_size, n, "group_size")
    iv = _per_stage(interval, n, "interval")
    mr = _per_stage(mlp_ratio, n, "mlp_ratio")
    stages = []
    for i in range(n):
        stages.append(
            StageCfg(
                depth=int(depths[i]),
                dim=embed_dim * 2**i,
                block="crossformer",
                block_kwargs=dict(
                    num_heads=int(num_heads[i]), group_size=int(gs[i]), interval=int(iv[i]),
                    mlp_ratio=float(mr[i]), qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, cooling=cooling,
                ),
                downsample=None if i == 0 else "crossformer",
                downsample_kwargs={} if i == 0 else dict(kernel_sizes=tuple(merge_size[i - 1])),
            )
        )
    return NetCfg(
        stem="crossformer",
        stem_kwargs=dict(kernel_sizes=tuple(patch_size), norm=patch_norm),
        stages=tuple(stages),
        norm="layernorm",
        head="classifier",
        drop_path_rate=drop_path_rate,
        # The official recipe (optimizer.py) exempts only 1-D parameters and biases (timm's optimizer factory
        # does the same by default); the 2-D DPB weights are decayed, so nothing is listed here.
        no_weight_decay=(),
    )


_UNSUPPORTED = dict(ape=False, use_cpe=False, group_type="constant", pad_type=0, no_mask=False,
                    adaptive_interval=False, attn_drop_rate=0.0)


def crossformer_cfg_from_official(official_kwargs: dict[str, Any]) -> tuple[NetCfg, dict[str, Any]]:
    """The zoo config for the official ``CrossFormer(**official_kwargs)`` constructor arguments.

    Returns ``(cfg, model_kwargs)`` where ``model_kwargs`` holds ``num_classes`` and ``in_chans``.
    Options the official configs never use (``ape``, ``use_cpe``, non-constant ``group_type``, centred
    padding, ``no_mask``, ``adaptive_interval``) raise a ValueError. ``img_size`` is ignored (any size works).
    """
    kw = dict(official_kwargs)
    for key, ok in _UNSUPPORTED.items():
        if key in kw and kw.pop(key) != ok:
            raise ValueError(f"crossformer: official option {key}={official_kwargs[key]!r} is not supported "
                             f"(only {key}={ok!r}, what every official config uses)")
    kw.pop("img_size", None)
    kw.pop("use_checkpoint", None)
    model_kwargs = dict(num_classes=kw.pop("num_classes", 1000), in_chans=kw.pop("in_chans", 3))
    drop = kw.pop("drop_rate", 0.0)  # official: dropout in attn.proj and the MLPs (and after the stem)
    known = dict(
        embed_dim=kw.pop("embed_dim", 96), depths=kw.pop("depths", (2, 2, 6, 2)),
        num_heads=kw.pop("num_heads", (3, 6, 12, 24)), group_size=kw.pop("group_size", 7),
        interval=kw.pop("crs_interval", (8, 4, 2, 1)), mlp_ratio=kw.pop("mlp_ratio", 4.0),
        qkv_bias=kw.pop("qkv_bias", True), qk_scale=kw.pop("qk_scale", None),
        drop_path_rate=kw.pop("drop_path_rate", 0.1), cooling=bool(kw.pop("use_acl", False)),
        patch_size=kw.pop("patch_size", (4,)), merge_size=kw.pop("merge_size", ((2,), (2,), (2,))),
        patch_norm=kw.pop("patch_norm", True),
    )
    if kw:
        raise ValueError(f"crossformer: unknown official constructor arguments {sorted(kw)}")
    known["drop"] = drop
    return crossformer_cfg(**known), model_kwargs


_G7 = dict(group_size=7, interval=(8, 4, 2, 1))
_PP = dict(group_size=(4, 4, 14, 7), interval=(4, 2, 1, 1), cooling=True)


def _v(embed_dim: int, depths: tuple, heads: tuple, drop_path: float, family: dict) -> dict[str, Any]:
    return dict(embed_dim=embed_dim, depths=depths, num_heads=heads, drop_path_rate=drop_path, **family)


# name -> kwargs of crossformer_cfg, from configs/crossformer/*_224.yaml and configs/crossformer_pp/*_224.yaml
VARIANTS: dict[str, dict[str, Any]] = {
    "crossformer_nano": _v(48, (1, 1, 4, 1), (2, 4, 8, 16), 0.0, _G7),  # zoo addition
    "crossformer_tiny": _v(64, (1, 1, 8, 6), (2, 4, 8, 16), 0.1, _G7),
    "crossformer_small": _v(96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2, _G7),
    "crossformer_base": _v(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3, _G7),
    "crossformer_large": _v(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5, _G7),
    "crossformerpp_small": _v(64, (2, 2, 18, 2), (2, 4, 8, 16), 0.2, _PP),
    "crossformerpp_base": _v(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3, _PP),
    "crossformerpp_large": _v(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5, _PP),
    "crossformerpp_huge": _v(128, (6, 6, 18, 2), (4, 8, 16, 32), 0.5, _PP),
}


# -------------------------------------------------------------------------------------------- converter
_DROP = re.compile(r".*\.attn\.(biases|relative_position_index)$|.*\.attn_mask$")
_BLOCK_PART = (
    r"norm1|norm2|attn\.qkv|attn\.proj|attn\.pos\.pos_proj|attn\.pos\.pos[123]\.[02]|mlp\.fc[12]|ex_conv|ex_ln"
)
# official regex -> zoo template (explicit key map; \1.. are the regex groups)
_KEY_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^patch_embed\.projs\.(\d+)\.(weight|bias)$"), r"stem.projs.\1.\2"),
    (re.compile(r"^patch_embed\.norm\.(weight|bias)$"), r"stem.norm.\1"),
    *swin_layout_keys(rf"(?:{_BLOCK_PART})\.(?:weight|bias)", r"reductions\.\d+|norm"),
]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Official CrossFormer/CrossFormer++ checkpoint → zoo state dict (strict, explicit key map).

    Accepts a plain state dict or one wrapped in ``model`` / ``state_dict_ema`` / ``state_dict``. Drops
    ``attn.biases``, ``attn.relative_position_index`` (release checkpoints of the ``crossformer`` branch) and
    ``attn_mask`` (the zoo rebuilds them). Moves ``layers.i.downsample`` to ``stages.{i+1}.downsample`` and
    ``head`` to ``head.fc``. A state dict already in the zoo layout is checked and returned. Raises a
    ValueError naming every official key without a mapping, and, with ``model``, every zoo key nothing mapped
    to and every shape mismatch (the classifier ``head.fc`` is left to timm, which drops it when
    ``num_classes`` differs). No tensor depends on the resolution (the position bias is an MLP).
    """
    sd = unwrap_state_dict(state_dict)
    return official_to_zoo(
        sd, FAMILY, _KEY_MAP, official=lambda keys: any(k.startswith("patch_embed.projs.") for k in keys),
        missing="no 'patch_embed.projs.*' keys", unmatched_hint="unsupported options such as ape/use_cpe, or another "
        "model", zoo_stem="stem.projs.", drop=_DROP, model=model,
        fit_hint="another variant? CrossFormer vs CrossFormer++?",
    )


# -------------------------------------------------------------------------------------------------- timm
FAMILY = Family(
    "crossformer", "CrossFormer", markers=("patch_embed.projs.", "attn.pos.pos_proj"),
    cfg=dict(first_conv=("stem.projs.0", "stem.projs.1", "stem.projs.2", "stem.projs.3"), license="mit",
             paper_ids="arXiv:2108.00154", origin_url="https://github.com/cheerss/CrossFormer"),
)
_dcfg = FAMILY.tag_cfg
_PP_PAPER = "arXiv:2303.06908"
# Release links from the official README (Google Drive / BaiduCloud pages, not direct downloads: fetch the
# file by hand and pass it with pretrained_cfg_overlay=dict(file=...)).
default_cfgs = generate_default_cfgs({
    "crossformer_nano": _dcfg(),
    "crossformer_tiny.official_in1k": _dcfg(
        "https://drive.google.com/file/d/1YSkU9enn-ITyrbxLH13zNcBYvWSEidfq/view?usp=sharing"
    ),
    "crossformer_small.official_in1k": _dcfg(
        "https://drive.google.com/file/d/1RAkigsgr33va0RZ85S2Shs2BhXYcS6U8/view?usp=sharing"
    ),
    "crossformer_base.official_in1k": _dcfg(
        "https://drive.google.com/file/d/1bK8biVCi17nz_nkt7rBfio_kywUpllSU/view?usp=sharing"
    ),
    "crossformer_large.official_in1k": _dcfg(
        "https://drive.google.com/file/d/1zRWByVW_KIZ87NgaBkDIm60DAsGJErdG/view?usp=sharing"
    ),
    "crossformerpp_small.official_in1k": _dcfg(
        "https://pan.baidu.com/s/1smc_kRoogd0Ig5vfqwuGTA?pwd=crsf", paper_ids=_PP_PAPER
    ),
    "crossformerpp_base.official_in1k": _dcfg(
        "https://pan.baidu.com/s/13XVP0ebtNcyRMmkl11ALYg?pwd=crsf", paper_ids=_PP_PAPER
    ),
    "crossformerpp_large.official_in1k": _dcfg(
        "https://pan.baidu.com/s/1xtPh-ndcOxRM7fPYYxIIRg?pwd=crsf", paper_ids=_PP_PAPER
    ),
    "crossformerpp_huge.official_in1k": _dcfg(
        "https://pan.baidu.com/s/1xtPh-ndcOxRM7fPYYxIIRg?pwd=crsf", paper_ids=_PP_PAPER
    ),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    return build_backbone(
        variant, crossformer_cfg(**VARIANTS[variant]), pretrained, filter_fn=checkpoint_filter_fn, **kwargs
    )


FAMILY.register_models(__name__, _create, {
    "crossformer_nano": "CrossFormer-nano (zoo addition, ~4 M params): embed 48, depths 1/1/4/1, G 7, I 8/4/2/1.",
    "crossformer_tiny": "CrossFormer-T (27.8 M): embed 64, depths 1/1/8/6, heads 2/4/8/16.",
    "crossformer_small": "CrossFormer-S (30.7 M): embed 96, depths 2/2/6/2, heads 3/6/12/24.",
    "crossformer_base": "CrossFormer-B (52.0 M): embed 96, depths 2/2/18/2, heads 3/6/12/24.",
    "crossformer_large": "CrossFormer-L (92.0 M): embed 128, depths 2/2/18/2, heads 4/8/16/32.",
    "crossformerpp_small": "CrossFormer++-S (23.3 M): embed 64, depths 2/2/18/2, heads 2/4/8/16, G 4/4/14/7, "
                           "I 4/2/1/1.",
    "crossformerpp_base": "CrossFormer++-B (52.0 M): embed 96, depths 2/2/18/2, heads 3/6/12/24, G 4/4/14/7, "
                          "I 4/2/1/1.",
    "crossformerpp_large": "CrossFormer++-L (92.0 M): embed 128, depths 2/2/18/2, heads 4/8/16/32, G 4/4/14/7, "
                           "I 4/2/1/1.",
    "crossformerpp_huge": "CrossFormer++-H (96.0 M): embed 128, depths 6/6/18/2, heads 4/8/16/32, G 4/4/14/7, "
                          "I 4/2/1/1.",
})
