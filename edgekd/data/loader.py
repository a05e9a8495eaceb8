"""DeviceLoader: the whole uint8 dataset lives on the device; batches are augmented there.

Small-image datasets (CIFAR: 150 MB as uint8) fit on any GPU, so the usual
DataLoader + worker processes + per-image PIL transforms are pure overhead.
Augmentation (zero-padded random crop + horizontal flip) is one gather per batch.

Epoch e's order and augmentation are a pure function of (seed, e): call
set_epoch(e) before iterating, like DistributedSampler. Resuming a run therefore
needs only the epoch number; there is no loader state to save, so there is no
state_dict()/load_state_dict().
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.errors import DataError


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so neighbouring seeds/epochs give unrelated streams.
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


class DeviceLoader:
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
    ):
        images = np.asarray(images_uint8_nhwc)
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
            raise DataError(f"DeviceLoader needs non-empty uint8 images [N, H, W, C], got {images.dtype} {list(images.shape)}")
        if len(labels) != len(images):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1 or crop_padding < 0:
            raise DataError(f"batch_size must be >= 1 and crop_padding >= 0, got {batch_size} and {crop_padding}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"need 0 <= rank < world_size, got rank {rank} world_size {world_size}")
        channels = images.shape[3]
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"mean/std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
        self.device = torch.device(device)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment = int(batch_size), shuffle, augment
        self.crop_padding, self.hflip, self.drop_last = int(crop_padding), hflip, drop_last
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        # Like DistributedSampler: pad the epoch by wrapping around so every rank
        # gets the same number of samples (and so of batches, keeping collectives in step).
        self.per_rank = math.ceil(len(images) / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, rem = divmod(self.per_rank, self.batch_size)
        return full if self.drop_last or rem == 0 else full + 1

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's (indices, row offsets, col offsets, flips) for the current epoch.

        Drawn for the whole epoch, then sharded: an image's augmentation does not
        depend on world_size, so the union of all ranks equals a 1-process epoch.
        """
        n = len(self.labels)
        g = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        span = 2 * self.crop_padding + 1
        oy = torch.randint(0, span, (n,), generator=g)
        ox = torch.randint(0, span, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        # Draws are sized n (not the padded total) so they match the 1-process epoch.
        wrap = torch.arange(self.per_rank * self.world_size) % n
        shard = wrap[self.rank :: self.world_size]
        return tuple(t[shard].to(self.device) for t in (order, oy, ox, flip))

    def _augment(self, x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Zero-padded random crop + optional horizontal flip, as one gather in uint8."""
        b, c, h, w = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p)) if p else x  # fill 0 = torchvision RandomCrop(padding=p) on PIL
        rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
        cols = torch.arange(w, device=x.device).expand(b, w)
        if self.hflip:
            cols = torch.where(flip[:, None], (w - 1) - cols, cols)  # flipping the crop = reading it backwards
        cols = ox[:, None] + cols  # [B, W]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        # Same float32 operation order as preprocess.normalize, so eval is bit-identical.
        return (x.float() / 255 - self.mean) / self.std

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, oy, ox, flip = self._plan()
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl]
            x = self.images[idx]
            if self.augment:
                x = self._augment(x, oy[sl], ox[sl], flip[sl])
            yield self._normalize(x), self.labels[idx]
