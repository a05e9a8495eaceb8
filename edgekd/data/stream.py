"""StreamLoader: batches decoded from image files in DataLoader worker processes (data.storage: stream).

The epoch plan is the in-memory loaders' (loader.BatchPlan): the same order, the same per-rank
shards with DistributedSampler's padding, the same draws for the same (seed, epoch), so resuming
needs only the epoch number and the worker count changes nothing. What differs is where the pixels
come from: each file is decoded when its batch is built, and a training crop is cut from the
full-resolution image (torchvision transforms v2's resized_crop, antialiased, then flipped), not from
a copy shrunk in advance. Evaluation batches are prepared by preprocess.prepare_image, the function
`edgekd validate` uses on a device, so the two cannot disagree.

Memory does not grow with the data set: the loader holds the file names and labels, and each worker
holds the batches it prefetches.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from edgekd.data.crop import CROP_RATIO, CROP_SCALE
from edgekd.data.files import FileSet
from edgekd.data.augment import boxes_from_variates, crop_flip
from edgekd.data.loader import BatchPlan, EpochIndices, LastEpochDraws, check_workers, make_plan, normalization, normalize_batch
from edgekd.data.preprocess import prepare_image
from edgekd.errors import DataError

# Set to a folder to have every rank's training loader (shuffle on) append the train-split positions it
# decodes, one line per batch ("epoch batch i j k ..."), to index-rank<rank>.log there: how a test sees
# which images each rank read.
INDEX_LOG_ENV = "EDGEKD_INDEX_LOG"


class _FileBatches(Dataset):
    """Map-style dataset whose item (epoch, i) is batch i of that epoch, decoded from the files:
    (uint8 NCHW, labels), or (None, message) for a file that cannot be read, so the main process
    raises one line instead of a worker traceback."""

    def __init__(self, plan: BatchPlan, files: FileSet, spec: dict, index_log: str | None):
        self.plan, self.files, self.spec = plan, files, spec
        self.mode, self.size = spec["channel_order"], int(spec["resize"][0])
        self.index_log = index_log
        self._draws_for = LastEpochDraws(plan.stream_draws)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        order, crop, flip = self._draws_for(epoch)
        sl = self.plan.batch_slice(i)
        idx = order[sl]
        try:
            images = [self.files.open(int(j), self.mode) for j in idx]
        except DataError as e:
            return None, str(e)
        if self.index_log:
            self._log(epoch, i, idx)
        if self.plan.augment and self.plan.crop == "resized":
            x = self._resized_crops(images, tuple(t[sl] for t in crop), flip[sl])
        else:
            x = torch.from_numpy(np.stack([prepare_image(img, self.spec) for img in images])).permute(0, 3, 1, 2)
            if self.plan.augment:  # crop: pad, on the prepared square, as the in-memory path does
                x = crop_flip(x, crop[0][sl], crop[1][sl], flip[sl], self.plan.crop_padding, self.plan.hflip)
        return x.contiguous(), torch.as_tensor(self.files.labels[idx.numpy()], dtype=torch.int64)

    def _resized_crops(self, images: list[Image.Image], variates, flip: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF  # noqa: N812 (torchvision's own alias)

        heights = torch.tensor([img.height for img in images], dtype=torch.int64)
        widths = torch.tensor([img.width for img in images], dtype=torch.int64)
        top, left, ch, cw = boxes_from_variates(variates, heights, widths, self.plan.crop_scale, self.plan.crop_ratio)
        out = []
        for k, img in enumerate(images):
            img = TF.resized_crop(img, int(top[k]), int(left[k]), int(ch[k]), int(cw[k]), [self.size, self.size],
                                  antialias=True)
            if self.plan.hflip and bool(flip[k]):
                img = TF.horizontal_flip(img)
            arr = np.asarray(img, dtype=np.uint8)
            out.append(arr[:, :, None] if arr.ndim == 2 else arr)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)

    def _log(self, epoch: int, i: int, idx: torch.Tensor) -> None:
        path = os.path.join(self.index_log, f"index-rank{self.plan.rank}.log")
        with open(path, "a") as f:  # one short append per batch: lines from several workers do not interleave
            f.write(f"{epoch} {i} " + " ".join(map(str, idx.tolist())) + "\n")

    def __len__(self) -> int:
        return self.plan.num_batches()


class StreamLoader:
    """Training or evaluation batches of a FileSet, normalised on `device`. set_epoch(e) before
    iterating, like DistributedSampler; workers=0 decodes in this process."""

    def __init__(
        self, files: FileSet, spec: dict, *, batch_size: int, mean: Sequence[float], std: Sequence[float],
        device: str | torch.device, shuffle: bool, augment: bool, crop_padding: int = 4, hflip: bool = True,
        drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1, crop: str = "resized",
        crop_scale: tuple[float, float] = CROP_SCALE, crop_ratio: tuple[float, float] = CROP_RATIO, workers: int = 2,
    ):  # fmt: skip
        if len(files) == 0:
            raise DataError(f"no image files to stream under {files.root}")
        size = int(spec["resize"][0])
        channels = 1 if spec["channel_order"] == "L" else 3
        self.plan = make_plan(
            len(files), size, size, batch_size=batch_size, shuffle=shuffle, augment=augment,
            crop_padding=crop_padding, hflip=hflip, drop_last=drop_last, seed=seed, rank=rank,
            world_size=world_size, crop=crop, crop_scale=crop_scale, crop_ratio=crop_ratio,
        )  # fmt: skip
        if self.plan.num_batches() == 0:
            raise DataError(f"rank {rank} of {world_size} gets no batch of {batch_size} from {len(files)} images")
        self.device, self.mean, self.std = normalization(mean, std, channels, device)
        self.workers = check_workers(workers)
        self.batch_size, self.epoch = self.plan.batch_size, 0
        self._indices = EpochIndices(len(self))
        self._loader = DataLoader(
            _FileBatches(self.plan, files, spec, (os.environ.get(INDEX_LOG_ENV) or None) if shuffle else None),
            batch_size=None,  # items already are batches
            sampler=self._indices,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            prefetch_factor=2 if self.workers > 0 else None,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.plan.num_batches()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._indices.epoch = self.epoch  # read when the DataLoader starts this pass
        for x, y in self._loader:
            if x is None:
                raise DataError(y)
            yield normalize_batch(x.to(self.device, non_blocking=True), self.mean, self.std), y.to(self.device)
