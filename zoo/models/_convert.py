"""Helpers the families' official-checkpoint converters share."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


def unwrap_state_dict(state_dict: dict) -> dict:
    """The state dict inside a checkpoint: ``{'model': ...}``, ``{'state_dict_ema': ...}``,
    ``{'state_dict': ...}`` or a plain state dict."""
    for key in ("model", "state_dict_ema", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def guess_family(keys: Sequence[str], families: Sequence[tuple[str, Sequence[str]]]) -> str | None:
    """The first family in ``families`` (``(name, marker key prefixes/substrings)``) whose markers occur."""
    for name, markers in families:
        if any(k.startswith(m) or m in k for k in keys for m in markers):
            return name
    return None


def map_key(key: str, key_map: Sequence[tuple[re.Pattern, Any]]) -> str | None:
    """Map ``key`` with the first matching ``(pattern, template or callable(match))`` of ``key_map``."""
    for pattern, target in key_map:
        m = pattern.match(key)
        if m:
            return target(m) if callable(target) else m.expand(target)
    return None
