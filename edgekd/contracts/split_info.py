"""SplitInfo: how a run carved its data into train/val/tune/test, enough to rebuild any split.

Built once by edgekd.data.build_data; written to split.json, into student.pt and summary.json,
and into the bundle's manifest.json (`data`); read by export, validate, the INT8 search and
compare to rebuild a split and check its fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from edgekd.contracts.errors import SplitInfoError, require_keys

# The keys streamed data adds (image files decoded per batch); absent for decoded sources, and so
# left out of to_dict when None, which keeps a split written before streaming existed unchanged.
STREAM_KEYS = ("storage", "resize_mode", "crop_pct")


@dataclass(frozen=True)
class SplitInfo:
    # Version 1 is every split edgekd has written, none of which records its version: it lives inside
    # versioned files (student.pt, manifest.json) and inside committed comparison results that must
    # regenerate byte for byte, so to_dict writes FORMAT only once there is a version 2 to tell apart.
    FORMAT = "edgekd.split/1"
    FORMAT_KEY = "format"
    # A split cannot be rebuilt without its source; the rest has the defaults build_data's arguments have.
    REQUIRED = ("name",)

    name: str  # the data source (digits, cifar10, imagefolder, ...)
    root: str | None  # its absolute folder (None for digits)
    image_size: int | None  # the decoded side: rebuilding with it reproduces the arrays
    val_fraction: float | None = None
    val_size: int | None = None
    tune_fraction: float = 0.0
    tune_size: int | None = None
    test_fraction: float = 0.0
    test_size: int | None = None
    subset: int | None = None
    seed: int = 0
    num_images: int | None = None  # how many the source held (a comparison pairs splits by it)
    sizes: dict[str, int] = field(default_factory=dict)  # images per split (test only when it has some)
    fingerprint: str | None = None  # of the split's indices: a changed data folder is refused
    storage: str | None = None  # "stream" for image files decoded per batch
    resize_mode: str | None = None  # streamed: how evaluation resizes ("centre_crop")
    crop_pct: float | None = None  # streamed: the share of the resized image evaluation keeps
    normalization: str | None = None  # where mean/std came from when a net's own (data.normalize)

    def size(self, which: str) -> int:
        """How many images split `which` holds (0 when it has none)."""
        return int(self.sizes.get(which) or 0)

    def carving(self) -> dict[str, Any]:
        """make_split's arguments besides the image count: the same ones carve the same split again."""
        return {"val_fraction": self.val_fraction, "val_size": self.val_size, "tune_fraction": self.tune_fraction,
                "tune_size": self.tune_size, "test_fraction": self.test_fraction, "test_size": self.test_size,
                "subset": self.subset, "seed": self.seed}

    @property
    def streamed(self) -> bool:
        return self.storage == "stream"

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in (*STREAM_KEYS, "normalization"):
            if out[key] is None:
                del out[key]
        out["sizes"] = dict(self.sizes)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "split_info") -> "SplitInfo":
        if not isinstance(raw, Mapping):
            raise SplitInfoError(f"{source} is a {type(raw).__name__}, not a recorded data split (a mapping)")
        found = raw.get(cls.FORMAT_KEY, cls.FORMAT)
        if found != cls.FORMAT:
            raise SplitInfoError(f"{source} is a data split of format {found!r}; this edgekd reads {cls.FORMAT!r}")
        require_keys(raw, cls.REQUIRED, SplitInfoError, f"{source} lacks {{missing}}; it must come from build_data")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["sizes"] = dict(values.get("sizes") or {})
        return cls(**{"root": None, "image_size": None, **values})

    @classmethod
    def read(cls, path: str | Path) -> "SplitInfo":
        import json

        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), str(path))

    def write(self, path: str | Path) -> None:
        from edgekd.files import write_json

        write_json(path, self.to_dict())
