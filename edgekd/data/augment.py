"""Augmentation of uint8 image batches as integer arithmetic (the same bytes on any device), and the
random-resized crop's draws: torchvision's RandomResizedCrop.get_params, vectorised and split into
size-free variates and the boxes they give for an image's own size (what streamed files need).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The uniform variates behind n random-resized crops: (area shares [n, tries], log-ratio
# positions [n, tries], (row, col) positions [n, 2]). Drawn apart from any image size, so a
# streamed image's box can be made from them once its own size is known (decoding it).
CropVariates = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
CROP_TRIES = 10


def crop_variates(g: torch.Generator, n: int, attempts: int = CROP_TRIES) -> CropVariates:
    area_u = torch.rand(n, attempts, generator=g, dtype=torch.float64)
    ratio_u = torch.rand(n, attempts, generator=g, dtype=torch.float64)
    pos_u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return area_u, ratio_u, pos_u


def boxes_from_variates(
    variates: CropVariates, height: int | torch.Tensor, width: int | torch.Tensor,
    scale: tuple[float, float], ratio: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, height, width) of each crop, drawn as torchvision's RandomResizedCrop.get_params
    draws one: a share `scale` of the area at an aspect ratio (w/h) log-uniform in `ratio`, the first
    try that fits, else the largest centred crop whose ratio is in range. height/width: one size for
    all images, or one per image (int64 tensors [n])."""
    area_u, ratio_u, pos_u = variates
    n = area_u.shape[0]
    height = torch.as_tensor(height, dtype=torch.int64).expand(n)
    width = torch.as_tensor(width, dtype=torch.int64).expand(n)
    hh, ww = height[:, None], width[:, None]
    target = (hh * ww) * (scale[0] + (scale[1] - scale[0]) * area_u)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(log_lo + (log_hi - log_lo) * ratio_u)
    cw = torch.round(torch.sqrt(target * r)).long()
    ch = torch.round(torch.sqrt(target / r)).long()
    fits = (cw >= 1) & (cw <= ww) & (ch >= 1) & (ch <= hh)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
    ch, cw = ch.gather(1, first)[:, 0], cw.gather(1, first)[:, 0]
    fallback_h, fallback_w = _centre_crop(height, width, ratio)
    ok = fits.any(dim=1)
    ch = torch.where(ok, ch, fallback_h)
    cw = torch.where(ok, cw, fallback_w)
    top = torch.where(ok, (pos_u[:, 0] * (height - ch + 1)).long(), (height - ch) // 2)
    left = torch.where(ok, (pos_u[:, 1] * (width - cw + 1)).long(), (width - cw) // 2)
    return top, left, ch, cw


def resized_crop_boxes(
    g: torch.Generator, n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    attempts: int = CROP_TRIES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random-resized crop boxes of a height x width image (see boxes_from_variates)."""
    return boxes_from_variates(crop_variates(g, n, attempts), height, width, scale, ratio)


def _centre_crop(height: torch.Tensor, width: torch.Tensor, ratio: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's fallback crop: the whole image, narrowed to the nearest ratio in range (per image)."""
    in_ratio = width.double() / height.double()
    cut_h = torch.clamp(torch.round(width.double() / ratio[0]).long(), min=1)  # too tall: a shorter crop
    cut_w = torch.clamp(torch.round(height.double() * ratio[1]).long(), min=1)  # too wide: a narrower crop
    fh = torch.where(in_ratio < ratio[0], cut_h, height)
    fw = torch.where(in_ratio > ratio[1], cut_w, width)
    return fh, fw


def crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, padding: int, hflip: bool) -> torch.Tensor:
    """Zero-padded random crop + optional horizontal flip of uint8 NCHW `x`, as one gather.

    Pure integer indexing, so it gives the same bytes on any device.
    """
    b, c, h, w = x.shape
    p = padding
    padded = F.pad(x, (p, p, p, p)) if p else x  # fill 0 = torchvision RandomCrop(padding=p) on PIL
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = torch.arange(w, device=x.device).expand(b, w)
    if hflip:
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)  # flipping the crop = reading it backwards
    cols = ox[:, None] + cols  # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


# Fixed-point bilinear weights: 11 fractional bits per axis, 22 for the blend of four pixels
# (255 * 2**22 still fits int32): within 1 of a float resize, rounded.
_FRAC_BITS = 11
_ONE = 1 << _FRAC_BITS


def _source_coords(start: torch.Tensor, size: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For output pixels 0..out-1 of crops [start, start+size) (one row per crop): the lower and
    upper source pixel and the upper one's weight in 1/2048, sampling at pixel centres
    (align_corners=False, as PIL and torchvision resize), in integers only."""
    i = torch.arange(out, device=size.device)
    size = size[:, None]
    # Source coordinate (i + 0.5) * size / out - 0.5, times 2048, rounded down.
    pos = torch.div((2 * i + 1) * size * _ONE, 2 * out, rounding_mode="floor") - _ONE // 2
    pos = pos.clamp(min=0).minimum((size - 1) * _ONE)
    lo = pos >> _FRAC_BITS
    hi = torch.minimum(lo + 1, size - 1)
    return start[:, None] + lo, start[:, None] + hi, pos & (_ONE - 1)


def resized_crop_flip(
    x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, ch: torch.Tensor, cw: torch.Tensor, flip: torch.Tensor,
    hflip: bool,
) -> torch.Tensor:
    """Crop box (oy, ox, ch, cw) of each uint8 NCHW image, bilinearly resized back to the
    image's size, optionally flipped. Integer arithmetic only, so the same bytes on any
    device; within 1 of a float bilinear resize (no antialiasing: crops are never larger
    than the output)."""
    b, c, h, w = x.shape
    r0, r1, fy = _source_coords(oy, ch, h)  # [B, H]
    c0, c1, fx = _source_coords(ox, cw, w)  # [B, W]
    if hflip:
        c0, c1, fx = (torch.where(flip[:, None], t.flip(1), t) for t in (c0, c1, fx))
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]].to(torch.int32)

    wy, wx = fy[:, None, :, None].to(torch.int32), fx[:, None, None, :].to(torch.int32)
    top = at(r0, c0) * (_ONE - wx) + at(r0, c1) * wx
    bottom = at(r1, c0) * (_ONE - wx) + at(r1, c1) * wx
    blend = top * (_ONE - wy) + bottom * wy  # at most 255 * 2**22: fits int32
    return ((blend + (1 << (2 * _FRAC_BITS - 1))) >> (2 * _FRAC_BITS)).to(torch.uint8)
