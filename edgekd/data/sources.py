"""Image sources -> ImageSet (uint8 NHWC in memory). Torch-free: numpy + PIL only.

`edgekd validate` rebuilds the validation split on edge devices without torch,
so nothing here may import torch or torchvision at module level (torchvision is
imported only inside the explicit CIFAR download branch).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from edgekd.data.cifar import cifar_classes, load_cifar
from edgekd.data.images import ImageSet
from edgekd.data.preprocess import resize_array
from edgekd.errors import DataError
from edgekd.files import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Published per-channel statistics of the CIFAR training sets (x/255).
DATASET_STATS = {
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "cifar100": {"mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
}


def _workers() -> int:
    return min(16, (os.cpu_count() or 1) + 2)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of x/255, exact via 256-bin histograms.

    Histograms over chunks keep memory flat: a float64 copy of 50k CIFAR images
    would be 1.2 GB.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise DataError(f"channel_stats needs non-empty uint8 [N, H, W, C], got {images.dtype} {list(images.shape)}")
    channels = images.shape[3]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), 2048):
        flat = images[start : start + 2048].reshape(-1, channels)
        for c in range(channels):
            counts[c] += np.bincount(flat[:, c], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum(axis=1)
    mean = (counts * values).sum(axis=1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / n
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var))


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear-resize every image (PIL, like prepare_image on a device); no-op if already that size."""
    n, h, w, c = images.shape
    if (h, w) == (image_size, image_size):
        return images
    mode = "RGB" if c == 3 else "L"
    out = np.empty((n, image_size, image_size, c), dtype=np.uint8)

    def work(i: int) -> None:
        src = images[i] if c == 3 else images[i, :, :, 0]
        out[i] = resize_array(Image.fromarray(src, mode), (image_size, image_size), mode)

    with ThreadPoolExecutor(_workers()) as pool:
        list(pool.map(work, range(n), chunksize=256))
    return out


# scikit-learn keeps the digits as a CSV in its package data (64 pixel columns, then the label),
# which sklearn.datasets.load_digits parses with numpy. Reading that file directly gives the same
# arrays without importing sklearn (1.4 s, in every process that rebuilds the split: distill,
# export, validate); tests/test_data.py checks it against load_digits.
DIGITS_FILE = "sklearn/datasets/data/digits.csv.gz"


def _digits_csv() -> Path | None:
    """scikit-learn's digits file, found from its installed metadata (no import), or None."""
    from importlib import metadata

    try:
        found = [f for f in metadata.files("scikit-learn") or [] if str(f).replace("\\", "/") == DIGITS_FILE]
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(found[0].locate())) if found else None
    return path if path is not None and path.is_file() else None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: images [1797, 8, 8] with values 0..16 (float) and labels [1797]."""
    path = _digits_csv()
    if path is not None:
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from edgekd import optional  # not where its metadata says: let sklearn find it, or say it is missing

    optional.load("sklearn", "data.name digits needs")
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    return digits.images, digits.target.astype(np.int64)


def load_digits(image_size: int = 32) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1797 images), scaled to uint8 and upscaled; C = 1."""
    images, labels = digits_arrays()
    small = np.floor(images * 255.0 / 16.0 + 0.5).astype(np.uint8)[:, :, :, None]
    return ImageSet(resize_images(small, int(image_size)), labels, [str(i) for i in range(10)])


# ---------------------------------------------------------------- image folders


def _class_folders(root: Path) -> list[str]:
    """Class names: the sorted sub-folders, like torchvision's ImageFolder."""
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist" if not root.exists() else f"data.root {root} is not a folder")
    # Hidden folders (.ipynb_checkpoints, a cache) are not classes.
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"data.root {root} has no class folders; expected ROOT/<class>/<image files>")
    return classes


