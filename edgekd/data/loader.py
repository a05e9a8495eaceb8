"""Training/eval loaders: the epoch plan is shared, only where the pixels live differs.

DeviceLoader: the whole uint8 dataset lives on the device; batches are augmented there.
Small-image datasets (CIFAR: 150 MB as uint8) fit on any GPU, so the usual
DataLoader + worker processes + per-image PIL transforms are pure overhead.
Augmentation is integer indexing on the uint8 batch, so it gives the same bytes on
any device: a zero-padded random crop + horizontal flip (crop="pad", one gather),
or a random-resized crop + flip (crop="resized": four gathers and a fixed-point
bilinear blend).

HostLoader: for datasets that do not fit in device memory. The uint8 images stay
in host memory; a torch DataLoader whose items are whole batches runs the same
plan and the same gather on the CPU in worker processes, and pinned memory +
non_blocking copies feed the device. Given the same arguments it yields exactly
the batches DeviceLoader yields (tests/test_loader_paths.py checks torch.equal).

Epoch e's order and augmentation are a pure function of (seed, e): call
set_epoch(e) before iterating, like DistributedSampler. Resuming a run therefore
needs only the epoch number; there is no loader state to save, so there is no
state_dict()/load_state_dict().
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from edgekd.data.crop import CROP_RATIO, CROP_SCALE, crop_range_problem
from edgekd.errors import DataError

# (indices, row offsets, col offsets, flips, crop heights, crop widths); the crop sizes
# are the image's own for crop="pad".
Draws = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# (indices, crop draws, flips) of images whose sizes are known only once decoded (streamed).
StreamDraws = tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]
CROPS = ("pad", "resized")


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so neighbouring seeds/epochs give unrelated streams.
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


def _per_rank(n: int, world_size: int) -> int:
    # Like DistributedSampler: pad the epoch by wrapping around so every rank
    # gets the same number of samples (and so of batches, keeping collectives in step).
    return math.ceil(n / world_size)


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Batches each rank takes in one epoch of n images (batch_size per rank)."""
    full, rem = divmod(_per_rank(n, world_size), batch_size)
    return full if drop_last or rem == 0 else full + 1


