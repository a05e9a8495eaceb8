"""The recipe: one YAML file that says what to distill, how, and for how long.

This module is the schema (pydantic models) and the entry points that build one:
`load_recipe` (a file), `build_recipe` (a mapping), both with `--set` overrides. The
schema is strict: an unknown key (a typo), a wrong type or an out-of-range value is a
RecipeError naming the key path and what is allowed (edgekd/recipe_errors.py). The
`distill:` section takes only its method's keys (edgekd/training/method_settings.py).

Elsewhere: reading the YAML and applying overrides (edgekd/recipe_io.py, re-exported
here), and reading back the recipe a run saved and diffing it (edgekd/saved_recipe.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from edgekd.data.crop import CROP_RATIO, CROP_SCALE, crop_range_problem
from edgekd.errors import RecipeError
from edgekd.export_defaults import DEFAULT_SEARCH_BUDGET_S, MAX_SEARCH_BUDGET_S
from edgekd.recipe_errors import format_error
# Re-exported: `from edgekd.recipe import apply_overrides` and the rest keep working.
from edgekd.recipe_io import Overrides, apply_overrides, parse_override, read_yaml_mapping  # noqa: F401
from edgekd.training.method_settings import BDKDSettings, DistillSettings, with_method


def _auto_or_bool(value: Any) -> Any:
    # Checked before pydantic's own bool parsing, which would also take "yes", "1", "on".
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"must be auto, true or false, got {value!r}")


def _yaml_off(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as false: `amp: off` and `--set train.amp=off` mean "off".
    return "off" if value is False else value


# A speed setting that `auto` resolves from the device and the run (edgekd.training.setup,
# resolve_speed_settings); true / false force it.
AutoBool = Annotated[Union[Literal["auto"], bool], BeforeValidator(_auto_or_bool)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    # pad: CIFAR-style zero-padded random crop (crop_padding pixels each side), for small
    # images. resized: torchvision-style random-resized crop (a random share crop_scale of
    # the area at aspect ratio crop_ratio, resized back to the image size), for photos.
    crop: Literal["pad", "resized"] = "pad"
    crop_padding: int = Field(4, ge=0, le=16)
    crop_scale: tuple[float, float] = CROP_SCALE
    crop_ratio: tuple[float, float] = CROP_RATIO
    hflip: bool = True

    @model_validator(mode="after")
    def _crop_settings(self) -> "AugmentConfig":
        problem = crop_range_problem(self.crop_scale, self.crop_ratio)
        if problem:
            raise ValueError(problem)
        # A value the chosen crop never reads would be a dead setting: refuse it. Compared
        # with the defaults (not "was it written") so saved recipes, which spell out every
        # key, load again.
        defaults = AugmentConfig.model_fields
        unused = ("crop_scale", "crop_ratio") if self.crop == "pad" else ("crop_padding",)
        for key in unused:
            if getattr(self, key) != defaults[key].default:
                raise ValueError(f"{key} does not apply to crop: {self.crop}; remove it "
                                 f"(crop_padding is for crop: pad, crop_scale and crop_ratio for crop: resized)")
        return self


class DataConfig(_Strict):
    name: Literal["digits", "cifar10", "cifar100", "imagefolder"]
    root: Optional[str] = None
    download: bool = False
    image_size: Optional[int] = Field(None, ge=8, le=1024)
    val_fraction: Optional[float] = Field(0.1, gt=0, lt=1)
    val_size: Optional[int] = Field(None, ge=1, description="takes precedence over val_fraction")
    tune_fraction: float = Field(0.0, ge=0, lt=1)
    tune_size: Optional[int] = Field(None, ge=0, description="takes precedence over tune_fraction")
    # Carved after val and tune with the same seed; never trained on, never used to choose
    # anything: `edgekd compare --eval-split test` reports on it.
    test_fraction: float = Field(0.0, ge=0, lt=1)
    test_size: Optional[int] = Field(None, ge=0, description="takes precedence over test_fraction")
    subset: Optional[int] = Field(None, ge=1, description="cap on the number of training images")
    split_seed: int = Field(0, ge=0)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    augment: AugmentConfig = AugmentConfig()
    cache_dir: Optional[str] = None
    # Where training batches come from: `device` keeps the uint8 images in device memory
    # and augments there; `host` keeps them in host memory behind a torch DataLoader
    # (workers, pinned memory, prefetch); `auto` picks device when they fit.
    loader: Literal["auto", "device", "host"] = "auto"
    workers: int = Field(2, ge=0, description="DataLoader worker processes for loader: host and storage: stream")
    # Where an image folder's training images are kept: `memory` decodes them all before training;
    # `stream` keeps the file names and decodes each batch in `workers` processes, cropping from the
    # full-resolution file (evaluation: resize + centre crop); `auto` streams when the decoded images
    # would not fit in half the memory available. Other sources are always in memory.
    storage: Literal["auto", "memory", "stream"] = "auto"
    # Whose mean/std the inputs are normalised with: `data` (the training images' statistics), `teacher`
    # or `student` (a timm model's pretrained_cfg: its mean, std, evaluation crop and, when
    # data.image_size is unset, its input size), or `auto`: the teacher's, else the student's, where
    # that net is a timm model loaded from a checkpoint (trained weights expect their own statistics),
    # else the data's.
    normalize: Literal["auto", "data", "teacher", "student"] = "auto"

    @model_validator(mode="after")
    def _root_needed(self) -> "DataConfig":
        if self.name == "imagefolder" and not self.root:
            raise ValueError("data.root is required when data.name is imagefolder")
        if self.storage == "stream" and self.name != "imagefolder":
            raise ValueError(f"data.storage: stream reads image files (data.name: imagefolder); {self.name} is "
                             "read into memory: set data.storage to memory or auto")
        if self.storage == "stream" and self.loader == "device":
            raise ValueError("data.storage: stream decodes files in worker processes on the host: set data.loader "
                             "to auto or host")
        return self

    def split_args(self) -> dict[str, Any]:
        """val_size/tune_size/test_size, when given, take precedence over the fractions."""
        return {
            "val_fraction": None if self.val_size is not None else (self.val_fraction or 0.1),
            "val_size": self.val_size,
            "tune_fraction": 0.0 if self.tune_size is not None else self.tune_fraction,
            "tune_size": self.tune_size,
            "test_fraction": 0.0 if self.test_size is not None else self.test_fraction,
            "test_size": self.test_size,
        }


class NetConfig(_Strict):
    arch: str
    checkpoint: Optional[str] = None
    # How `checkpoint` initialises the net (edgekd/models/pretrained.py): full loads every
    # tensor strictly; backbone loads every tensor whose name and shape fit and keeps the
    # classifier freshly initialised when the class count differs (e.g. ImageNet weights).
    init: Literal["full", "backbone"] = "full"
    # Where in `checkpoint` the weights are, for files edgekd does not recognise by itself
    # (distill/checkpoint.py WEIGHT_KEYS, models/pretrained.py select_prefix): the entry that
    # holds the state_dict (dotted for nested dicts) and the prefix of the net's tensor names.
    checkpoint_key: Optional[str] = Field(None, min_length=1)
    checkpoint_prefix: Optional[str] = Field(None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _init_needs_checkpoint(self) -> "NetConfig":
        if self.init == "backbone" and not self.checkpoint:
            raise ValueError("init: backbone needs checkpoint (the pretrained file to load)")
        for key in ("checkpoint_key", "checkpoint_prefix"):
            if getattr(self, key) is not None and not self.checkpoint:
                raise ValueError(f"{key} says where the weights are in checkpoint, which is not set")
        return self


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="epochs, or fractions of the run if all < 1")
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: Optional[float] = Field(None, gt=0)


class TrainConfig(_Strict):
    epochs: int = Field(..., ge=1)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    # Speed settings; auto picks what was measured faster on the device (distill/setup.py,
    # resolve_speed_settings; docs/performance.md, "CPU training settings"); summary.json
    # records what ran and why.
    amp: Annotated[Literal["off", "bf16", "fp16", "auto"], BeforeValidator(_yaml_off)] = "auto"
    channels_last: AutoBool = "auto"
    compile: AutoBool = "auto"
    eval_split: Literal["val", "tune"] = "val"
    # Under torchrun: convert BatchNorm to SyncBatchNorm (statistics over the global batch).
    sync_bn: bool = False
    # Evaluate both nets every N epochs (and always after the last one): evaluation
    # of a 5,000-image split costs a third of a small CPU epoch.
    eval_every: int = Field(1, ge=1)
    # On CUDA: deterministic kernels, or cuDNN benchmark mode when false (distill/setup.py,
    # apply_determinism). The CPU is deterministic either way for a fixed thread count.
    deterministic: bool = True
    # Steps whose loss or gradient is NaN/Inf that may be skipped (no update) before
    # the run stops; 0 stops at the first one.
    max_bad_steps: int = Field(0, ge=0)
    # Where each epoch's record goes besides metrics.jsonl (always written): tensorboard
    # writes event files to <run>/tensorboard/ (needs the tensorboard extra).
    log: list[Literal["tensorboard"]] = Field(default_factory=list)
    # INT8-aware training (distill/quantize.py): the student trains with the fake quantization of
    # the bundle's int8 (TensorRT) or int8_cpu (ONNX Runtime) file, and export writes that file from
    # the learned ranges. Trains in fp32, without channels_last or compile (auto resolves them off).
    quantize: Optional[Literal["int8", "int8_cpu"]] = None

    @model_validator(mode="after")
    def _quantize_trains_fp32(self) -> "TrainConfig":
        if self.quantize is None:
            return self
        if self.amp not in ("off", "auto"):
            raise ValueError(f"train.quantize trains with fake quantization in fp32, but train.amp is {self.amp}; "
                             f"set train.amp: off (or auto)")
        for key in ("channels_last", "compile"):
            if getattr(self, key) is True:
                raise ValueError(f"train.quantize trains the captured graph as it is exported, without {key}; "
                                 f"set train.{key}: false (or auto)")
        return self

    @model_validator(mode="after")
    def _device_name(self) -> "TrainConfig":
        d = self.device
        ok = d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())
        if not ok:
            raise ValueError(f"train.device '{d}' is not one of auto, cpu, cuda, cuda:N")
        return self


class ValidateConfig(_Strict):
    """Gate thresholds recorded into exported bundles; `edgekd validate` flags override them."""

    max_ece: Optional[float] = Field(None, gt=0, le=1)
    max_acc_drop: Optional[float] = Field(None, ge=0, le=1)
    min_agreement: Optional[float] = Field(None, ge=0, le=1)
    max_ece_drift: Optional[float] = Field(None, ge=0, le=1)
    # The decisions a device makes, against the FP32 ONNX file (validate/gate.py): the worst class's
    # accuracy drop, and the share of the same accept/reject decisions at confidence `threshold`.
    max_class_acc_drop: Optional[float] = Field(None, ge=0, le=1)
    threshold: Optional[float] = Field(None, gt=0, lt=1)
    min_threshold_agreement: Optional[float] = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _agreement_needs_threshold(self) -> "ValidateConfig":
        from edgekd.validation.gate import threshold_problem  # the rule validate's flags follow too

        problem = threshold_problem(self.model_dump())
        if problem:
            raise ValueError(problem)
        return self

    def thresholds(self) -> dict[str, float]:
        """The thresholds that are set, name -> value: what a gate checks (None: not checked), and the
        confidence `threshold` those decisions are made at."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ExportConfig(_Strict):
    """How `edgekd export` treats this recipe's runs; its flags override these."""

    # Search, per INT8 file, for the fastest one that passes the validate: gate (accuracy and
    # calibration, judged on the tune split): edgekd/deploy/int8_search/.
    int8_search: bool = False
    search_budget: float = Field(DEFAULT_SEARCH_BUDGET_S, gt=0, le=MAX_SEARCH_BUDGET_S,
                                 description="seconds for the whole INT8 search")


