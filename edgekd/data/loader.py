"""Training/eval loaders: the epoch plan is shared, only where the pixels live differs.

DeviceLoader: the whole uint8 dataset lives on the device; batches are augmented there.
Small-image datasets (CIFAR: 150 MB as uint8) fit on any GPU, so the usual
DataLoader + worker processes + per-image PIL transforms are pure overhead.
Augmentation (augment.py) is integer indexing on the uint8 batch, so it gives the same bytes on
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
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from edgekd.data.augment import boxes_from_variates, crop_flip, crop_variates, resized_crop_flip
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


class LastEpochDraws:
    """An epoch's draws, computed once for the last epoch asked: a worker's dataset copy serves
    every batch of an epoch from it (the epoch travels inside each batch index)."""

    def __init__(self, draw: Callable[[int], Any]):
        self.draw = draw
        self.epoch: int | None = None
        self.draws: Any = None

    def __call__(self, epoch: int) -> Any:
        if self.epoch != epoch:
            self.draws, self.epoch = self.draw(epoch), epoch
        return self.draws


class _EpochBatches(Dataset):
    """Map-style dataset whose item (epoch, i) is batch i of that epoch, as CPU uint8 + labels.

    The epoch travels inside the index, so persistent workers (which keep their
    own copy of this object) follow set_epoch without being restarted. Each copy
    caches the draws of the last epoch it served.
    """

    def __init__(self, plan: BatchPlan, images: torch.Tensor, labels: torch.Tensor):
        self.plan, self.images, self.labels = plan, images, labels
        self._draws_for = LastEpochDraws(plan.draws)

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
