"""The images a bundle is validated on, preprocessed once, up front. Torch-free.

--data SPEC picks them: `digits`, `imagefolder:DIR`, `cifar10:DIR`, `cifar100:DIR`
(the official TEST batch), or by default the run's own val split rebuilt from
manifest["data"] - the split the manifest's PyTorch reference was measured on.
Every source goes through the same numpy/PIL path as training
(edgekd.data.sources + edgekd.data.preprocess.normalize), with labels mapped to the
bundle's class order by class NAME.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgekd.data.preprocess import normalize
from edgekd.data.cifar import load_cifar
from edgekd.data.images import ImageSet
from edgekd.data.sources import load_digits, load_imagefolder, resize_images
from edgekd.data.files import scan_files
from edgekd.data.split import load_split_images
from edgekd.errors import DataError
from edgekd.validation.bundle import Bundle

SPEC_HELP = "digits, imagefolder:DIR, cifar10:DIR, cifar100:DIR, or nothing for the run's val split"


@dataclass
class EvalData:
    inputs: np.ndarray  # float32 [N, C, H, W], exactly what the model is fed
    labels: np.ndarray  # int64 [N], in the bundle's class order
    spec: str  # what the user asked for, or "val split of <source>"
    classes: list[str]  # bundle class names present in the data
    is_reference: bool  # the split the manifest's reference metrics were measured on

    @property
    def n(self) -> int:
        return len(self.labels)


def load_eval_data(spec: str | None, bundle: Bundle) -> EvalData:
    """Load, map labels to the bundle's classes, and preprocess (resize, channels, normalize)."""
    if spec is None:
        images, spec_text = _reference_split(bundle), f"val split of {bundle.manifest.data.name}"
    else:
        images, spec_text = _from_spec(spec, bundle), spec
    labels, present = map_labels(images, bundle.class_names, spec_text)
    pixels = to_channels(resize_images(images.images, bundle.image_size), bundle.channels)
    pre = bundle.preprocessing
    return EvalData(normalize(pixels, pre["mean"], pre["std"]), labels, spec_text, present, spec is None)


def _from_spec(spec: str, bundle: Bundle) -> ImageSet:
    kind, sep, arg = spec.partition(":")
    if kind == "digits" and not sep:
        return load_digits(bundle.image_size)
    if kind in ("imagefolder", "cifar10", "cifar100") and arg:
        root = Path(arg).expanduser()
        if kind == "imagefolder":
            check_folder_classes(root, bundle.class_names)  # before decoding thousands of images
            if bundle.preprocessing.get("resize_mode") == "centre_crop":  # trained on streamed files
                return scan_files(root).decode(bundle.preprocessing)
            return load_imagefolder(root, bundle.image_size)
        return load_cifar(root, kind, train=False)  # the official test batch: never seen in training
    raise DataError(f"unknown --data {spec!r}; allowed: {SPEC_HELP}")


def _reference_split(bundle: Bundle) -> ImageSet:
    info = bundle.manifest.data
    name, root = info.name, info.root
    if name != "digits" and (root is None or not Path(root).exists()):
        raise DataError(
            f"the run's {name} data is not at {root} on this machine, so its val split cannot be rebuilt; "
            f"pass --data ({SPEC_HELP})"
        )
    images = load_split_images(info, "val")  # refuses a split whose fingerprint differs
    expected = info.sizes.get("val", bundle.reference.get("n"))
    if expected is not None and len(images) != expected:
        raise DataError(f"the rebuilt val split has {len(images)} images but the bundle was measured on {expected}; "
                        f"the data under {root} changed: pass --data to validate on it anyway")
    return images


def check_folder_classes(root: Path, bundle_classes: list[str]) -> None:
    """ROOT/<class>/ names must be bundle classes (a subset is fine): else name the extras."""
    if not root.is_dir():
        raise DataError(f"imagefolder {root} does not exist" if not root.exists() else f"imagefolder {root} is not a folder")
    # Same rule as sources.scan_imagefolder: hidden folders are not classes.
    folders = {e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")}
    _check_names(folders, bundle_classes, f"imagefolder {root}")


def _check_names(found: set[str], bundle_classes: list[str], where: str) -> None:
    extra = sorted(found - set(bundle_classes))
    if extra:
        missing = [c for c in bundle_classes if c not in found]
        raise DataError(
            f"{where} has classes the bundle does not know: {_names(extra)}"
            + (f" (bundle classes missing from it: {_names(missing)})" if missing else "")
            + f"; the bundle's classes are {_names(bundle_classes)}"
        )


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def map_labels(images: ImageSet, bundle_classes: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    """Labels re-indexed by class name into the bundle's order; the bundle classes present."""
    _check_names(set(images.class_names), bundle_classes, where)
    if len(images) == 0:
        raise DataError(f"{where} has no images")
    position = {name: i for i, name in enumerate(bundle_classes)}
    lookup = np.array([position[name] for name in images.class_names], dtype=np.int64)
    labels = lookup[images.labels]
    present = [bundle_classes[i] for i in np.unique(labels)]
    return labels, present


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 NHWC in the model's channel count, converted by PIL (L <-> RGB) like a device would."""
    if images.shape[3] == channels:
        return images
    src, dst = ("L", "RGB") if channels == 3 else ("RGB", "L")
    converted = [np.asarray(Image.fromarray(im[:, :, 0] if src == "L" else im, src).convert(dst)) for im in images]
    out = np.stack(converted)
    return out[:, :, :, None] if out.ndim == 3 else out