class Recipe(_Strict):
    name: Optional[str] = None
    description: Optional[str] = None
    data: DataConfig
    teacher: NetConfig
    student: NetConfig
    # The settings of the method `distill.method` names (edgekd/training/method_settings.py).
    distill: Annotated[DistillSettings, BeforeValidator(with_method)] = Field(default_factory=BDKDSettings)
    optim: OptimConfig = OptimConfig()
    teacher_optim: Optional[OptimConfig] = Field(None, description="teacher's optimizer; defaults to optim")
    train: TrainConfig
    # "validate" would shadow BaseModel.validate; the YAML key stays `validate:`.
    gate: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    export: ExportConfig = ExportConfig()

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _method_needs(self) -> "Recipe":
        if not self.distill.trains_teacher and not self.teacher.checkpoint:
            raise ValueError(f"distill.method {self.distill.method} distils from a frozen, trained teacher: "
                             f"set teacher.checkpoint")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """Stable hash of the resolved recipe (key order independent)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {format_error(e, Recipe)}") from e


def build_recipe(raw: dict[str, Any], overrides: Overrides = (), *, source: str = "recipe",
                 default_name: str | None = None) -> Recipe:
    """`raw` (a recipe mapping, changed in place) with `overrides` applied, validated; named
    `default_name` when it has no name. Errors name `source` (the file, or "recipe")."""
    recipe = validate_recipe(apply_overrides(raw, overrides), source=source)
    if recipe.name is None:
        recipe.name = default_name
    return recipe


def load_recipe(path: str | Path, overrides: Overrides = ()) -> Recipe:
    return build_recipe(read_yaml_mapping(path), overrides, source=str(path), default_name=Path(path).stem)
