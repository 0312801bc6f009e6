"""One spec per family: what the zoo needs to know about a family besides its modules, told once.

A family file (``zoo/models/<name>.py``) reads as: its config function, the blocks it adds, its converter,
its variant table, then one :class:`Family` and one :meth:`Family.register_models` call. The spec holds:

* ``markers``: key prefixes/substrings only the family's official checkpoints have. Every converter that
  is handed another family's file names that family (:meth:`Family.not_a_checkpoint`), from the markers of
  all registered families, so a new family teaches the others to recognise its files by itself.
* the default-cfg fields every pretrained tag of the family shares (license, paper, origin, first conv,
  classifier); :meth:`Family.tag_cfg` adds the ones that follow from the tag's image size.
* the variant registration: one timm entrypoint per variant (``@register_model`` semantics: the function is
  a module attribute named after the variant, with the variant's one-line docstring).
* the tag rule: :func:`tag_input_size`, the training resolution a pretrained tag (or ``img_size``) asks for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model, resolve_pretrained_cfg
from torch import nn

from ..ops import pair

__all__ = ["FAMILIES", "Family", "guess_family", "tag_input_size"]

FAMILIES: dict[str, Family] = {}


@dataclass(frozen=True)
class Family:
    """A model family, registered in :data:`FAMILIES` on creation.

    Args:
        name: the family module's name (``zoo.models.<name>``) and the name converters' messages use.
        title: how messages name its checkpoints (``"NAT/DiNAT"``).
        markers: key prefixes/substrings of the family's official checkpoints (no other family's).
        cfg: default-cfg fields every tag shares (``license``, ``paper_ids``, ``origin_url``, ``first_conv``...).
        crop_pct: the evaluation crop at 224 px (every other size: 1.0, as the official 384/448 px recipes).
    """

    name: str
    title: str
    markers: tuple[str, ...] = ()
    cfg: Mapping[str, Any] = field(default_factory=dict)
    crop_pct: float = 0.875

    def __post_init__(self):
        if self.name in FAMILIES and FAMILIES[self.name] != self:
            raise ValueError(f"family {self.name!r} is registered twice")
        FAMILIES[self.name] = self

    def tag_cfg(self, url: str = "", size: int = 224, stride: int = 32, **kw) -> dict[str, Any]:
        """The pretrained cfg of one tag trained at ``size`` px: timm's fields, the family's, then ``kw``;
        ``stride``: the final feature map's reduction (``pool_size`` is ``size // stride``)."""
        return {
            "url": url,
            "num_classes": 1000,
            "input_size": (3, size, size),
            "pool_size": (size // stride, size // stride),
            "min_input_size": (3, 32, 32),
            "crop_pct": self.crop_pct if size == 224 else 1.0,
            "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "classifier": "head.fc",
            **self.cfg,
            **kw,
        }

    def not_a_checkpoint(self, keys: list[str], missing: str) -> ValueError:
        """The error for a state dict that is not this family's: what is ``missing``, its first keys, and the
        family its keys look like (from every registered family's markers)."""
        guess = guess_family(keys, exclude=self.name)
        hint = f"; it looks like a {guess!r} checkpoint: load it with that family" if guess else "."
        return ValueError(
            f"checkpoint_filter_fn({self.name}): not a {self.title} checkpoint ({missing}; first keys "
            f"{keys[:3]}){hint}"
        )

    def register_models(
        self, module: str, create: Callable[..., nn.Module], docs: Mapping[str, str]
    ) -> None:
        """One timm entrypoint per variant of ``docs`` (variant -> one-line docstring), defined in ``module``
        (which must already hold ``default_cfgs``): ``<variant>(pretrained=False, **kwargs)`` calls
        ``create(variant, pretrained, **kwargs)``."""
        for variant, doc in docs.items():
            setattr(sys.modules[module], variant, register_model(_entrypoint(module, variant, doc, create)))


def _entrypoint(module: str, variant: str, doc: str, create: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        return create(variant, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = variant
    entrypoint.__module__ = module
    entrypoint.__doc__ = doc
    return entrypoint


def guess_family(keys: Iterable[str], exclude: str | None = None) -> str | None:
    """The first registered family (other than ``exclude``) one of whose markers starts or occurs in a key."""
    keys = list(keys)
    for fam in FAMILIES.values():
        if fam.name != exclude and fam.markers and any(m in k for k in keys for m in fam.markers):
            return fam.name
    return None


def tag_input_size(variant: str, kwargs: dict[str, Any]) -> tuple[int, int]:
    """The training resolution ``(h, w)`` a model is built for: ``img_size`` if the caller gave it, else the
    input size of the pretrained tag it is created with (``agent_swin_s.official_in1k_288`` → 288, also through
    ``pretrained_cfg`` / ``pretrained_cfg_overlay``), else the variant's default tag's (224 when it has none)."""
    if kwargs.get("img_size") is not None:
        return pair(kwargs["img_size"])
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    size = cfg.input_size if cfg is not None and cfg.input_size else (3, 224, 224)
    return int(size[-2]), int(size[-1])
