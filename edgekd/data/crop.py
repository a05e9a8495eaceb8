"""The random-resized crop's settings (data.augment.crop: resized): the defaults and the one
range check, shared by the recipe schema and the loaders (edgekd.data.loader).

Torch-free and import-free: the recipe is read (and refused) before torch is imported.
"""

from __future__ import annotations

from typing import Sequence

# torchvision RandomResizedCrop's defaults: a share of the image's area, and an aspect ratio (w/h).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def crop_range_problem(scale: Sequence[float], ratio: Sequence[float]) -> str | None:
    """What is wrong with a crop_scale / crop_ratio pair, or None if both are usable ranges."""
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        return f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(scale)}"
    lo, hi = ratio
    if not 0 < lo <= hi < float("inf"):
        return f"crop_ratio must be [min, max] with 0 < min <= max, got {list(ratio)}"
    return None
