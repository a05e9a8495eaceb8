"""The eval-time preprocessing, in numpy + PIL only (torch-free).

`edgekd validate` runs on devices without torch, so this module is the single
definition of "what the model sees": the torch loader (loader.py) must match
`normalize` exactly, and `prepare_image` is what sources.py uses to resize, so a
file prepared on a device goes through the same PIL calls as at training time.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from edgekd.errors import DataError

# Keep the arithmetic order fixed: float32(x) / 255, then (x - mean) / std, all in
# float32. Division and subtraction are correctly rounded in IEEE float32 on numpy
# and torch alike, so the two paths agree bit for bit; a fused x*scale+bias would not.
SCALE = 1.0 / 255.0
# How a file becomes the model's square input. "squash": bilinear-resized to the square (the
# in-memory sources, decoded once at that size). "centre_crop": the shorter side resized to
# image_size / crop_pct, then the centre square cut, as torchvision's and timm's evaluation
# transforms do (Resize(256) + CenterCrop(224) is crop_pct 0.875): what streamed files use.
RESIZE_MODES = ("squash", "centre_crop")
EVAL_CROP_PCT = 0.875


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


def preprocessing_spec(
    image_size: int, mean: Sequence[float], std: Sequence[float], channels: int, resize_mode: str = "squash",
    crop_pct: float = EVAL_CROP_PCT,
) -> dict:
    """What a checkpoint or bundle records so a device can rebuild the model input.

    "resize" is the model's input size either way; "resize_mode" and "crop_pct" are written only for
    centre_crop, so a squash spec is what edgekd always wrote (and an old one reads as squash)."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if resize_mode not in RESIZE_MODES:
        raise DataError(f"unknown resize mode {resize_mode!r}; allowed: {', '.join(RESIZE_MODES)}")
    m, s = _check_stats(mean, std, channels)
    if not 0 < crop_pct <= 1:
        raise DataError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    crop = {"resize_mode": "centre_crop", "crop_pct": float(crop_pct)} if resize_mode == "centre_crop" else {}
    return {
        "resize": [int(image_size), int(image_size)],
        **crop,
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


def centre_crop_array(image: Image.Image, size: int, mode: str, crop_pct: float = EVAL_CROP_PCT) -> np.ndarray:
    """PIL image -> uint8 [size, size, C] in `mode`: the shorter side bilinear-resized to
    floor(size / crop_pct) (timm's scale_size), the other keeping the aspect ratio (torchvision's
    Resize(int) rule), then the centre size x size square (torchvision's center_crop offsets)."""
    if image.mode != mode:
        image = image.convert(mode)
    short = max(size, math.floor(size / crop_pct))
    w, h = image.size
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def prepare_image(image: Image.Image, spec: dict) -> np.ndarray:
    """One file on a device -> uint8 [H, W, C], exactly as the training data was prepared."""
    mode = spec.get("resize_mode", "squash")
    if spec.get("interpolation") != "bilinear" or spec.get("channel_order") not in ("RGB", "L") or mode not in RESIZE_MODES:
        raise DataError(
            f"unsupported preprocessing: interpolation {spec.get('interpolation')!r}, "
            f"channel_order {spec.get('channel_order')!r}, resize_mode {mode!r}; allowed: bilinear, RGB or L, "
            f"{' or '.join(RESIZE_MODES)}"
        )
    if mode == "centre_crop":
        return centre_crop_array(image, int(spec["resize"][0]), spec["channel_order"], float(spec["crop_pct"]))
    return resize_array(image, tuple(spec["resize"]), spec["channel_order"])
