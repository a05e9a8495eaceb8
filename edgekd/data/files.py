"""Image files that stay on disk (data.storage: stream): names and labels in memory, pixels decoded
when a batch needs them. Torch-free: numpy + PIL only, so `edgekd validate` rebuilds a streamed
run's split on a device exactly as training's evaluation prepared it.

The file list is the one the in-memory path decodes (sources.scan_imagefolder, sorted), so the
split of a streamed run is the same files as the in-memory split for the same seed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgekd.data.preprocess import prepare_image
from edgekd.data.images import ImageSet
from edgekd.data.sources import channel_stats, scan_imagefolder
from edgekd.errors import DataError

# Streamed training data is not all decoded, so its mean/std come from this many train images
# (chosen by the split seed, prepared as evaluation prepares them).
STATS_SAMPLE = 2000
# `storage: auto` streams when the in-memory path's peak would take more than this share of the
# memory available now (the rest is for the nets and everything else). That peak holds about
# MEMORY_PATH_COPIES copies of the decoded images (the source, the train split taken from it and the
# loader's tensor: 13,447 MiB for 40,000 images of 147 KiB at 224 px, docs/performance.md).
MEMORY_DATA_SHARE = 0.5
MEMORY_PATH_COPIES = 3
# What PIL raises for an unreadable, truncated or hostile file.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class FileSet:
    root: str
    paths: np.ndarray  # relative paths under root (object array of str)
    labels: np.ndarray  # int64 [N]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "FileSet":
        return FileSet(self.root, self.paths[index], self.labels[index], list(self.class_names))

    def open(self, i: int, mode: str) -> Image.Image:
        """File i, decoded in `mode` ("RGB" or "L"); an unreadable file is one DataError naming it."""
        path = os.path.join(self.root, self.paths[i])
        try:
            with Image.open(path) as img:
                img.load()  # decode now: a truncated file fails here, not inside a transform
                return img.convert(mode) if img.mode != mode else img.copy()
        except DECODE_ERRORS as e:
            raise DataError(f"cannot decode image {path}: {e}; remove or replace the file (streamed data is "
                            "read as training goes, so it is refused when a batch reaches it)") from None

    def decode(self, spec: dict, index: np.ndarray | None = None, threads: int | None = None) -> ImageSet:
        """The files (all, or `index`) prepared by `spec` (preprocess.prepare_image) -> ImageSet."""
        index = np.arange(len(self)) if index is None else np.asarray(index)
        size = int(spec["resize"][0])
        channels = 1 if spec["channel_order"] == "L" else 3
        out = np.empty((len(index), size, size, channels), dtype=np.uint8)

        def work(k: int) -> None:
            out[k] = prepare_image(self.open(int(index[k]), spec["channel_order"]), spec)

        # PIL releases the GIL while decoding and resizing, so threads scale across cores.
        with ThreadPoolExecutor(threads or min(16, (os.cpu_count() or 1) + 2)) as pool:
            list(pool.map(work, range(len(index)), chunksize=64))
        return ImageSet(out, self.labels[index], list(self.class_names))

    def decoded_nbytes(self, image_size: int, channels: int = 3) -> int:
        """What the in-memory path would hold for these files: uint8 image_size^2 x channels each."""
        return len(self) * image_size * image_size * channels


def scan_files(root: str | Path) -> FileSet:
    """ROOT/<class>/<image> as a FileSet: the same files, order and labels as load_imagefolder."""
    root = Path(root).absolute()
    classes, files = scan_imagefolder(root)
    paths = np.empty(len(files), dtype=object)
    paths[:] = [rel for rel, _ in files]
    return FileSet(str(root), paths, np.array([label for _, label in files], dtype=np.int64), classes)


def sample_stats(train: FileSet, spec: dict, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of up to STATS_SAMPLE train images, drawn with the split seed."""
    pick = np.random.default_rng([seed, 1]).permutation(len(train))[:STATS_SAMPLE]
    return channel_stats(train.decode(spec, np.sort(pick)).images)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def storage_for(decoded_nbytes: int, available: int | None) -> str:
    """storage: auto -> "stream" when the in-memory path's peak would not fit its share of memory."""
    if available is None:
        return "memory"
    return "stream" if MEMORY_PATH_COPIES * decoded_nbytes > MEMORY_DATA_SHARE * available else "memory"
