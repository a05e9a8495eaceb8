"""Data: sources -> deterministic split -> device-resident loaders.

Importing this package never imports torch (edgekd.data.sources/split/preprocess
run on torch-free edge devices); the torch loader is imported inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.data.preprocess import preprocessing_spec
from edgekd.data.sources import DATASET_STATS, SOURCE_NAMES, ImageSet, channel_stats, load_source
from edgekd.data.split import load_split_images, make_split, split_fingerprint
from edgekd.errors import DataError

if TYPE_CHECKING:
    from edgekd.data.loader import DeviceLoader

__all__ = ["DataModule", "ImageSet", "build_data", "load_split_images", "make_split", "split_fingerprint"]


@dataclass
class DataModule:
    train: ImageSet
    val: ImageSet
    tune: ImageSet | None
    class_names: list[str]
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_info: dict  # everything load_split_images needs to rebuild the split, plus sizes and fingerprint

    def preprocessing(self) -> dict:
        return preprocessing_spec(self.image_size, self.mean, self.std, self.in_channels)

    def train_loader(
        self, batch_size, device, seed, augment=True, crop_padding=4, hflip=True, rank=0, world_size=1, drop_last=False
    ) -> "DeviceLoader":
        from edgekd.data.loader import DeviceLoader

        return DeviceLoader(
            self.train.images, self.train.labels, batch_size=batch_size, mean=self.mean, std=self.std,
            device=device, shuffle=True, augment=augment, crop_padding=crop_padding, hflip=hflip,
            drop_last=drop_last, seed=seed, rank=rank, world_size=world_size,
        )  # fmt: skip

    def eval_loader(self, split: str, batch_size, device) -> "DeviceLoader":
        from edgekd.data.loader import DeviceLoader

        sets = {"val": self.val, "tune": self.tune, "train": self.train}
        if split not in sets:
            raise DataError(f"unknown split {split!r}; allowed: val, tune, train")
        data = sets[split]
        if data is None:
            raise DataError("there is no tune split; set data.tune_fraction or data.tune_size")
        return DeviceLoader(
            data.images, data.labels, batch_size=batch_size, mean=self.mean, std=self.std,
            device=device, shuffle=False, augment=False,
        )  # fmt: skip


def build_data(
    name: str,
    root: str | None,
    *,
    image_size: int | None,
    val_fraction: float | None,
    val_size: int | None,
    tune_fraction: float = 0.0,
    tune_size: int | None = None,
    subset: int | None = None,
    split_seed: int = 0,
    download: bool = False,
    cache_dir: str | None = None,
) -> DataModule:
    """Load a source's training images, split them (val/tune from the TRAIN set, never test), pick mean/std."""
    if name not in SOURCE_NAMES:
        raise DataError(f"unknown data.name {name!r}; allowed: {', '.join(SOURCE_NAMES)}")
    abs_root = None if name == "digits" or root is None else str(Path(root).absolute())
    full = load_source(name, abs_root, image_size, download, cache_dir)
    split = make_split(
        len(full), val_fraction=val_fraction, val_size=val_size, tune_fraction=tune_fraction,
        tune_size=tune_size, subset=subset, seed=split_seed,
    )  # fmt: skip
    train, val = full.take(split["train"]), full.take(split["val"])
    tune = full.take(split["tune"]) if len(split["tune"]) else None
    n, h, w, c = full.images.shape
    if h != w:
        raise DataError(f"images are {w}x{h}, not square; set data.image_size")
    if name in DATASET_STATS:
        mean, std = DATASET_STATS[name]["mean"], DATASET_STATS[name]["std"]
    else:
        mean, std = channel_stats(train.images)  # from TRAIN only: val stays unseen
    split_info = {
        "name": name,
        "root": abs_root,
        # The actual size: rebuilding with it reproduces these arrays (no resize if already that size).
        "image_size": h,
        "val_fraction": val_fraction,
        "val_size": val_size,
        "tune_fraction": tune_fraction,
        "tune_size": tune_size,
        "subset": subset,
        "seed": split_seed,
        "num_images": n,
        "sizes": {k: int(len(v)) for k, v in split.items()},
        "fingerprint": split_fingerprint(split),
    }
    return DataModule(
        train=train, val=val, tune=tune, class_names=list(full.class_names), num_classes=len(full.class_names),
        in_channels=c, image_size=h, mean=tuple(mean), std=tuple(std), split_info=split_info,
    )  # fmt: skip
