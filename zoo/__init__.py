"""zoo: vision backbones with multi-scale attention, registered in timm.

``import zoo`` registers every family with timm; then ``timm.create_model("biformer_tiny")`` works.
"""

__version__ = "0.1.0"

from . import layers, ops  # noqa: E402

__all__ = ["layers", "ops", "__version__"]
