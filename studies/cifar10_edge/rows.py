"""The edge decision's inputs: the plan's rows by compare label, a comparison folder read and checked,
and its deployed rows' prediction files with the statistics of `edgekd compare` over them. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd import calibration
from edgekd.compare import predictions, stats
from edgekd.compare import report as report_md
from edgekd.compare.variants import parse_variants
from edgekd.errors import EdgeKDError

CE, KD, BDKD = "ce:teacher.arch=cnn_tiny:teacher.checkpoint=null", "kd:temperature=2", "bdkd"
SPLIT = "test"
FLAVOURS = ("fp32", "int8_cpu", "int8_search")


@dataclass(frozen=True)
class Labels:
    """The compare labels of the plan's rows (the selected KD* and BDKD*)."""

    ce: str = CE
    kd: str = KD
    bdkd: str = BDKD

    def rows(self) -> dict[str, str]:
        """The plan's name of each row -> its compare label."""
        return {"CE": self.ce, "CE+TS": f"{self.ce}+ts", "KD*": self.kd, "KD*+TS": f"{self.kd}+ts", "BDKD*": self.bdkd}

    def deployed(self) -> list[str]:
        """The deployed rows the decision reads (every row's three files), as `<name>@<flavour>`."""
        return [f"{name}@{flavour}" for name in self.rows() for flavour in FLAVOURS]

    def label(self, name: str) -> str:
        """`KD*+TS@int8_search` -> `kd:temperature=2+ts@int8_search`."""
        row, at, flavour = name.partition("@")
        return self.rows()[row] + at + flavour


def slug(label: str) -> str:
    base, at, flavour = label.partition("@")
    return next(v.slug for v in parse_variants([base], [flavour] if at else None) if v.label == label)


def read(folder: Path, what: str) -> dict:
    if not folder.is_dir():
        raise EdgeKDError(f"{what} {folder} is not a folder (give the folder `edgekd compare --out` wrote)")
    path = folder / "comparison.json"
    if not path.is_file():
        raise EdgeKDError(f"{path} is missing: {what} must be a finished `edgekd compare` folder")
    doc = report_md.read_comparison(path)
    if not isinstance(doc, dict) or not all(k in doc for k in ("variants", "runs", "summary", "seeds", "eval_split")):
        raise EdgeKDError(f"{path} is not a comparison.json written by `edgekd compare` (no variants, runs, summary "
                          "or seeds)")
    if doc["eval_split"] != SPLIT:
        raise EdgeKDError(f"{path} reports on the {doc['eval_split']} split; the plan decides on the {SPLIT} split")
    return doc


def runs_of(doc: dict, label: str) -> dict[int, dict]:
    return {r["seed"]: r for r in doc["runs"] if r["method"] == label}


def load(folder: Path, labels: list[str], seeds: list[int]) -> dict[tuple[str, int], predictions.Prediction]:
    """Each deployed row's prediction files for each seed, checked: the file they say, the test split,
    and per seed the same test images for every row."""
    out = {}
    for label in labels:
        name, flavour = slug(label), label.partition("@")[2]
        for s in seeds:
            p = predictions.load(folder, name, s)
            got = (p.meta.get("deployed") or {}).get("flavour")
            where = predictions.paths(folder, name, s)[1]
            if got != flavour or p.meta.get("eval_split") != SPLIT:
                raise EdgeKDError(f"{where} holds the {p.meta.get('eval_split')} split of a {got} file, not the "
                                  f"{SPLIT} split of the {flavour} file its name says")
            first = out.get((labels[0], s), p)
            if p.meta.get("eval_images_digest") != first.meta.get("eval_images_digest") \
                    or not np.array_equal(p.labels, first.labels):
                raise EdgeKDError(f"{where} was evaluated on other test images than {labels[0]!r} seed {s} (image "
                                  f"digests {p.meta.get('eval_images_digest')} and {first.meta.get('eval_images_digest')}); "
                                  "the contrasts pair images")
            out[(label, s)] = p
    return out


class Rows:
    """A folder's loaded deployed rows: (logits, labels) by (label, seed), and the bootstrap settings."""

    def __init__(self, preds: dict, seeds: list[int], replicates: int, rng_seed: int):
        self.preds, self.seeds, self.boot = preds, seeds, {"replicates": replicates, "rng_seed": rng_seed}

    def xy(self, label: str, seeds: list[int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.preds[(label, s)].logits, self.preds[(label, s)].labels) for s in seeds or self.seeds]

    def pair(self, reference: str, variant: str) -> dict:
        """variant minus reference, paired by seed and image: compare's paired bootstrap."""
        c = stats.paired_bootstrap(self.xy(reference), self.xy(variant), **self.boot)
        return {"variant": variant, "reference": reference, "seeds": self.seeds,
                **{k: c[k] for k in ("ece", "accuracy", "nll")}}

    def drift(self, first: list, second: list, seeds: list[int]) -> dict:
        """How much more `first` drifts than `second`: (before, after, labels) per seed; compare's drift_contrast."""
        return {"seeds": seeds, **stats.drift_contrast(first, second, "ece", **self.boot)}


def abs_drift(before: tuple, after: tuple) -> float:
    return abs(calibration.ece(*after) - calibration.ece(*before))
