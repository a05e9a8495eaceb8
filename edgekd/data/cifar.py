"""The official CIFAR-10/100 python batches -> ImageSet, read with a restricted unpickler. Torch-free:
torchvision is imported only inside the explicit download branch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from edgekd.data.images import ImageSet
from edgekd.errors import DataError, first_line

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    # Old pickles name numpy.core.*, new ones numpy._core.*: map both to the real
    # function instead of importing the deprecated numpy.core shim.
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


_SAFE_BUILTINS = {"dict": dict, "list": list, "str": str, "bytes": bytes, "int": int}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches contain; a pickle can otherwise run any code."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise DataError(f"refusing to unpickle {module}.{name} from {self._path}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # any malformed pickle: EOFError, UnpicklingError, TypeError...
        raise DataError(f"{path} is not a CIFAR python batch: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR python batch: expected a dict, got {type(obj).__name__}")
    return obj


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data, labels = d.get(b"data"), d.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} is not a CIFAR python batch: b'data' must be uint8 [N, 3072]")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataError(f"{path} is not a CIFAR python batch: {label_key!r} must hold {len(data)} labels in [0, {num_classes})")
    # Rows are 1024 R, 1024 G, 1024 B values, each a row-major 32x32 plane.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


_CIFAR = {
    # name: (folder, train files, test files, meta file, label key, names key, classes, title, archive)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", b"labels", b"label_names", 10, "CIFAR-10", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names", 100,
                 "CIFAR-100", "cifar-100-python.tar.gz"),
}  # fmt: skip


def _download_cifar(root: Path, name: str, train: bool) -> None:
    folder, title, archive = _CIFAR[name][0], _CIFAR[name][7], _CIFAR[name][8]
    manual = f"download {archive} from {CIFAR_URL} and extract it so that {root / folder} exists"
    try:
        import torchvision.datasets as tvd  # only to fetch the files; we read them ourselves
    except ImportError as e:
        raise DataError(f"data.download needs torchvision (pip install edgekd[train]); or {manual}") from e
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    try:
        cls(str(root), train=train, download=True)
    except Exception as e:  # URLError, timeouts, bad checksum, disk full...
        msg = first_line(e)
        raise DataError(f"downloading {title} to {root} failed ({msg}); {manual}") from None


def load_cifar(root: str | Path, name: str = "cifar10", train: bool = True, download: bool = False) -> ImageSet:
    """The official CIFAR python batches under ROOT, read with a restricted unpickler."""
    if name not in _CIFAR:
        raise DataError(f"unknown CIFAR dataset {name!r}; allowed: cifar10, cifar100")
    folder, train_files, test_files, meta, label_key, names_key, num_classes, title, _ = _CIFAR[name]
    root = Path(root).absolute()
    base = root / folder
    needed = [meta] + (train_files if train else test_files)
    if not all((base / f).is_file() for f in needed):
        if not download:
            raise DataError(
                f"{title} not found under {base}; put the python version there (from {CIFAR_URL}) "
                f"or set data.download: true"
            )
        _download_cifar(root, name, train)
        if not all((base / f).is_file() for f in needed):
            raise DataError(f"download of {title} finished but {base} lacks {', '.join(needed)}")
    names = _unpickle(base / meta).get(names_key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DataError(f"{base / meta} is not CIFAR metadata: {names_key!r} must list {num_classes} class names")
    class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    parts = [_read_batch(base / f, label_key, num_classes) for f in (train_files if train else test_files)]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageSet(images, labels, class_names)


def cifar_classes(name: str) -> int:
    return _CIFAR[name][6]
