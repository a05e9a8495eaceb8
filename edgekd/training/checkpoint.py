"""Checkpoints: the training state (`last.pt`) and the exported student (`student.pt`).

Both are plain dicts of tensors, numbers, strings and lists, written atomically
and read with `torch.load(weights_only=True)`, so loading a checkpoint can never
run code. `student.pt` carries everything export needs: weights, architecture,
number of classes, input shape, preprocessing, class names and how the val split
was carved.
"""

from __future__ import annotations

import argparse
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from edgekd import files
from edgekd.contracts import StudentCheckpoint
from edgekd.errors import CheckpointError, first_line

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


# Objects other tools save beside the weights that are safe to rebuild (no code runs on load).
SAFE_EXTRA_GLOBALS = [argparse.Namespace]

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
        # torchvision's reference scripts save their argparse.Namespace beside the weights: a plain
        # attribute bag, which the safe loader may rebuild (nothing else is allowed in).
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses globals it does not know: a pickle that would run code.
        raise CheckpointError(f"{what} {path} was refused by the safe loader (weights_only): {_refusal(e)}") from e
    except Exception as e:  # noqa: BLE001  (any failure to parse the bytes is a broken file)
        raise CheckpointError(f"{what} {path} is truncated or not a PyTorch checkpoint") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, not an edgekd checkpoint")
    return obj


def save_student(path: str | Path, student: StudentCheckpoint) -> None:
    files.torch_save(student.to_dict(), path)


def _load_format(path: str | Path, what: str, fmt: str) -> dict[str, Any]:
    ckpt = safe_load(path, f"{what} checkpoint")
    if ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not an edgekd {what} checkpoint (format {ckpt.get('format')!r}, expected {fmt!r})")
    return ckpt


def load_student(path: str | Path) -> StudentCheckpoint:
    """student.pt, read safely (weights only) and checked by its contract."""
    return StudentCheckpoint.from_dict(safe_load(path, "student checkpoint"), str(path))


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    files.torch_save({"format": TRAINING_FORMAT, **state}, path, crash_point="checkpoint")


def load_training_state(path: str | Path) -> dict[str, Any]:
    return _load_format(path, "training", TRAINING_FORMAT)


# Where the checkpoint files users have keep their weights, tried in this order when the recipe
# names no key (teacher.checkpoint_key): Lightning and timm's train script ("state_dict"),
# torchvision's reference scripts ("model"), the common tutorial idiom ("model_state_dict").
WEIGHT_KEYS = ("state_dict", "model", "model_state_dict")
_KEYS_SHOWN = 8


@dataclass(frozen=True)
class NetWeights:
    """The weights read from a teacher/student checkpoint file, and where in the file they were."""

    state: dict[str, torch.Tensor]
    path: Path
    where: str  # "the file" or "its 'model' entry", for messages
    top_keys: tuple[str, ...]  # the file's top-level keys, for messages when the weights do not fit

    @property
    def foreign_entry(self) -> bool:
        """Taken from an entry of another tool's file (not a bare state_dict, not an edgekd file)."""
        return self.where.endswith("entry")

    def describe(self) -> str:
        """Where the weights came from and what else the file holds: for a one-line error."""
        keys = ", ".join(self.top_keys[:_KEYS_SHOWN]) + (", ..." if len(self.top_keys) > _KEYS_SHOWN else "")
        return f"read {self.where}" + ("" if self.where == "the file" else f" (the file's keys: {keys})")


def _is_state(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _key_list(ckpt: Mapping) -> str:
    keys = [str(k) for k in ckpt]
    return ", ".join(keys[:_KEYS_SHOWN]) + (f" (+{len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else "") \
        if keys else "none"


def _at_key(ckpt: Mapping, key: str, path: Path, role: str) -> Any:
    """ckpt[key], where a dotted key walks into nested dicts ("ema.state_dict")."""
    node: Any = ckpt
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise CheckpointError(f"{role}.checkpoint_key {key!r} is not in {path}; its top-level keys: "
                                  f"{_key_list(ckpt)}")
        node = node[part]
    if not _is_state(node):
        raise CheckpointError(f"{role}.checkpoint_key {key!r} of {path} holds a {type(node).__name__}, not a "
                              "state_dict (name -> tensor)")
    return node


def check_finite(state: Mapping[str, Any], source: str | Path) -> None:
    """A weights file with a NaN or infinite value would train (or serve) garbage: refuse it, naming the tensor."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel():
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise CheckpointError(f"checkpoint {source}: tensor '{name}' holds {bad} NaN or infinite "
                                      f"value{'s' if bad != 1 else ''} of {t.numel()}; it cannot start a net")


def read_net_weights(path: str | Path, role: str = "teacher", key: str | None = None) -> NetWeights:
    """Weights for `teacher.checkpoint` / `student.checkpoint`, with where they were found.

    Read: an edgekd student.pt, the net of the same role in an edgekd last.pt, a bare
    state_dict (torch.save(model.state_dict()): torchvision's and timm's files; timm's
    model.safetensors and pytorch_model.bin), or a dict
    holding one under WEIGHT_KEYS (Lightning, torchvision's reference scripts, timm's train
    script); `key` (the recipe's checkpoint_key) names the entry for anything else. Refused:
    no weights found (the message lists the top-level keys), a non-finite tensor (named)."""
    path = Path(path)
    if path.suffix == ".safetensors":  # timm's and Hugging Face's weights: tensors only, no pickle
        state = _read_safetensors(path)
        check_finite(state, path)
        return NetWeights(state, path, "the file", tuple(state))
    ckpt = safe_load(path, "checkpoint")
    top = tuple(str(k) for k in ckpt)
    if key is not None:
        state, where = _at_key(ckpt, key, path, role), f"its {key!r} entry"
    elif StudentCheckpoint.is_one(ckpt):
        state, where = StudentCheckpoint.weights_in(ckpt, str(path)), "its edgekd student"
    elif ckpt.get("format") == TRAINING_FORMAT:
        state, where = ckpt.get(role), f"its edgekd {role}"
    elif _is_state(ckpt):
        state, where = ckpt, "the file"
    else:
        found = next((k for k in WEIGHT_KEYS if _is_state(ckpt.get(k))), None)
        if found is None:
            raise CheckpointError(
                f"{path} holds no model weights where edgekd looks (a state_dict, or one under "
                f"{', '.join(repr(k) for k in WEIGHT_KEYS)}); its top-level keys: {_key_list(ckpt)}; name the entry "
                f"that holds them with {role}.checkpoint_key")
        state, where = ckpt[found], f"its {found!r} entry"
    if not _is_state(state):
        raise CheckpointError(f"{path} ({where}) holds no state_dict; re-run edgekd distill to write it again")
    check_finite(state, path)
    return NetWeights(dict(state), path, where, top)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file (timm's model.safetensors): name -> tensor, or one CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError(f"checkpoint {path} is a .safetensors file, which needs the safetensors package: "
                              "pip install safetensors (timm brings it)") from e
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises many types
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({type(e).__name__})") from e
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    return dict(state)


def load_net_weights(path: str | Path, role: str = "teacher", key: str | None = None) -> dict[str, torch.Tensor]:
    """read_net_weights's state_dict alone."""
    return read_net_weights(path, role, key).state
