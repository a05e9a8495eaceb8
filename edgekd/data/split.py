"""Deterministic train/val/tune/test splits. Torch-free.

The split is a pure function of (n, arguments, seed), so a validator on a device
can rebuild exactly the validation images a run used, and check it did so via
the fingerprint recorded in the run.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from edgekd.contracts import SplitInfo
from edgekd.errors import DataError

SPLIT_KEYS = ("train", "val", "tune", "test")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _count(fraction: float | None, size: int | None, n: int, what: str, allow_zero: bool) -> int:
    if fraction is not None and size is not None and not (allow_zero and fraction == 0):
        raise DataError(f"set data.{what}_fraction or data.{what}_size, not both")
    if size is not None:
        lowest = 0 if allow_zero else 1
        if not _is_int(size) or size < lowest:
            raise DataError(f"data.{what}_size must be an integer >= {lowest}, got {size!r}")
        return int(size)
    if fraction is None:
        if allow_zero:
            return 0
        raise DataError(f"set data.{what}_fraction (in (0, 1)) or data.{what}_size (>= 1)")
    low_ok = fraction >= 0 if allow_zero else fraction > 0
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (low_ok and fraction < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise DataError(f"data.{what}_fraction must be in {interval}, got {fraction!r}")
    count = math.floor(fraction * n + 0.5)  # round half up: no banker's rounding surprises
    return max(count, 1) if fraction > 0 else 0


def make_split(
    n: int,
    *,
    val_fraction: float | None = None,
    val_size: int | None = None,
    tune_fraction: float = 0.0,
    tune_size: int | None = None,
    test_fraction: float = 0.0,
    test_size: int | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Sorted, disjoint int64 indices {'train', 'val', 'tune', 'test'} into n images.

    One permutation of all n: val is carved first, then tune, then test, then train
    from the rest, so val, tune and test do not move when `subset` (a cap on train)
    changes, and adding a test split leaves val and tune where they were.
    """
    if not _is_int(n) or n < 2:
        raise DataError(f"need at least 2 images to split into train and val, got {n!r}")
    if not _is_int(seed) or seed < 0:
        raise DataError(f"data.split_seed must be an integer >= 0, got {seed!r}")
    n_val = _count(val_fraction, val_size, n, "val", allow_zero=False)
    n_tune = _count(tune_fraction, tune_size, n, "tune", allow_zero=True)
    n_test = _count(test_fraction, test_size, n, "test", allow_zero=True)
    if n_val + n_tune + n_test > n - 1:
        raise DataError(f"val ({n_val}) + tune ({n_tune}) + test ({n_test}) images leave no train image "
                        f"out of {n}; lower them")
    if subset is not None and (not _is_int(subset) or subset < 1):
        raise DataError(f"data.subset must be an integer >= 1 or null, got {subset!r}")
    perm = np.random.Generator(np.random.PCG64(int(seed))).permutation(n)
    held = n_val + n_tune + n_test
    rest = perm[held:]
    parts = {
        "train": rest if subset is None else rest[:subset],
        "val": perm[:n_val],
        "tune": perm[n_val : n_val + n_tune],
        "test": perm[n_val + n_tune : held],
    }
    return {k: np.sort(v).astype(np.int64) for k, v in parts.items()}


def split_fingerprint(split: dict[str, np.ndarray]) -> str:
    """Short sha256 of the index arrays; equal fingerprints mean the same split.
    An empty test split is left out, so splits made before test existed keep their fingerprint."""
    h = hashlib.sha256()
    for key in SPLIT_KEYS:
        idx = np.asarray(split.get(key, np.empty(0)), dtype="<i8")
        if key == "test" and len(idx) == 0:
            continue
        h.update(f"{key}:{len(idx)}:".encode())
        h.update(idx.tobytes())
    return h.hexdigest()[:16]


def load_split_images(split_info: SplitInfo | Mapping, which: str = "val", cache_dir: str | Path | None = None):
    """Rebuild one split recorded in a run's split_info (see build_data) -> ImageSet, torch-free.
    A mapping (a manifest's `data` read as JSON) is read through SplitInfo first.

    Refuses if the data now yields a different split than the run recorded.
    """
    if not isinstance(split_info, SplitInfo):
        split_info = SplitInfo.from_dict(split_info)
    from edgekd.data.files import scan_files
    from edgekd.data.sources import load_source

    if which not in SPLIT_KEYS:
        raise DataError(f"unknown split {which!r}; allowed: {', '.join(SPLIT_KEYS)}")
    if split_info.streamed:  # only this split's files are decoded, prepared as the run's evaluation prepared them
        full = scan_files(split_info.root)
    else:
        full = load_source(split_info.name, split_info.root, split_info.image_size, False, cache_dir)
    split = make_split(len(full), **split_info.carving())
    fingerprint = split_fingerprint(split)
    if split_info.fingerprint not in (None, fingerprint):
        raise DataError(
            f"the data under {split_info.root} gives split {fingerprint}, but the run used "
            f"{split_info.fingerprint}; the data changed (files added, removed or renamed)"
        )
    if split_info.streamed:
        size = int(split_info.image_size)
        geometry = {"resize": [size, size], "resize_mode": split_info.resize_mode,
                    "crop_pct": split_info.crop_pct, "interpolation": "bilinear", "channel_order": "RGB"}
        return full.decode(geometry, split[which])
    return full.take(split[which])
