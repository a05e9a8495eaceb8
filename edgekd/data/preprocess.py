"""The eval-time preprocessing, in numpy + PIL only (torch-free).

`edgekd validate` runs on devices without torch, so this module is the single
definition of "what the model sees": the torch loader (loader.py) must match
`normalize` exactly, and `prepare_image` is what sources.py uses to resize, so a
file prepared on a device goes through the same PIL calls as at training time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from edgekd.errors import DataError

# Keep the arithmetic order fixed: float32(x) / 255, then (x - mean) / std, all in
# float32. Division and subtraction are correctly rounded in IEEE float32 on numpy
# and torch alike, so the two paths agree bit for bit; a fused x*scale+bias would not.
SCALE = 1.0 / 255.0


def _check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    s = np.asarray(std, dtype=np.float32).reshape(-1)
    if m.shape != (channels,) or s.shape != (channels,):
        raise DataError(f"mean/std need {channels} values (one per channel), got {len(m)} and {len(s)}")
    if not np.all(np.isfinite(m)) or not np.all(s > 0):
        raise DataError(f"std must be > 0 and mean finite, got mean {m.tolist()} std {s.tolist()}")
    return m, s


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W]: (x/255 - mean) / std."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"normalize needs uint8 images [N, H, W, C], got {images.dtype} {list(images.shape)}")
    m, s = _check_stats(mean, std, images.shape[3])
    x = images.astype(np.float32) / np.float32(255)
    x = (x - m) / s
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocessing_spec(image_size: int, mean: Sequence[float], std: Sequence[float], channels: int) -> dict:
    """What a checkpoint or bundle records so a device can rebuild the model input."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    m, s = _check_stats(mean, std, channels)
    return {
        "resize": [int(image_size), int(image_size)],
        "interpolation": "bilinear",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "channel_order": "RGB" if channels == 3 else "L",
        "layout": "NCHW",
        "scale": SCALE,  # applied as x / 255 in float32 (see normalize)
        "dtype": "float32",
    }


def resize_array(image: Image.Image, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """PIL image -> uint8 [H, W, C] in `mode`, bilinear-resized to size=(H, W) if it differs."""
    if image.mode != mode:
        image = image.convert(mode)
    if size is not None and (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def prepare_image(image: Image.Image, spec: dict) -> np.ndarray:
    """One file on a device -> uint8 [H, W, C], exactly as the training data was prepared."""
    if spec.get("interpolation") != "bilinear" or spec.get("channel_order") not in ("RGB", "L"):
        raise DataError(
            f"unsupported preprocessing: interpolation {spec.get('interpolation')!r}, "
            f"channel_order {spec.get('channel_order')!r}; allowed: bilinear, RGB or L"
        )
    return resize_array(image, tuple(spec["resize"]), spec["channel_order"])
