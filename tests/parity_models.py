"""The zoo model for an official-parity case (``tests/fixtures/parity/<case>/case.json``): test glue, so it
lives with the tests, not in the family modules.

A case names a registered ``variant`` (built with ``timm.create_model``; Agent and MaxViT also get the case's
``img_size``, which sets their training-size position terms / windows) or, for a reduced config, the official
constructor's ``official_kwargs``, which the family's public ``*_cfg_from_official`` turns into a zoo config.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

# families whose models take ``img_size`` (the others take any size and no such argument)
_TAKES_IMG_SIZE = ("agent", "maxvit")


def _reduced(family: str, case: dict[str, Any]) -> nn.Module:
    from zoo.models import Backbone

    kw = case["official_kwargs"]
    official = str(case.get("official_model", ""))
    if family == "biformer":
        from zoo.models.biformer import biformer_cfg_from_official as from_official
    elif family == "crossformer":
        from zoo.models.crossformer import crossformer_cfg_from_official as from_official
    elif family == "nat":
        from zoo.models.nat import nat_cfg_from_official

        def from_official(kw):  # DiNAT_s when official_model names it
            return nat_cfg_from_official(kw, swin_like="dinat_s" in official.lower())
    elif family == "maxvit":
        from zoo.models.maxvit import MaxViT, maxvit_cfg_from_official

        cfg, model_kwargs = maxvit_cfg_from_official(kw)
        return MaxViT(cfg, **{**model_kwargs, "num_classes": case["num_classes"]})
    elif family == "agent" and official == "AgentSwinTransformer":
        from zoo.models.agent import agent_swin_cfg_from_official as from_official
    else:
        raise ValueError(f"{family}: no reduced-config builder for {official!r}")
    cfg, model_kwargs = from_official(kw)
    return Backbone(cfg, **{**model_kwargs, "num_classes": case["num_classes"]})


def parity_model(case: dict[str, Any]) -> nn.Module:
    """The zoo model for a parity case: its variant, or the reduced config from ``official_kwargs``."""
    family = case["family"]
    if case.get("variant"):
        kw = case.get("official_kwargs") or {}
        extra = {"img_size": kw["img_size"]} if family in _TAKES_IMG_SIZE and "img_size" in kw else {}
        return timm.create_model(case["variant"], num_classes=case["num_classes"], **extra)
    return _reduced(family, case)
