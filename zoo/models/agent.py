"""Agent attention (ECCV 2024): the family of Agent-Swin, Agent-PVT and Agent-DeiT — its converter, variant
tables and timm registration. The models are in :mod:`zoo.models.agent_swin`, :mod:`zoo.models.agent_pvt` and
:mod:`zoo.models.agent_deit`.

Agent attention pools the queries to a small ``p×p`` grid of *agent* tokens; the agents first attend to all
keys, then every query attends to the agents (two softmax attentions, linear in the number of tokens), plus
a depthwise 3×3 conv of V and learned agent position biases (:class:`~zoo.layers.AgentAttention`).

* **Agent-Swin** (``agent_swin_*``): Swin-T/S/B with agent attention (``A``) or shifted-window (``B``) blocks
  per stage (:mod:`zoo.models.agent_swin`).
* **Agent-PVT** (``agent_pvt_*``): PVT v1 with agent attention in every block (:mod:`zoo.models.agent_pvt`).
* **Agent-DeiT** (``agent_deit_*``): DeiT with agent attention (class token as a query/key) — a plain ViT,
  stride 16 (:mod:`zoo.models.agent_deit`).

One family, one converter: the three share the official repository, its block keys and its release page, so
one ``checkpoint_filter_fn`` recognises the three official layouts. Official code:
LeapLabTHU/Agent-Attention@207ce3e ``agent_transformer/models/agent_{swin,pvt,deit}.py``.

Any input size works. The agent biases are defined at the training map size (224 px, or the pretrained tag's
size) and resized at run time (as the official downstream code).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from timm.models import generate_default_cfgs
from torch import nn

from ..layers.agent import RANK5_BIASES, official_agent_bias, resize_agent_bias
from ._base import build_backbone, input_hw
from ._convert import check_fits, map_keys, swin_layout_keys, unwrap_state_dict
from ._family import Family, tag_input_size
from ._pretrained import build_zoo_model
from .agent_deit import DEIT_VARIANTS, AgentVisionTransformer, DeitBlock
from .agent_pvt import PVT_VARIANTS, AgentPVT, PvtEmbed, agent_pvt_cfg
from .agent_swin import (  # noqa: F401  (_split_attn_type, _stage_kinds: the block patterns, named here too)
    SWIN_VARIANTS,
    AgentSwin,
    ShiftedWindowAttention,
    _split_attn_type,
    _stage_kinds,
    agent_swin_cfg,
    agent_swin_cfg_from_official,
)

__all__ = [
    "DEIT_VARIANTS",
    "FAMILY",
    "PVT_VARIANTS",
    "SWIN_VARIANTS",
    "AgentVisionTransformer",
    "DeitBlock",
    "PvtEmbed",
    "ShiftedWindowAttention",
    "agent_pvt_cfg",
    "agent_swin_cfg",
    "agent_swin_cfg_from_official",
    "checkpoint_filter_fn",
]


# -------------------------------------------------------------------------------------------- converter
_DROP = re.compile(r".*\.attn\.relative_position_index$|.*\.attn_mask$")
_ATTN = r"(?:an|na|ah|aw|ha|wa|ac|ca)_bias|(?:qkv|q|kv|proj|dwc|sr|norm)\.(?:weight|bias)"
_BLOCK = rf"norm1\.(?:weight|bias)|norm2\.(?:weight|bias)|mlp\.fc[12]\.(?:weight|bias)|attn\.(?:{_ATTN})"
_SWIN_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^patch_embed\.(proj|norm)\.(weight|bias)$"), r"stem.\1.\2"),
    (
        re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$"),
        r"stages.\1.blocks.\2.attn.rel_pos.relative_position_bias_table",
    ),
    *swin_layout_keys(_BLOCK, r"norm|reduction"),
]


def _pvt_stage(m: re.Match, rest: str) -> str:
    i = int(m.group(1)) - 1
    return f"stem.{rest}" if i == 0 else f"stages.{i}.downsample.{rest}"


_PVT_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^patch_embed(\d)\.(proj|norm)\.(weight|bias)$"),
     lambda m: _pvt_stage(m, f"embed.{m.group(2)}.{m.group(3)}")),
    (re.compile(r"^pos_embed(\d)$"), lambda m: _pvt_stage(m, "pos.pos_embed")),
    (re.compile(rf"^block(\d)\.(\d+)\.({_BLOCK})$"),
     lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.{m.group(3)}"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
]
_DEIT_MAP: list[tuple[re.Pattern, Any]] = [
    (re.compile(r"^(cls_token|pos_embed)$"), r"\1"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(rf"^blocks\.(\d+)\.({_BLOCK})$"), r"blocks.\1.\2"),
    (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.\1"),
]


def _layout(keys: list[str]) -> str | None:
    """Which official (or zoo) layout a state dict is in."""
    ks = set(keys)
    if any(k.startswith("stem.") for k in ks) and any(k.startswith("stages.") for k in ks):
        return "zoo"
    if any(k.startswith("patch_embed1.") for k in ks) and any(k.startswith("block1.") for k in ks):
        return "pvt"
    if any(k.startswith("layers.") and ".attn." in k for k in ks) and "patch_embed.proj.weight" in ks:
        return "swin"
    if "cls_token" in ks and any(k.startswith("blocks.") and "_bias" in k for k in ks):
        return "deit"
    return None


def _fit_to_model(out: dict, model: nn.Module) -> dict:
    """Resize resolution-dependent tensors (agent biases, abs pos embeds, Swin tables) to ``model``."""
    from ..layers import resample_abs_pos_embed, resize_rel_pos_bias_tables

    expected = model.state_dict()
    out = resize_rel_pos_bias_tables(out, model)
    for k, v in list(out.items()):
        if k not in expected or expected[k].shape == v.shape:
            continue
        want = expected[k].shape
        leaf = k.rsplit(".", 1)[-1]
        if leaf in ("ah_bias", "aw_bias", "ha_bias", "wa_bias") and v.dim() == len(want):
            out[k] = resize_agent_bias(v, want)
        elif leaf == "pos_embed" and v.dim() == 3:
            prefix = 1 if k == "pos_embed" else 0  # DeiT: class token first; PVT: none
            n = want[1] - prefix
            mod = model.get_submodule(k.rsplit(".", 1)[0]) if "." in k else model
            hw = getattr(mod, "grid_size", None) or (int(n**0.5), int(n**0.5))
            out[k] = resample_abs_pos_embed(v, hw, num_prefix_tokens=prefix)
    return out


def checkpoint_filter_fn(state_dict: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Official Agent-Swin / Agent-PVT / Agent-DeiT checkpoint → zoo state dict (strict, explicit key map).

    Accepts a plain state dict or one wrapped in ``model`` / ``state_dict_ema`` / ``state_dict``. Swin: drops
    ``relative_position_index`` and ``attn_mask`` (rebuilt), moves ``layers.i.downsample`` to
    ``stages.{i+1}.downsample``, ``attn.relative_position_bias_table`` to ``attn.rel_pos.*``, ``head`` to
    ``head.fc``. PVT: ``patch_embed1``/``pos_embed1`` → ``stem.embed``/``stem.pos``, ``patch_embed{i}``/
    ``pos_embed{i}`` → ``stages.{i-1}.downsample.{embed,pos}``, ``block{i}`` → ``stages.{i-1}.blocks``. DeiT:
    keys unchanged. With ``model``: agent biases, position embeddings and bias tables are resized to the
    model's training size, then every zoo key nothing mapped to, every extra key and every shape mismatch
    is named in one ValueError (the classifier is left to timm, which drops it when ``num_classes`` differs).
    """
    sd = unwrap_state_dict(state_dict)
    keys = list(sd)
    layout = _layout(keys)
    if layout is None:
        raise FAMILY.not_a_checkpoint(
            keys, "no 'layers.*.attn', 'patch_embed1.*' or 'cls_token' + agent 'blocks.*' keys"
        )
    if layout == "zoo":
        out = dict(sd)
    else:
        table = {"swin": _SWIN_MAP, "pvt": _PVT_MAP, "deit": _DEIT_MAP}[layout]
        out, unmatched = map_keys(sd, table, drop=_DROP)
        if unmatched:
            raise ValueError(
                f"checkpoint_filter_fn(agent): {len(unmatched)} official Agent-{layout} keys have no mapping "
                f"(unsupported options such as ape, or another model): {unmatched}"
            )
    # the official (and older zoo) rank-5 [1, ...] ah/aw/ha/wa biases -> the zoo's rank-4 storage
    out = {k: official_agent_bias(v) if k.rsplit(".", 1)[-1] in RANK5_BIASES else v for k, v in out.items()}
    if model is not None:
        out = _fit_to_model(out, model)
        expected = model.state_dict()
        is_head = re.compile(r"^head\.(fc\.)?(weight|bias)$").match
        check_fits(
            out, expected, "agent", "another variant or family?", what=f"the {layout} checkpoint", is_head=is_head
        )
    return out