def scan_imagefolder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted sub-folders, like torchvision) and (relative path, label) per image."""
    classes = _class_folders(root)
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found, others = [], 0
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(os.path.relpath(os.path.join(dirpath, f), root))
                else:
                    others += 1
        if not found:
            what = f"only {others} non-image files" if others else "no files"
            raise DataError(
                f"class folder {root / name} has {what}; allowed image extensions: {', '.join(IMAGE_EXTENSIONS)}"
            )
        files.extend((f, label) for f in found)
    return classes, files


def _cache_key(root: Path, files: list[tuple[str, int]], image_size: int | None) -> str:
    h = hashlib.sha256()
    # Pillow's version is in the key: another libjpeg may decode the same bytes differently.
    h.update(json.dumps(["edgekd-imagefolder-v1", str(root), image_size, PIL.__version__]).encode())
    for rel, label in files:
        st = os.stat(root / rel)
        h.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _read_cache(path: Path) -> ImageSet | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return ImageSet(z["images"], z["labels"].astype(np.int64), [str(s) for s in z["class_names"]])
    except (OSError, ValueError, KeyError):
        return None  # missing or damaged cache: decode again


def _decode_all(root: Path, files: list[tuple[str, int]], image_size: int | None) -> np.ndarray:
    def decode(rel: str) -> np.ndarray:
        try:
            with Image.open(root / rel) as img:
                size = None if image_size is None else (image_size, image_size)
                return resize_array(img, size, "RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL raises all of these
            raise DataError(f"cannot decode image {root / rel}: {e}") from None

    first = decode(files[0][0])
    if image_size is None and first.shape[0] != first.shape[1]:
        raise DataError(f"images under {root} are {first.shape[1]}x{first.shape[0]}, not square; set data.image_size")
    out = np.empty((len(files),) + first.shape, dtype=np.uint8)
    out[0] = first

    def work(i: int) -> None:
        arr = decode(files[i][0])
        if arr.shape != first.shape:
            raise DataError(
                f"images under {root} differ in size ({first.shape[1]}x{first.shape[0]} in {files[0][0]}, "
                f"{arr.shape[1]}x{arr.shape[0]} in {files[i][0]}); set data.image_size to resize them"
            )
        out[i] = arr

    # PIL releases the GIL while decoding, so threads scale across cores.
    with ThreadPoolExecutor(_workers()) as pool:
        list(pool.map(work, range(1, len(files)), chunksize=256))
    return out


def load_imagefolder(root: str | Path, image_size: int | None = None, cache_dir: str | Path | None = None) -> ImageSet:
    """ROOT/<class>/<image>: RGB uint8, labels in sorted class-folder order; optional .npz cache."""
    root = Path(root).absolute()
    classes, files = scan_imagefolder(root)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"imagefolder-{_cache_key(root, files, image_size)}.npz"
        cached = _read_cache(cache_path)
        if cached is not None:
            return cached
    labels = np.array([label for _, label in files], dtype=np.int64)
    result = ImageSet(_decode_all(root, files, image_size), labels, classes)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, images=result.images, labels=labels, class_names=np.array(classes, dtype=str))
        atomic_write_bytes(cache_path, buf.getvalue())
    return result


# ---------------------------------------------------------------- by name

SOURCE_NAMES = ("digits", "cifar10", "cifar100", "imagefolder")


@dataclass(frozen=True)
class SourceShape:
    """What the nets need to know of a source: classes, channels and side, as load_source will give them."""

    num_classes: int
    in_channels: int
    image_size: int


def first_image_side(root: Path, classes: list[str]) -> int:
    """The width of the first image of the first class (PIL reads the header only, not the pixels)."""
    for dirpath, dirnames, filenames in os.walk(root / classes[0], followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                try:
                    with Image.open(os.path.join(dirpath, f)) as img:
                        return int(img.size[0])
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                    raise DataError(f"cannot decode image {os.path.join(dirpath, f)}: {e}") from None
    raise DataError(f"class folder {root / classes[0]} has no image files; allowed image extensions: "
                    f"{', '.join(IMAGE_EXTENSIONS)}")


def source_shape(name: str, root: str | Path | None, image_size: int | None) -> SourceShape:
    """load_source's classes, channels and side without decoding the images, so that the nets and
    their checkpoints can be checked before the data is read (minutes on a real data set). Nothing is
    downloaded: a CIFAR source's shape is known without its files."""
    if name not in SOURCE_NAMES:
        raise DataError(f"unknown data.name {name!r}; allowed: {', '.join(SOURCE_NAMES)}")
    if name == "digits":
        return SourceShape(10, 1, 32 if image_size is None else int(image_size))
    if root is None:
        raise DataError(f"data.root is required for {name}")
    if name == "imagefolder":
        root = Path(root).absolute()
        classes = _class_folders(root)
        return SourceShape(len(classes), 3, int(image_size) if image_size is not None else first_image_side(root, classes))
    return SourceShape(cifar_classes(name), 3, 32 if image_size is None else int(image_size))


def load_source(
    name: str, root: str | Path | None, image_size: int | None, download: bool = False, cache_dir: str | Path | None = None
) -> ImageSet:
    """The full training-side image set of a named source (val/tune are carved from it, never from a test set)."""
    if name not in SOURCE_NAMES:
        raise DataError(f"unknown data.name {name!r}; allowed: {', '.join(SOURCE_NAMES)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"data.image_size must be a positive integer or null, got {image_size!r}")
    if name == "digits":
        return load_digits(32 if image_size is None else image_size)
    if root is None:
        raise DataError(f"data.root is required for {name}")
    if name == "imagefolder":
        return load_imagefolder(root, image_size, cache_dir)
    data = load_cifar(root, name, train=True, download=download)
    if image_size is not None:
        data.images = resize_images(data.images, image_size)
    return data
