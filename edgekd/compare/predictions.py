"""Per-run prediction files: what of a comparison survives the loss of its run folders. Torch-free.

OUT/predictions/<variant-slug>-s<seed>.npz holds the labels and the student's logits on
the evaluation split (and on the tune split when the recipe has one); the .json beside it
holds the run's summary.json, its recipe and digest, the evaluation split and the
teacher's metrics there. Both are small enough to commit to git, and every statistic of
the comparison is computed from them, so a reused run gives the same numbers as a fresh one.

Storage: float16 log-probabilities (log-softmax, valid logits: softmax gives the same
probabilities back). 2 bytes a value: 20,000 images x 10 classes is 0.4 MB, half of
float32. Log-probabilities are near 0 where it matters, so float16's relative error
(<= 2^-11) moves a probability p by at most ~p * |log p| * 2^-11 <= 2e-4, far below the
ECE noise floor of any split (tests/test_compare_stats.py measures the effect). Near-ties
of the top two classes closer than that can flip the argmax of a handful of images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import calibration, files
from edgekd.contracts import SplitInfo
from edgekd.errors import RecipeError

FORMAT = 1
FOLDER = "predictions"
_F16_MIN = float(np.finfo(np.float16).min)


def paths(out: Path, slug: str, seed: int) -> tuple[Path, Path]:
    folder, name = out / FOLDER, f"{slug}-s{seed}"  # not with_suffix: a slug may hold dots (optim.lr=0.1)
    return folder / f"{name}.npz", folder / f"{name}.json"


def compact_logits(logits: np.ndarray) -> np.ndarray:
    """float16 log-softmax of logits (clipped to float16's range, so always finite)."""
    logp = calibration.log_softmax(calibration.check_logits(logits))
    return np.clip(logp, _F16_MIN, 0.0).astype(np.float16)


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.astype(np.min_scalar_type(int(y.max())) if len(y) else np.uint8)


def split_images_digest(split_info: SplitInfo, which: str) -> str:
    """Short sha256 of the image indices of one split of a run (rebuilt from its split_info,
    without the data): two runs with the same digest were evaluated on the same images."""
    from edgekd.data.split import make_split

    split = make_split(split_info.num_images, **split_info.carving())
    idx = np.asarray(split[which], dtype="<i8")
    # Not the data's root: the same images under another folder (another session's machine) still pair.
    digest = hashlib.sha256(f"{split_info.name}:{split_info.num_images}:{which}:".encode() + idx.tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Prediction:
    meta: dict[str, Any]
    labels: np.ndarray
    logits: np.ndarray               # float64 log-probabilities on the evaluation split
    tune_labels: np.ndarray | None
    tune_logits: np.ndarray | None


def save(out: Path, slug: str, seed: int, meta: dict[str, Any], labels, logits, tune_labels=None, tune_logits=None) -> None:
    """The .npz first, then the .json: a prediction counts only once its .json is there."""
    npz_path, json_path = paths(out, slug, seed)
    arrays = {"labels": _labels(labels), "student_logits": compact_logits(logits)}
    if tune_logits is not None:
        arrays.update(tune_labels=_labels(tune_labels), tune_student_logits=compact_logits(tune_logits))
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    files.write_npz(npz_path, **arrays)
    files.write_json(json_path, {"format": FORMAT, "logits": "float16 log-softmax", **meta})


def read_meta(out: Path, slug: str, seed: int) -> dict[str, Any] | None:
    """The .json of a prediction, or None when there is none (or no .npz beside it)."""
    npz_path, json_path = paths(out, slug, seed)
    if not json_path.is_file() or not npz_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise RecipeError(f"{json_path} cannot be read ({e}); remove it to evaluate the run again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RecipeError(f"{json_path} is not an edgekd prediction file of format {FORMAT}; remove it")
    return meta


def load(out: Path, slug: str, seed: int) -> Prediction:
    npz_path, json_path = paths(out, slug, seed)
    meta = read_meta(out, slug, seed)
    if meta is None:
        raise RecipeError(f"{json_path} or {npz_path.name} is missing")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise RecipeError(f"{npz_path} cannot be read ({e}); remove it and its .json to evaluate the run again") from None
    tune = "tune_student_logits" in arrays
    return Prediction(
        meta, arrays["labels"].astype(np.int64), arrays["student_logits"].astype(np.float64),
        arrays["tune_labels"].astype(np.int64) if tune else None,
        arrays["tune_student_logits"].astype(np.float64) if tune else None,
    )
