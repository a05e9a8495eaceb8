"""Checkpoints: the training state (`last.pt`) and the exported student (`student.pt`).

Both are plain dicts of tensors, numbers, strings and lists, written atomically
and read with `torch.load(weights_only=True)`, so loading a checkpoint can never
run code. `student.pt` carries everything export needs: weights, architecture,
number of classes, input shape, preprocessing, class names and how the val split
was carved.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd import files
from edgekd.errors import CheckpointError, first_line

STUDENT_FORMAT = "edgekd.student/1"
TRAINING_FORMAT = "edgekd.training/1"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# How a torch.save file begins: a zip archive (the default format), or, in the legacy
# format, torch's magic number pickled with protocol 2.
_TORCH_HEADS = (b"PK\x03\x04", pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2))


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _refusal(e: pickle.UnpicklingError) -> str:
    """The line of torch's weights_only refusal that names the problem, without its
    preamble and advice (e.g. 'Trying to load unsupported GLOBAL posix.system ...')."""
    for line in str(e).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(_BOILERPLATE):
            return line[:160]
    return first_line(e, 160) if str(e).strip() else "unsafe pickle"


def safe_load(path: str | Path, what: str) -> dict[str, Any]:
    """torch.load with weights_only=True and one-line errors for every way a file can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        with path.open("rb") as f:
            head = f.read(max(len(h) for h in _TORCH_HEADS))
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read: {e.strerror or e}") from e
    if not head.startswith(_TORCH_HEADS):
        # Checked before unpickling: torch's weights_only unpickler can fail on arbitrary
        # bytes with any exception (KeyError, IndexError, ...), and a plain pickle is no checkpoint.
        raise CheckpointError(f"{what} {path} is not a file written by torch.save (a plain pickle or another format?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses globals it does not know: a pickle that would run code.
        raise CheckpointError(f"{what} {path} was refused by the safe loader (weights_only): {_refusal(e)}") from e
    except Exception as e:  # noqa: BLE001  (any failure to parse the bytes is a broken file)
        raise CheckpointError(f"{what} {path} is truncated or not a PyTorch checkpoint") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, not an edgekd checkpoint")
    return obj


def save_student(path: str | Path, payload: dict[str, Any]) -> None:
    files.torch_save({"format": STUDENT_FORMAT, **payload}, path)


def _load_format(path: str | Path, what: str, fmt: str) -> dict[str, Any]:
    ckpt = safe_load(path, f"{what} checkpoint")
    if ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not an edgekd {what} checkpoint (format {ckpt.get('format')!r}, expected {fmt!r})")
    return ckpt


def load_student(path: str | Path) -> dict[str, Any]:
    ckpt = _load_format(path, "student", STUDENT_FORMAT)
    required = ("arch", "num_classes", "in_channels", "image_size", "state_dict", "preprocessing", "class_names")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; re-run edgekd distill to write a complete student.pt")
    return ckpt


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    files.torch_save({"format": TRAINING_FORMAT, **state}, path, crash_point="checkpoint")


def load_training_state(path: str | Path) -> dict[str, Any]:
    return _load_format(path, "training", TRAINING_FORMAT)


def load_net_weights(path: str | Path, role: str = "teacher") -> dict[str, torch.Tensor]:
    """Weights for `teacher.checkpoint` / `student.checkpoint`: an edgekd student.pt, the
    net of the same role in a last.pt, or a bare state_dict (torchvision's own files)."""
    ckpt = safe_load(path, "checkpoint")
    if ckpt.get("format") == STUDENT_FORMAT:
        return ckpt["state_dict"]
    if ckpt.get("format") == TRAINING_FORMAT:
        return ckpt[role]
    if "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        return ckpt["state_dict"]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise CheckpointError(f"{path} holds no model weights (expected a state_dict or an edgekd checkpoint)")
