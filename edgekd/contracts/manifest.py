"""BundleManifest: manifest.json, what `edgekd export` writes and `edgekd validate` and
`edgekd compare --deployed` read (export/README.md describes every key).

The writer (edgekd.deploy, which needs torch) and the readers (edgekd.validation, which must run
without it) share this class, so they cannot disagree. A change here changes what is on disk: keys
and values old bundles carry must keep validating, or SCHEMA_VERSION goes up (and validate refuses
the other version in one line). Its sections (model, input, files, ...) stay the JSON objects the
README documents; validate.bundle checks that they agree with each other and with the model files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from edgekd.contracts.errors import ManifestError, newer_hint
from edgekd.contracts.split_info import SplitInfo

SCHEMA_VERSION = 1
BUNDLE_KIND = "edgekd.bundle"
# The precisions a model file may have (files.<name>.precision); the ONNX file of each is model_<precision>.onnx.
PRECISIONS = ("fp32", "fp16", "int8", "int8_cpu")
# int8_cpu (model_int8_cpu.onnx) has asymmetric uint8 activations: for ONNX Runtime on CPUs.
# TensorRT rejects non-zero zero points, so there is no int8_cpu engine and neither the
# TensorRT runtime nor ONNX Runtime's TensorRT provider ever gets that file.
CPU_ONLY_PRECISIONS = ("int8_cpu",)

_VERSION_KEY, _KIND_KEY = "schema_version", "kind"
_REQUIRED = ("model", "input", "output", "preprocessing", "class_names", "data", "reference", "gate", "files")


@dataclass(frozen=True)
class BundleManifest:
    FILE = "manifest.json"

    model: dict[str, Any]  # arch, num_classes, params, options
    input: dict[str, Any]  # name, shape [batch, C, H, W], dtype, layout
    output: dict[str, Any]  # name, shape [batch, classes], dtype
    preprocessing: dict[str, Any]  # resize, interpolation, mean, std, channel_order, layout, scale, dtype
    class_names: list[str]
    data: SplitInfo  # the run's split: validate rebuilds its val split by default
    reference: dict[str, Any]  # PyTorch's figures on the val split: runtime, split, n, accuracy, ece, ...;
    # `format`: the bundle file that is the trained network (fp32; a train.quantize run's INT8 flavour),
    # absent in bundles written before it (then fp32)
    gate: dict[str, Any]  # the recipe's validate: thresholds
    files: dict[str, dict[str, Any]]  # file name -> sha256, bytes, format, precision, figures, ...
    created: str | None = None  # UTC, ISO 8601
    source: dict[str, Any] | None = None  # run, recipe, recipe_hash, student_sha256
    tools: dict[str, Any] | None = None  # the versions that wrote the bundle
    # Written only when they apply: the temperature inside every file (export --temperature), the
    # INT8 search's record, and why the bundle lacks a file it was asked for (incomplete).
    temperature: dict[str, Any] | None = None
    int8_search: dict[str, Any] | None = None
    incomplete: str | None = None

    # -- what readers ask ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.model["num_classes"])

    @property
    def channels(self) -> int:
        return int(self.input["shape"][1])

    @property
    def image_size(self) -> int:
        return int(self.input["shape"][2])

    def sections(self) -> dict[str, Any]:
        """The sections that must be JSON objects, by key (for a reader's messages)."""
        return {k: getattr(self, k) for k in ("model", "input", "output", "preprocessing", "reference", "gate", "files")}

    @property
    def temperature_value(self) -> float | None:
        return None if self.temperature is None else float(self.temperature["value"])

    @classmethod
    def describe(cls, *, arch: str, options: dict, params: int, num_classes: int, channels: int, image_size: int,
                 input_name: str, output_name: str, preprocessing: dict, class_names: list[str], run: str,
                 recipe_name: str | None, recipe_hash: str | None, student_sha256: str, data: SplitInfo,
                 reference_n: int, reference_metrics: dict[str, float], gate: dict, files: dict, tools: dict,
                 created: str, reference_file: str = "fp32", reference_model: str = "the float student"
                 ) -> "BundleManifest":
        """A new bundle's manifest from what export knows, its sections in the layout of export/README.md."""
        return cls(
            created=created,
            model={"arch": arch, "num_classes": num_classes, "params": params, "options": dict(options)},
            input={"name": input_name, "shape": ["batch", channels, image_size, image_size], "dtype": "float32",
                   "layout": "NCHW"},
            output={"name": output_name, "shape": ["batch", num_classes], "dtype": "float32"},
            preprocessing=preprocessing, class_names=list(class_names),
            source={"run": run, "recipe": recipe_name, "recipe_hash": recipe_hash, "student_sha256": student_sha256},
            data=data,
            reference={"runtime": "pytorch", "split": "val", "n": reference_n, "model": reference_model,
                       "format": reference_file, **reference_metrics},
            gate=gate, files=files, tools=tools,
        )  # fmt: skip

    @property
    def reference_format(self) -> str:
        """The format whose file is the trained network: what the others are compared with."""
        return self.reference.get("format", "fp32")

    @classmethod
    def path_in(cls, folder: str | Path) -> Path:
        return Path(folder) / cls.FILE

    @classmethod
    def is_in(cls, folder: str | Path) -> bool:
        return cls.path_in(folder).is_file()

    # -- on disk ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in the key order bundles have always had."""
        out: dict[str, Any] = {_VERSION_KEY: SCHEMA_VERSION, _KIND_KEY: BUNDLE_KIND}
        order = ("created", "model", "input", "output", "preprocessing", "class_names", "source", "data",
                 "reference", "gate", "files", "tools", "temperature", "int8_search", "incomplete")
        for name in order:
            value = getattr(self, name)
            if value is None and name not in _REQUIRED:
                continue
            out[name] = value.to_dict() if isinstance(value, SplitInfo) else value
        return out

    @classmethod
    def from_dict(cls, raw: Any, source: str = FILE) -> "BundleManifest":
        if not isinstance(raw, Mapping) or raw.get(_KIND_KEY) != BUNDLE_KIND:
            raise ManifestError(f"{source} is not an edgekd bundle manifest (kind must be {BUNDLE_KIND!r})")
        version = raw.get(_VERSION_KEY)
        if version != SCHEMA_VERSION:
            raise ManifestError(f"{source} has schema_version {version!r}; this edgekd reads schema_version "
                                f"{SCHEMA_VERSION}{newer_hint(version, SCHEMA_VERSION)}")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise ManifestError(f"{source} lacks keys: {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["data"] = SplitInfo.from_dict(raw["data"], f"{source}: data")
        return cls(**values)

    @classmethod
    def read(cls, folder: str | Path) -> "BundleManifest":
        """The manifest of the bundle in `folder`, or one ManifestError line."""
        path = cls.path_in(folder)
        if not path.is_file():
            raise ManifestError(f"{path.parent} has no {cls.FILE}; is it a bundle written by edgekd export?")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ManifestError(f"{path} is not valid JSON (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
        return cls.from_dict(raw, str(path))

    def write(self, folder: str | Path) -> Path:
        from edgekd.files import write_json

        path = self.path_in(folder)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def incomplete_reason(cls, folder: str | Path) -> str | None:
        """Why the bundle in `folder` is incomplete, or None; an unreadable manifest counts as complete
        here, so that loading it reports what is wrong with it."""
        try:
            reason = json.loads(cls.path_in(folder).read_text(encoding="utf-8")).get("incomplete")
        except (OSError, ValueError, AttributeError):
            return None
        return str(reason) if reason else None

    # -- read as the JSON object -----------------------------------------------------------------
    # edgekd.export returns a Bundle whose .manifest users index as the JSON they know from
    # export/README.md (bundle.manifest["files"]); these keep that working on the typed manifest.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()
