"""StudentCheckpoint: student.pt, the finished student a run hands to export.

A torch file: this contract holds plain data (the weights are an opaque name -> tensor mapping)
and gives to_dict/from_dict; edgekd.training.checkpoint does the torch.save / torch.load around them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from edgekd.contracts.errors import StudentCheckpointError, require_keys
from edgekd.contracts.split_info import SplitInfo

_COMPLETE = "re-run edgekd distill to write a complete student.pt"


@dataclass(frozen=True)
class StudentCheckpoint:
    FORMAT = "edgekd.student/1"
    FORMAT_KEY = "format"
    # Export cannot rebuild the net, feed it or name its data without these.
    REQUIRED = ("arch", "num_classes", "in_channels", "image_size", "state_dict", "preprocessing", "class_names",
                "split")

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    # The float net's weights, by parameter name (tensors: == compares every other field, not these).
    state_dict: Mapping[str, Any] = field(repr=False, compare=False)
    preprocessing: dict[str, Any]  # how an image becomes the input (validate's preprocessing_spec)
    class_names: list[str]
    split: SplitInfo
    # Format-1 files written before these keys existed lack them; they stay format 1 because export
    # does without them: no options, trained in float, the recipe's defaults, no figures.
    options: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # train.quantize: flavour, state
    recipe: dict[str, Any] = field(default_factory=dict, repr=False)  # the resolved recipe the run trained
    recipe_hash: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the student's final figures on the eval split
    edgekd_version: str | None = None

    @property
    def quantized_flavour(self) -> str | None:
        """The INT8 flavour a train.quantize run learned its ranges for (None: trained in float)."""
        return (self.quantize or {}).get("flavour")

    @property
    def recipe_name(self) -> str | None:
        return self.recipe.get("name")

    def to_dict(self) -> dict[str, Any]:
        """What torch.save writes, in the key order edgekd has always written."""
        return {self.FORMAT_KEY: self.FORMAT, "arch": self.arch, "options": dict(self.options),
                "num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size,
                "state_dict": self.state_dict, "quantize": self.quantize, "preprocessing": self.preprocessing,
                "class_names": list(self.class_names), "split": self.split.to_dict(), "recipe": self.recipe,
                "recipe_hash": self.recipe_hash, "metrics": self.metrics, "edgekd_version": self.edgekd_version}

    @classmethod
    def is_one(cls, raw: Mapping[str, Any]) -> bool:
        """Whether a loaded torch file says it is a student checkpoint (of any version)."""
        return str(raw.get(cls.FORMAT_KEY, "")).startswith(cls.FORMAT.rsplit("/", 1)[0] + "/")

    @classmethod
    def weights_in(cls, raw: Mapping[str, Any], source: str = "student checkpoint") -> Any:
        """Only the weights of a student checkpoint (None if it has none): what starting another run
        from it needs, without the rest that export requires."""
        cls._check_format(raw, source)
        return raw.get("state_dict")

    @classmethod
    def _check_format(cls, raw: Mapping[str, Any], source: str) -> None:
        found = raw.get(cls.FORMAT_KEY)
        if found == cls.FORMAT:
            return
        if cls.is_one(raw):
            raise StudentCheckpointError(f"{source} is an edgekd student checkpoint of format {found!r}; this edgekd "
                                         f"reads {cls.FORMAT!r}: export it with the edgekd that trained it, or "
                                         f"re-run edgekd distill")
        raise StudentCheckpointError(f"{source} is not an edgekd student checkpoint (format {found!r}, expected "
                                     f"{cls.FORMAT!r})")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "student checkpoint") -> "StudentCheckpoint":
        cls._check_format(raw, source)
        require_keys(raw, cls.REQUIRED, StudentCheckpointError, f"{source} lacks {{missing}}; {_COMPLETE}")
        return cls(
            arch=raw["arch"], num_classes=int(raw["num_classes"]), in_channels=int(raw["in_channels"]),
            image_size=int(raw["image_size"]), state_dict=raw["state_dict"], preprocessing=raw["preprocessing"],
            class_names=list(raw["class_names"]),
            split=SplitInfo.from_dict(raw["split"], f"{source}'s split"),
            options=dict(raw.get("options") or {}), quantize=raw.get("quantize"), recipe=raw.get("recipe") or {},
            recipe_hash=raw.get("recipe_hash"), metrics=dict(raw.get("metrics") or {}),
            edgekd_version=raw.get("edgekd_version"),
        )  # fmt: skip
