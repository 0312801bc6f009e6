"""Any PIL image mode to 8-bit RGB, for every recipe dataset.

PIL's own ``im.convert("RGB")`` is wrong for several modes that real files decode to: 16-bit grey (``I;16``,
``I``: 16-bit PNG/TIFF/PGM) is clipped to 255, so a 16-bit photo becomes almost all white; alpha is dropped,
so a transparent pixel shows whatever colour it happens to store; 32-bit float (``F``) is clipped as well.
:func:`to_rgb` scales and composites instead and refuses what it cannot scale (a ``ValueError`` that the
datasets count as a skipped sample, with the file name).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["ALPHA_BACKGROUND", "to_rgb"]

ALPHA_BACKGROUND = (0, 0, 0)
"""Colour that transparent pixels are composited over (black: a transparent pixel carries no light)."""


def _grey_to_8bit(im: Image.Image) -> Image.Image:
    """``I;16*`` / ``I`` / ``F`` → ``L``. Integers are 16-bit data (0..65535 → 0..255, v / 257 rounded);
    floats in 0..1 are scaled by 255, floats in 0..255 kept; anything else raises ValueError."""
    a = np.asarray(im)
    if im.mode == "F":
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not np.isfinite(a).all() or lo < 0 or hi > 255:
            raise ValueError(f"float image (mode F) with values {lo:g}..{hi:g}: only 0..1 or 0..255 can be scaled")
        scaled = a * 255.0 if hi <= 1.0 else a
    else:
        a = a.astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"integer image (mode {im.mode}) with values {lo}..{hi}: only 16-bit data (0..65535) "
                             "can be scaled to 8 bits")
        scaled = a / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _icc_to_srgb(im: Image.Image, mode: str) -> Image.Image | None:
    """``im`` converted through its embedded ICC profile to sRGB ``mode``, or None without a usable profile."""
    icc = im.info.get("icc_profile")
    if not icc:
        return None
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=mode)
    except Exception:  # noqa: BLE001 - a broken or unsupported profile: fall back to PIL's plain conversion
        return None


def to_rgb(im: Image.Image, background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """A new 8-bit ``RGB`` image (safe to use after ``im`` is closed) from an image of any mode.

    - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I``): 0..65535 scaled to 0..255; ``I`` outside 0..65535
      raises ValueError. ``F``: 0..1 scaled by 255, 0..255 kept, other ranges raise ValueError.
    - With alpha (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, ``P``/``L``/``RGB`` with a ``transparency`` key):
      composited over ``background`` (default black).
    - ``CMYK``: through its embedded ICC profile to sRGB when it has one, else PIL's conversion (which already
      undoes Adobe's inverted CMYK JPEGs). ``LAB``: through ImageCms to sRGB.
    - ``1``, ``L``, ``P``, ``RGBX``, ``YCbCr``, ``HSV``: PIL's conversion (grey is repeated to 3 channels).
    16-bit RGB/RGBA PNGs already decode to 8-bit ``RGB``/``RGBA`` in PIL.
    """
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _grey_to_8bit(im).convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        lab_to_rgb = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(im, lab_to_rgb)
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")  # PIL has no La -> RGBA
        base = Image.new("RGBA", im.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode == "CMYK":
        converted = _icc_to_srgb(im, "RGB")
        if converted is not None:
            return converted
    return im.convert("RGB")