# -------------------------------------------------------------------------------------------------- timm
_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
FAMILY = Family(
    "agent", "Agent-Swin/PVT/DeiT", markers=("attn.agent", "patch_embed1.", "cls_token", "an_bias"),
    # the official repository carries no LICENSE file
    cfg=dict(first_conv="stem.proj", license="unknown", paper_ids="arXiv:2312.08874",
             origin_url="https://github.com/LeapLabTHU/Agent-Attention"),
)
_dcfg = FAMILY.tag_cfg


_PVT = dict(first_conv="stem.embed.proj")
_DEIT = dict(first_conv="patch_embed.proj", classifier="head", stride=16)  # a plain ViT: one 16 px patch grid
# Release links from the official agent_transformer/README.md (TsinghuaCloud).
default_cfgs = generate_default_cfgs({
    "agent_swin_nano": _dcfg(),
    "agent_swin_t.official_in1k": _dcfg(_TSINGHUA.format("a2ddc1190c224f768a41")),
    "agent_swin_s.official_in1k": _dcfg(_TSINGHUA.format("f607172c9fea4d6e99bb")),
    "agent_swin_s.official_in1k_288": _dcfg(_TSINGHUA.format("09760394e93b4046a25e"), size=288),
    "agent_swin_b.official_in1k": _dcfg(_TSINGHUA.format("4fcd2d0114bb490483c3")),
    "agent_swin_b.official_in1k_384": _dcfg(_TSINGHUA.format("bb84ee9058954706a557"), size=384),
    "agent_pvt_t.official_in1k": _dcfg(_TSINGHUA.format("13fdf0e0a7c5498c934f"), **_PVT),
    "agent_pvt_s.official_in1k": _dcfg(_TSINGHUA.format("36b8be9a8863456685a3"), **_PVT),
    "agent_pvt_m.official_in1k": _dcfg(_TSINGHUA.format("4d00ecacf18b45f9b88c"), **_PVT),
    "agent_pvt_m.official_in1k_256": _dcfg(_TSINGHUA.format("654df734121643b19c52"), size=256, **_PVT),
    "agent_pvt_l.official_in1k": _dcfg(_TSINGHUA.format("040cfe0cfbbe4762ad09"), **_PVT),
    "agent_deit_t.official_in1k": _dcfg(_TSINGHUA.format("57e0904221824ee7b7af"), **_DEIT),
    "agent_deit_s.official_in1k": _dcfg(_TSINGHUA.format("fdd43304372541db8ea7"), **_DEIT),
    "agent_deit_s.official_in1k_448": _dcfg(_TSINGHUA.format("a228f86241c445f1969b"), size=448, **_DEIT),
    "agent_deit_b.official_in1k": _dcfg(_TSINGHUA.format("5115f15fdd7e4ab58fbc"), **_DEIT),
})