@dataclass(frozen=True)
class BatchPlan:
    """Everything that decides which images a batch holds and how they are augmented, except the pixels.

    CPU-only and picklable, so DataLoader worker processes can hold a copy and
    compute an epoch's draws themselves.
    """

    n: int
    batch_size: int
    shuffle: bool
    augment: bool
    crop_padding: int
    hflip: bool
    drop_last: bool
    seed: int
    rank: int
    world_size: int
    height: int = 0  # the images' size: where crop="resized" draws its boxes
    width: int = 0
    crop: str = "pad"
    crop_scale: tuple[float, float] = CROP_SCALE
    crop_ratio: tuple[float, float] = CROP_RATIO

    @property
    def per_rank(self) -> int:
        return _per_rank(self.n, self.world_size)

    def num_batches(self) -> int:
        return batches_per_epoch(self.n, self.batch_size, self.world_size, self.drop_last)

    def batch_slice(self, i: int) -> slice:
        return slice(i * self.batch_size, (i + 1) * self.batch_size)

    def draws(self, epoch: int) -> Draws:
        """This rank's (indices, row offsets, col offsets, flips, crop heights, crop widths)
        for `epoch`, on the CPU.

        Drawn for the whole epoch, then sharded: an image's augmentation does not
        depend on world_size, so the union of all ranks equals a 1-process epoch.
        """
        order, crop, flip = self._drawn(epoch)
        if self.crop == "resized":
            oy, ox, ch, cw = boxes_from_variates(crop, self.height, self.width, self.crop_scale, self.crop_ratio)
        else:
            (oy, ox), n = crop, self.n
            ch, cw = torch.full((n,), self.height), torch.full((n,), self.width)
        shard = self._shard()
        return order[shard], oy[shard], ox[shard], flip[shard], ch[shard], cw[shard]

    def stream_draws(self, epoch: int) -> StreamDraws:
        """draws() for images whose sizes are known only once decoded: (indices, crop, flips), where
        crop is the pad offsets (rows, cols) or the resized crops' variates (boxes_from_variates)."""
        order, crop, flip = self._drawn(epoch)
        shard = self._shard()
        return order[shard], tuple(t[shard] for t in crop), flip[shard]

    def _drawn(self, epoch: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        n = self.n
        g = _epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.crop == "resized":
            crop = crop_variates(g, n)
        else:
            span = 2 * self.crop_padding + 1
            crop = (torch.randint(0, span, (n,), generator=g), torch.randint(0, span, (n,), generator=g))
        flip = torch.rand(n, generator=g) < 0.5
        return order, crop, flip

    def _shard(self) -> torch.Tensor:
        # Draws are sized n (not the padded total) so they match the 1-process epoch.
        wrap = torch.arange(self.per_rank * self.world_size) % self.n
        return wrap[self.rank :: self.world_size]


def make_plan(
    n: int, height: int, width: int, *, batch_size: int, shuffle: bool, augment: bool, crop_padding: int = 4,
    hflip: bool = True, drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1, crop: str = "pad",
    crop_scale: tuple[float, float] = CROP_SCALE, crop_ratio: tuple[float, float] = CROP_RATIO,
) -> BatchPlan:
    """A checked BatchPlan: every loader's arguments, refused with one line each."""
    if batch_size < 1 or crop_padding < 0:
        raise DataError(f"batch_size must be >= 1 and crop_padding >= 0, got {batch_size} and {crop_padding}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"need 0 <= rank < world_size, got rank {rank} world_size {world_size}")
    if crop not in CROPS:
        raise DataError(f"unknown crop {crop!r}; allowed: {', '.join(CROPS)}")
    if problem := crop_range_problem(crop_scale, crop_ratio):
        raise DataError(problem)
    return BatchPlan(
        n=int(n), batch_size=int(batch_size), shuffle=bool(shuffle), augment=bool(augment),
        crop_padding=int(crop_padding), hflip=bool(hflip), drop_last=bool(drop_last), seed=int(seed),
        rank=int(rank), world_size=int(world_size), height=int(height), width=int(width), crop=crop,
        crop_scale=tuple(map(float, crop_scale)), crop_ratio=tuple(map(float, crop_ratio)),
    )  # fmt: skip


def check_workers(workers: int) -> int:
    """DataLoader worker processes: an integer from 0 to the CPUs this process may use."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise DataError(f"workers must be an integer >= 0, got {workers!r}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > cpus:
        raise DataError(f"data.workers {workers} is more than the {cpus} CPUs this process may use; allowed: 0 to {cpus}")
    return workers


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


def take_batch(
    plan: BatchPlan, images: torch.Tensor, labels: torch.Tensor, draws: Draws, i: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch i of an epoch: (augmented uint8 NCHW images, labels), on the device of `images`/`draws`.

    Both loaders call this, so their batches cannot drift apart.
    """
    order, oy, ox, flip, ch, cw = draws
    sl = plan.batch_slice(i)
    idx = order[sl]
    x = images[idx]
    if plan.augment and plan.crop == "resized":
        x = resized_crop_flip(x, oy[sl], ox[sl], ch[sl], cw[sl], flip[sl], plan.hflip)
    elif plan.augment:
        x = crop_flip(x, oy[sl], ox[sl], flip[sl], plan.crop_padding, plan.hflip)
    return x, labels[idx]


class _PlannedLoader:
    """Argument checks, epoch bookkeeping and normalisation shared by both loaders."""

    def __init__(
        self,
        images_uint8_nhwc: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device,
        shuffle: bool,
        augment: bool,
        crop_padding: int = 4,
        hflip: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        crop: str = "pad",
        crop_scale: tuple[float, float] = CROP_SCALE,
        crop_ratio: tuple[float, float] = CROP_RATIO,
    ):
        name = type(self).__name__
        images = np.asarray(images_uint8_nhwc)
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
            raise DataError(f"{name} needs non-empty uint8 images [N, H, W, C], got {images.dtype} {list(images.shape)}")
        if len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.plan = make_plan(
            len(images), images.shape[1], images.shape[2], batch_size=batch_size, shuffle=shuffle, augment=augment,
            crop_padding=crop_padding, hflip=hflip, drop_last=drop_last, seed=seed, rank=rank,
            world_size=world_size, crop=crop, crop_scale=crop_scale, crop_ratio=crop_ratio,
        )  # fmt: skip
        self.device, self.mean, self.std = normalization(mean, std, images.shape[3], device)
        self.batch_size = self.plan.batch_size
        self.epoch = 0
        self._place(images, torch.as_tensor(np.asarray(labels), dtype=torch.int64))

    def _place(self, images_uint8_nhwc: np.ndarray, labels: torch.Tensor) -> None:
        """Set self.images (uint8, indexed as NCHW) and self.labels where this loader gathers batches from."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.plan.num_batches()

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_batch(x, self.mean, self.std)


def normalization(mean: Sequence[float], std: Sequence[float], channels: int, device) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """(device, mean, std) as [1, C, 1, 1] float32 tensors there; mean/std must have one value per channel."""
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean/std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    device = torch.device(device)
    as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
    return device, as_t(mean), as_t(std)


def normalize_batch(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # Same float32 operation order as preprocess.normalize, so eval is bit-identical.
    return (x.float() / 255 - mean) / std


class DeviceLoader(_PlannedLoader):
    """The whole uint8 dataset on the device, batches gathered and augmented there."""

    def _place(self, images_uint8_nhwc: np.ndarray, labels: torch.Tensor) -> None:
        nchw = torch.from_numpy(images_uint8_nhwc).permute(0, 3, 1, 2).contiguous()
        self.images, self.labels = nchw.to(self.device), labels.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        draws = tuple(t.to(self.device) for t in self.plan.draws(self.epoch))
        for i in range(len(self)):
            x, y = take_batch(self.plan, self.images, self.labels, draws, i)
            yield self._normalize(x), y


class _EpochBatches(Dataset):
    """Map-style dataset whose item (epoch, i) is batch i of that epoch, as CPU uint8 + labels.

    The epoch travels inside the index, so persistent workers (which keep their
    own copy of this object) follow set_epoch without being restarted. Each copy
    caches the draws of the last epoch it served.
    """

    def __init__(self, plan: BatchPlan, images: torch.Tensor, labels: torch.Tensor):
        self.plan, self.images, self.labels = plan, images, labels
        self._epoch: int | None = None
        self._draws: Draws | None = None

    def _draws_for(self, epoch: int) -> Draws:
        if self._epoch != epoch:
            self._draws, self._epoch = self.plan.draws(epoch), epoch
        return self._draws

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key
        x, y = take_batch(self.plan, self.images, self.labels, self._draws_for(epoch), i)
        # Gathering from the NHWC-backed view can give channels-last strides; the device path gives NCHW.
        return x.contiguous(), y

    def __len__(self) -> int:
        return self.plan.num_batches()


class EpochIndices(Sampler):
    """Yields (epoch, 0), (epoch, 1), ... for the epoch set just before iteration (in the main process)."""

    def __init__(self, num_batches: int):
        self.num_batches, self.epoch = num_batches, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in range(self.num_batches)])

    def __len__(self) -> int:
        return self.num_batches


class HostLoader(_PlannedLoader):
    """DeviceLoader's batches for datasets that do not fit in device memory (see the module docstring).

    workers=0 runs everything in-process; workers > 0 keeps that many persistent
    worker processes, each prefetching 4 batches.
    """

    def __init__(self, images_uint8_nhwc: np.ndarray, labels: np.ndarray, *, workers: int = 2, **kwargs):
        """DeviceLoader's arguments plus `workers`."""
        self.workers = check_workers(workers)
        super().__init__(images_uint8_nhwc, labels, **kwargs)
        self._indices = EpochIndices(len(self))
        self._loader = DataLoader(
            _EpochBatches(self.plan, self.images, self.labels),
            batch_size=None,  # items already are batches
            sampler=self._indices,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",  # pinned pages make the non_blocking copy truly async
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def _place(self, images_uint8_nhwc: np.ndarray, labels: torch.Tensor) -> None:
        # A zero-copy NCHW view of the caller's array: a dataset too big for the device
        # is big for the host too, so no second copy. With the default fork start
        # method the workers share these pages as well.
        self.images, self.labels = torch.from_numpy(images_uint8_nhwc).permute(0, 3, 1, 2), labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._indices.epoch = self.epoch  # read when the DataLoader starts this pass
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield self._normalize(x), y
