"""Atomic file and folder writes, hashing. Torch-free (torch is imported lazily for torch_save).

Every run file, checkpoint, manifest, report and cache edgekd writes goes through
here (ONNX files and TensorRT engines are written by their exporters and builders,
inside a folder that atomic_dir renames into place when complete): write to a temp
file in the same folder, fsync, rename. A reader sees either the old file or the complete new one,
never half of it. Folders are built under a temp name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from edgekd import faults
from edgekd.errors import EdgeKDError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, crash_point: str | None = None) -> None:
    """Write via temp file + fsync + rename. `crash_point` names an edgekd.faults point
    hit between the fsync and the rename (the crash-safety tests kill there)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise EdgeKDError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if crash_point:
            faults.hit(crash_point)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise EdgeKDError(f"cannot write {path}: {e.strerror or e}") from e
    _fsync_dir(path.parent)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files a killed atomic_write_bytes left in folder (ours start
    with '.' and end with '.tmp'); the files they were replacing are intact."""
    gone = []
    for f in Path(folder).glob(".*.tmp"):
        if f.is_file():
            with contextlib.suppress(OSError):
                f.unlink()
                gone.append(f)
    return gone


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: a NaN or infinity is refused (Python's json would write NaN/Infinity, which
    other readers reject); a writer records None for a figure that is not finite (finite_or_none)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as e:  # a bug in the writer, not the user's input: keep the traceback
        raise ValueError(f"{path}: {e} (record None for a NaN or infinite figure)") from e
    atomic_write_text(path, text + "\n")


def finite_or_none(x: float | None) -> float | None:
    """A figure for a JSON file: None where it is missing, NaN or infinite (strict JSON has neither)."""
    return None if x is None or not math.isfinite(x) else float(x)


def write_yaml(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def torch_save(obj: Any, path: str | Path, crash_point: str | None = None) -> None:
    """torch.save through a temp file + fsync + rename."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue(), crash_point=crash_point)


def write_npz(path: str | Path, **arrays: Any) -> None:
    """np.savez_compressed through a temp file + fsync + rename."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `final`; rename it to `final` only if the block succeeds.

    On any exception the temp folder is removed and `final` is untouched.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise EdgeKDError(f"{final} already exists; choose another --out or remove it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise EdgeKDError(f"cannot write to {final.parent}: {e.strerror or e}") from e
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
