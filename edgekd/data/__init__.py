"""Data: sources -> deterministic split -> device-resident (or host-fed) loaders.

Importing this package never imports torch (edgekd.data.sources/split/preprocess
run on torch-free edge devices); the torch loader is imported inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from edgekd.contracts import SplitInfo
from edgekd.data.crop import CROP_RATIO, CROP_SCALE
from edgekd.data.files import MEMORY_PATH_COPIES, FileSet, available_memory, sample_stats, scan_files, storage_for
from edgekd.data.preprocess import EVAL_CROP_PCT, preprocessing_spec
from edgekd.data.images import ImageSet
from edgekd.data.sources import DATASET_STATS, SOURCE_NAMES, channel_stats, first_image_side, load_source
from edgekd.data.split import load_split_images, make_split, split_fingerprint
from edgekd.errors import DataError

if TYPE_CHECKING:
    import torch

    from edgekd.data.loader import DeviceLoader, HostLoader
    from edgekd.data.stream import StreamLoader

__all__ = [
    "DataModule", "FileSet", "ImageSet", "build_data", "choose_loader", "load_split_images", "make_split", "split_fingerprint",
]  # fmt: skip

@dataclass(frozen=True)
class Normalization:
    """A net's own input statistics (e.g. a timm model's pretrained_cfg), used instead of the data's."""

    source: str  # what they came from, recorded in the run
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = EVAL_CROP_PCT

    def for_channels(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if channels == len(self.mean):
            return self.mean, self.std
        if channels == 1:  # a grey-scale stem of an RGB model: the channels' average, as a grey pixel sees it
            return (sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),)
        raise DataError(f"{self.source} gives {len(self.mean)} channel statistics, the data has {channels} channels")


