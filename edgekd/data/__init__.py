"""Data: sources -> deterministic split -> device-resident (or host-fed) loaders.

Importing this package never imports torch (edgekd.data.sources/split/preprocess
run on torch-free edge devices); the torch loader is imported inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.data.crop import CROP_RATIO, CROP_SCALE
from edgekd.data.preprocess import preprocessing_spec
from edgekd.data.sources import DATASET_STATS, SOURCE_NAMES, ImageSet, channel_stats, load_source
from edgekd.data.split import load_split_images, make_split, split_fingerprint
from edgekd.errors import DataError

if TYPE_CHECKING:
    import torch

    from edgekd.data.loader import DeviceLoader, HostLoader

__all__ = [
    "DataModule", "ImageSet", "build_data", "choose_loader", "load_split_images", "make_split", "split_fingerprint",
]  # fmt: skip

LOADER_KINDS = ("device", "host")
# A device-resident train set may take this share of the free device memory; the
# rest is for the models, activations, optimizer state and the allocator's slack.
DEVICE_DATA_SHARE = 0.25


def loader_for_free_bytes(images_nbytes: int, free_bytes: int) -> str:
    """'device' if the uint8 train set fits in DEVICE_DATA_SHARE of `free_bytes` of device memory, else 'host'."""
    return "device" if images_nbytes <= DEVICE_DATA_SHARE * free_bytes else "host"


def choose_loader(kind: str, images_nbytes: int, device: "str | torch.device") -> str:
    """Resolve data.loader: 'device' and 'host' pass through; 'auto' picks by free device memory.

    On anything but CUDA the device loader's "device memory" is host memory
    (CPU), so it is always 'device' there: a host path would only add copies.
    """
    if kind not in ("auto", *LOADER_KINDS):
        raise DataError(f"unknown loader {kind!r}; allowed: auto, {', '.join(LOADER_KINDS)}")
    if isinstance(images_nbytes, bool) or not isinstance(images_nbytes, Integral) or images_nbytes < 0:
        raise DataError(f"images_nbytes must be an integer >= 0, got {images_nbytes!r}")
    if kind != "auto":
        return kind
    import torch  # here, not at the top: importing edgekd.data stays torch-free

    device = torch.device(device)
    if device.type != "cuda":
        return "device"
    free, _total = torch.cuda.mem_get_info(device)
    return loader_for_free_bytes(images_nbytes, free)


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
    # Held out from everything but the final report (never trained on, never used to choose).
    test: ImageSet | None = None

    def preprocessing(self) -> dict:
        return preprocessing_spec(self.image_size, self.mean, self.std, self.in_channels)

    def train_loader(
        self, batch_size, device, seed, augment=True, crop_padding=4, hflip=True, rank=0, world_size=1, drop_last=False,
        loader: str = "device", workers: int = 2, crop: str = "pad", crop_scale=CROP_SCALE, crop_ratio=CROP_RATIO,
    ) -> "DeviceLoader | HostLoader":  # fmt: skip
        """loader: 'device' (train set on the device) or 'host' (workers feed it); resolve 'auto' with choose_loader.

        Both yield the same batches for the same arguments; `workers` only applies to 'host'.
        crop: 'pad' (crop_padding) or 'resized' (crop_scale, crop_ratio), see edgekd.data.loader.
        """
        from edgekd.data.loader import DeviceLoader, HostLoader

        if loader not in LOADER_KINDS:
            hint = "; resolve 'auto' with choose_loader first" if loader == "auto" else ""
            raise DataError(f"unknown loader {loader!r}; allowed: {', '.join(LOADER_KINDS)}{hint}")
        kwargs = dict(
            batch_size=batch_size, mean=self.mean, std=self.std, device=device, shuffle=True, augment=augment,
            crop_padding=crop_padding, hflip=hflip, drop_last=drop_last, seed=seed, rank=rank, world_size=world_size,
            crop=crop, crop_scale=crop_scale, crop_ratio=crop_ratio,
        )  # fmt: skip
        if loader == "host":
            return HostLoader(self.train.images, self.train.labels, workers=workers, **kwargs)
        return DeviceLoader(self.train.images, self.train.labels, **kwargs)

    def eval_loader(self, split: str, batch_size, device) -> "DeviceLoader":
        from edgekd.data.loader import DeviceLoader

        sets = {"val": self.val, "tune": self.tune, "test": self.test, "train": self.train}
        if split not in sets:
            raise DataError(f"unknown split {split!r}; allowed: {', '.join(sets)}")
        data = sets[split]
        if data is None:
            raise DataError(f"there is no {split} split; set data.{split}_fraction or data.{split}_size")
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
    test_fraction: float = 0.0,
    test_size: int | None = None,
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
        tune_size=tune_size, test_fraction=test_fraction, test_size=test_size, subset=subset, seed=split_seed,
    )  # fmt: skip
    train, val = full.take(split["train"]), full.take(split["val"])
    tune = full.take(split["tune"]) if len(split["tune"]) else None
    test = full.take(split["test"]) if len(split["test"]) else None
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
        "test_fraction": test_fraction,
        "test_size": test_size,
        "subset": subset,
        "seed": split_seed,
        "num_images": n,
        "sizes": {k: int(len(v)) for k, v in split.items() if k != "test" or len(v)},
        "fingerprint": split_fingerprint(split),
    }
    return DataModule(
        train=train, val=val, tune=tune, test=test, class_names=list(full.class_names), num_classes=len(full.class_names),
        in_channels=c, image_size=h, mean=tuple(mean), std=tuple(std), split_info=split_info,
    )  # fmt: skip