def _train_size(variant: str, kwargs: dict) -> int:
    """The square training resolution the position terms are defined at (:func:`tag_input_size`). A caller's
    ``img_size`` stays in ``kwargs``: the model records it as its size (timm's traits, saved model args)."""
    return input_hw(variant, tag_input_size(variant, kwargs), square=True)[0]


def _create_swin(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    img_size = _train_size(variant, kwargs)
    cfg = agent_swin_cfg(img_size=img_size, window_size=img_size // 4, **SWIN_VARIANTS[variant])
    return build_backbone(variant, cfg, pretrained, filter_fn=checkpoint_filter_fn, model_cls=AgentSwin, **kwargs)


def _create_pvt(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    img_size = _train_size(variant, kwargs)
    cfg = agent_pvt_cfg(img_size=img_size, **PVT_VARIANTS[variant])
    return build_backbone(variant, cfg, pretrained, filter_fn=checkpoint_filter_fn, model_cls=AgentPVT, **kwargs)




def _create_deit(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    img_size = _train_size(variant, kwargs)
    out_indices = kwargs.pop("out_indices", 3)
    tag_size = {} if img_size == 224 else {"img_size": img_size}  # (224: the class default)
    return build_zoo_model(
        AgentVisionTransformer, variant, pretrained, checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **{**DEIT_VARIANTS[variant], **tag_size, **kwargs},
    )


FAMILY.register_models(__name__, _create_swin, {
    "agent_swin_nano": "Agent-Swin-nano (zoo addition): embed 48, depths 1/1/3/1, heads 2/4/8/16, AAAB, "
                       "agents 9/16/49/49.",
    "agent_swin_t": "Agent-Swin-T (29 M): embed 96, depths 2/2/6/2, heads 3/6/12/24, AAAB, agents 9/16/49/49.",
    "agent_swin_s": "Agent-Swin-S (50 M): embed 96, depths 2/2/18/2, heads 3/6/12/24, AABB, agents 9/16/49/49.",
    "agent_swin_b": "Agent-Swin-B (88 M): embed 128, depths 2/2/18/2, heads 4/8/16/32, AAMB2, agents 9/16/49/49.",
})


FAMILY.register_models(__name__, _create_pvt, {
    "agent_pvt_t": "Agent-PVT-T (11.6 M): dims 64/128/320/512, depths 2/2/2/2, agents 9/16/49/49.",
    "agent_pvt_s": "Agent-PVT-S (20.6 M): dims 64/128/320/512, depths 3/4/6/3, agents 9/16/49/49.",
    "agent_pvt_m": "Agent-PVT-M (35.9 M): dims 64/128/320/512, depths 3/4/18/3, agents 9/16/49/49.",
    "agent_pvt_l": "Agent-PVT-L (48.7 M; official ``agent_pvt_large``, cfg ``agent_pvt_b.yaml``): depths 3/8/27/3.",
})


FAMILY.register_models(__name__, _create_deit, {
    "agent_deit_t": "Agent-DeiT-T (6.0 M): dim 192, depth 12, 3 heads, 49 agents in every block.",
    "agent_deit_s": "Agent-DeiT-S (22.7 M): dim 384, depth 12, 6 heads, 49 agents in every block.",
    "agent_deit_b": "Agent-DeiT-B (87.2 M): dim 768, depth 12, 12 heads, "
                    "agent attention (81 agents) in blocks 0-3 only.",
})

