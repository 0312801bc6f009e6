"""Helpers the families' official-checkpoint converters share."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._family import Family


def unwrap_state_dict(state_dict: dict) -> dict:
    """The state dict inside a checkpoint: ``{'model': ...}``, ``{'state_dict_ema': ...}``,
    ``{'state_dict': ...}`` or a plain state dict."""
    for key in ("model", "state_dict_ema", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def map_key(key: str, key_map: Sequence[tuple[re.Pattern, Any]]) -> str | None:
    """Map ``key`` with the first matching ``(pattern, template or callable(match))`` of ``key_map``."""
    for pattern, target in key_map:
        m = pattern.match(key)
        if m:
            return target(m) if callable(target) else m.expand(target)
    return None


def map_keys(
    state_dict: dict, key_map: Sequence[tuple[re.Pattern, Any]], drop: re.Pattern | None = None
) -> tuple[dict, list[str]]:
    """Map every key of ``state_dict`` with :func:`map_key`; keys matching ``drop`` (buffers the zoo rebuilds)
    are skipped. Returns ``(mapped state dict, official keys without a mapping)``."""
    out, unmatched = {}, []
    for key, value in state_dict.items():
        if drop is not None and drop.match(key):
            continue
        new = map_key(key, key_map)
        if new is None:
            unmatched.append(key)
        else:
            out[new] = value
    return out, unmatched


def check_fits(
    converted: dict,
    expected: dict,
    family: str,
    hint: str,
    what: str = "the checkpoint",
    is_head: Callable[[str], Any] = lambda k: k.startswith("head.fc."),
) -> None:
    """Raise one ValueError naming every zoo key nothing mapped to, every converted key the model lacks and
    every shape mismatch between ``converted`` and the model's ``expected`` state dict. Classifier keys
    (``is_head``) are left to timm, which drops them when ``num_classes`` differs."""
    problems = []
    missing = [k for k in expected if k not in converted and not is_head(k)]
    extra = [k for k in converted if k not in expected and not is_head(k)]
    if missing:
        problems.append(f"zoo keys nothing mapped to: {missing}")
    if extra:
        problems.append(f"converted keys the model does not have: {extra}")
    shapes = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in converted
        if k in expected and not is_head(k) and converted[k].shape != expected[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches: {shapes}")
    if problems:
        raise ValueError(
            f"checkpoint_filter_fn({family}): {what} does not fit the model ({hint}); " + "; ".join(problems)
        )


def _next_stage_downsample(m: re.Match) -> str:
    return f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}.{m.group(3)}"


def swin_layout_keys(blocks: str, downsample: str, levels: str = "layers") -> list[tuple[re.Pattern, Any]]:
    """Key map entries of the Swin-style official layouts (Agent-Swin, CrossFormer, NAT/DiNAT):
    ``{levels}.i.blocks.j.<blocks>`` → ``stages.i.blocks.j.<same>``, ``{levels}.i.downsample.<downsample>.
    (weight|bias)`` → ``stages.{i+1}.downsample.<same>`` (the official downsampler ends stage ``i``, the zoo's
    starts stage ``i+1``), ``norm`` → ``norm``, ``head`` → ``head.fc``. ``blocks``/``downsample``: regexes of
    the key tails (without capturing groups)."""
    return [
        (re.compile(rf"^{levels}\.(\d+)\.blocks\.(\d+)\.({blocks})$"), r"stages.\1.blocks.\2.\3"),
        (re.compile(rf"^{levels}\.(\d+)\.downsample\.({downsample})\.(weight|bias)$"), _next_stage_downsample),
        (re.compile(r"^norm\.(weight|bias)$"), r"norm.\1"),
        (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
    ]


def official_to_zoo(
    sd: dict,
    family: Family,
    key_map: Sequence[tuple[re.Pattern, Any]],
    *,
    official: Callable[[list[str]], bool],
    missing: str,
    unmatched_hint: str,
    zoo_stem: str = "stem.",
    drop: re.Pattern | None = None,
    model=None,
    fit_hint: str = "",
) -> dict:
    """A family's converter up to the resizing: a state dict already in the zoo layout (``zoo_stem*`` and
    ``stages.*`` keys) as it is; one in the family's official layout (``official(keys)``) mapped with
    ``key_map`` (raising a ValueError naming every key without a mapping, ``unmatched_hint`` saying why that
    may be); anything else raises the family's "not a checkpoint" error (``missing``: what is not there).
    With ``model``, :func:`check_fits` then checks the result against it (``fit_hint``: what may differ)."""
    keys = list(sd)
    if any(k.startswith(zoo_stem) for k in keys) and any(k.startswith("stages.") for k in keys):
        out = dict(sd)
    elif not official(keys):
        raise family.not_a_checkpoint(keys, missing)
    else:
        out, unmatched = map_keys(sd, key_map, drop=drop)
        if unmatched:
            raise ValueError(
                f"checkpoint_filter_fn({family.name}): {len(unmatched)} official keys have no mapping "
                f"({unmatched_hint}): {unmatched}"
            )
    if model is not None:
        check_fits(out, model.state_dict(), family.name, fit_hint)
    return out