LOADER_KINDS = ("device", "host")
# Where the training images are kept: decoded in memory, or files decoded per batch (files.py).
STORAGES = ("memory", "stream")
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
    # ImageSets (decoded) with storage "memory", FileSets (decoded per batch) with "stream".
    train: ImageSet | FileSet
    val: ImageSet | FileSet
    tune: ImageSet | FileSet | None
    class_names: list[str]
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_info: SplitInfo  # everything load_split_images needs to rebuild the split, plus sizes and fingerprint
    # Held out from everything but the final report (never trained on, never used to choose).
    test: ImageSet | FileSet | None = None
    storage: str = "memory"
    crop_pct: float = EVAL_CROP_PCT  # the share of the resized image a streamed evaluation keeps

    def preprocessing(self) -> dict:
        # Streamed files keep their own shapes: evaluation resizes and cuts the centre (torchvision's rule).
        mode = "centre_crop" if self.storage == "stream" else "squash"
        return preprocessing_spec(self.image_size, self.mean, self.std, self.in_channels, mode, self.crop_pct)

    def train_nbytes(self) -> int:
        """The decoded train split's bytes (what the in-memory loaders hold; an estimate when streamed)."""
        if isinstance(self.train, FileSet):
            return self.train.decoded_nbytes(self.image_size, self.in_channels)
        return int(self.train.images.nbytes)

    def train_loader(
        self, batch_size, device, seed, augment=True, crop_padding=4, hflip=True, rank=0, world_size=1, drop_last=False,
        loader: str = "device", workers: int = 2, crop: str = "pad", crop_scale=CROP_SCALE, crop_ratio=CROP_RATIO,
    ) -> "DeviceLoader | HostLoader | StreamLoader":  # fmt: skip
        """loader: 'device' (train set on the device) or 'host' (workers feed it); resolve 'auto' with choose_loader.

        Both yield the same batches for the same arguments; `workers` only applies to 'host' and to
        streamed data (storage "stream" decodes files in `workers` processes, whatever `loader` says).
        crop: 'pad' (crop_padding) or 'resized' (crop_scale, crop_ratio), see edgekd.data.loader.
        """
        from edgekd.data.loader import DeviceLoader, HostLoader

        if self.storage == "stream":
            from edgekd.data.stream import StreamLoader

            return StreamLoader(
                self.train, self.preprocessing(), batch_size=batch_size, mean=self.mean, std=self.std, device=device,
                shuffle=True, augment=augment, crop_padding=crop_padding, hflip=hflip, drop_last=drop_last,
                seed=seed, rank=rank, world_size=world_size, crop=crop, crop_scale=crop_scale,
                crop_ratio=crop_ratio, workers=workers,
            )  # fmt: skip
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

    def eval_loader(self, split: str, batch_size, device, workers: int = 2) -> "DeviceLoader | StreamLoader":
        """`split` in a fixed order, prepared as `edgekd validate` prepares it; `workers` for streamed data."""
        from edgekd.data.loader import DeviceLoader

        sets = {"val": self.val, "tune": self.tune, "test": self.test, "train": self.train}
        if split not in sets:
            raise DataError(f"unknown split {split!r}; allowed: {', '.join(sets)}")
        data = sets[split]
        if data is None:
            raise DataError(f"there is no {split} split; set data.{split}_fraction or data.{split}_size")
        if isinstance(data, FileSet):
            from edgekd.data.stream import StreamLoader

            return StreamLoader(data, self.preprocessing(), batch_size=batch_size, mean=self.mean, std=self.std,
                                device=device, shuffle=False, augment=False, workers=workers)
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
    storage: str = "memory",
    normalization: Normalization | None = None,
    files: FileSet | None = None,
) -> DataModule:
    """Load a source's training images, split them (val/tune from the TRAIN set, never test), pick mean/std.

    storage: "memory" decodes every image now; "stream" (image folders only) keeps the file names and
    decodes per batch; resolve "auto" with resolve_storage first (its scan of the folder, passed as
    `files`, is not repeated). normalization: a net's own mean, std and evaluation crop (a timm
    model's pretrained_cfg) instead of the data's statistics."""
    if name not in SOURCE_NAMES:
        raise DataError(f"unknown data.name {name!r}; allowed: {', '.join(SOURCE_NAMES)}")
    if storage not in STORAGES:
        raise DataError(f"unknown storage {storage!r}; allowed: {', '.join(STORAGES)}")
    if storage == "stream" and name != "imagefolder":
        raise DataError(f"data.storage stream reads image files (data.name: imagefolder); {name} is read into memory")
    abs_root = None if name == "digits" or root is None else str(Path(root).absolute())
    if storage == "stream":
        full = files if files is not None and files.root == abs_root else scan_files(abs_root)
        side = int(image_size) if image_size is not None else first_image_side(Path(abs_root), full.class_names)
    else:
        full = load_source(name, abs_root, image_size, download, cache_dir)
    split = make_split(
        len(full), val_fraction=val_fraction, val_size=val_size, tune_fraction=tune_fraction,
        tune_size=tune_size, test_fraction=test_fraction, test_size=test_size, subset=subset, seed=split_seed,
    )  # fmt: skip
    train, val = full.take(split["train"]), full.take(split["val"])
    tune = full.take(split["tune"]) if len(split["tune"]) else None
    test = full.take(split["test"]) if len(split["test"]) else None
    stream = {}
    crop_pct = normalization.crop_pct if normalization else EVAL_CROP_PCT
    if storage == "stream":
        n, h, c = len(full), side, 3
        stream = dict(storage="stream", resize_mode="centre_crop", crop_pct=crop_pct)
    else:
        n, h, w, c = full.images.shape
        if h != w:
            raise DataError(f"images are {w}x{h}, not square; set data.image_size")
    if normalization is not None:
        mean, std = normalization.for_channels(c)
    elif storage == "stream":
        geometry = preprocessing_spec(h, (0.0,) * c, (1.0,) * c, c, "centre_crop", crop_pct)  # mean/std come next
        mean, std = sample_stats(train, geometry, split_seed)  # a sample of TRAIN: val stays unseen
    elif name in DATASET_STATS:
        mean, std = DATASET_STATS[name]["mean"], DATASET_STATS[name]["std"]
    else:
        mean, std = channel_stats(train.images)  # from TRAIN only: val stays unseen
    split_info = SplitInfo(
        name=name, root=abs_root,
        image_size=h,  # the actual size: rebuilding with it reproduces these arrays (no resize if already that size)
        val_fraction=val_fraction, val_size=val_size, tune_fraction=tune_fraction, tune_size=tune_size,
        test_fraction=test_fraction, test_size=test_size, subset=subset, seed=split_seed, num_images=n,
        sizes={k: int(len(v)) for k, v in split.items() if k != "test" or len(v)},
        fingerprint=split_fingerprint(split),
        **stream,  # how the split's files are prepared (load_split_images), absent for decoded sources
        normalization=normalization.source if normalization else None,
    )  # fmt: skip
    return DataModule(
        train=train, val=val, tune=tune, test=test, class_names=list(full.class_names), num_classes=len(full.class_names),
        in_channels=c, image_size=h, mean=tuple(mean), std=tuple(std), split_info=split_info, storage=storage,
        crop_pct=crop_pct,
    )  # fmt: skip


class StorageChoice(NamedTuple):
    storage: str  # "memory" | "stream"
    why: str
    files: FileSet | None  # the folder's files when `auto` scanned them: build_data(files=...) reuses the scan


def resolve_storage(storage: str, name: str, root: str | None, image_size: int, channels: int) -> StorageChoice:
    """data.storage -> ("memory" | "stream", why, files). `auto` streams an image folder whose in-memory path
    would peak above files.MEMORY_DATA_SHARE of the memory available now; other sources are in memory."""
    if storage in STORAGES:
        return StorageChoice(storage, "set in the recipe", None)
    if storage != "auto":
        raise DataError(f"unknown data.storage {storage!r}; allowed: auto, {', '.join(STORAGES)}")
    if name != "imagefolder":
        return StorageChoice("memory", f"{name} is read into memory", None)
    files = scan_files(root)  # names only: nothing is decoded
    need, free = len(files) * image_size * image_size * channels, available_memory()
    choice = storage_for(need, free)
    if free is None:
        return StorageChoice(choice, "the available memory is unknown here", files)
    return StorageChoice(choice, (f"{len(files):,} images at {image_size} px decode to {need / 2**30:.1f} GiB, held "
                                  f"about {MEMORY_PATH_COPIES} times in memory; {free / 2**30:.1f} GiB available"), files)
