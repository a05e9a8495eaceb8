"""The recipe: one YAML file that says what to distill, how, and for how long.

Loading is `yaml.safe_load` only, so a recipe can never execute code. The schema
is strict: an unknown key (a typo), a wrong type or an out-of-range value is a
RecipeError naming the key path and what is allowed. `--set a.b=value`
overrides are parsed as YAML scalars and validated by the same schema. The
`distill:` section takes only its method's keys (edgekd/training/method_settings.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator

from edgekd.data.crop import CROP_RATIO, CROP_SCALE, crop_range_problem
from edgekd.training.method_settings import (METHOD_SETTINGS, BDKDSettings, DistillSettings, not_keys_of, own_keys_only,
                                            unknown_method, with_method)
from edgekd.errors import RecipeError
from edgekd.export_defaults import DEFAULT_SEARCH_BUDGET_S, MAX_SEARCH_BUDGET_S


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
    # calibration, judged on the tune split): edgekd/deploy/int8_search.py.
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


def _format_error(err: ValidationError) -> str:
    """One line for the first problem, naming the key path and what is allowed. An unknown
    key comes first: a typo ('epocs') also makes the real key look missing."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    if e["loc"][:1] == ("distill",) and (problem := _distill_problem(e, errors)):
        return problem
    loc = ".".join(str(p) for p in _without_method_tag(e["loc"]) if not str(p).startswith("function-after"))
    kind = e["type"]
    msg = e["msg"]
    if kind == "extra_forbidden":
        return f"unknown key '{loc}' (a typo?); allowed here: {_allowed_keys(e['loc'])}"
    if kind == "missing":
        return f"missing required key '{loc}'"
    if kind == "literal_error":
        return f"{loc}: {e.get('input')!r} is not allowed; {msg.lower()}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return msg if not loc else f"{loc}: {msg}"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc}: {msg.lower()}{got_s}"


def _distill_problem(e: dict[str, Any], errors: list[dict[str, Any]]) -> str | None:
    """The `distill:` section's own problems: no such method, or keys its method does not take (all
    of them at once: a recipe switched to another method by hand may hold several)."""
    loc = e["loc"]
    if e["type"] == "union_tag_invalid":
        return f"distill.method: {unknown_method(e['input'].get('method'))}"
    if e["type"] in ("union_tag_not_found", "model_attributes_type"):
        return f"distill: must be a section (method and its keys), got {e['input']!r}"
    if e["type"] == "extra_forbidden" and len(loc) == 3 and loc[1] in METHOD_SETTINGS:
        keys = [x["loc"][2] for x in errors if x["type"] == "extra_forbidden" and x["loc"][:2] == loc[:2]]
        return not_keys_of(loc[1], keys)
    return None


def _without_method_tag(loc: tuple) -> tuple:
    # pydantic names the method in the path (distill.dml.temperature); the recipe's key is distill.temperature.
    if len(loc) > 1 and loc[0] == "distill" and loc[1] in METHOD_SETTINGS:
        return (loc[0], *loc[2:])
    return loc


def _allowed_keys(loc: tuple) -> str:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) or next(
            (f for f in model.model_fields.values() if f.alias == str(part)), None)  # validate: is `gate`
        if field is None:
            break
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
    return ", ".join(model.model_fields)


# What `--set` takes on the command line (KEY=VALUE strings, values parsed as YAML)
# and what edgekd.distill takes from Python (those strings, or {dotted key: value}).
Overrides = Union[Sequence[str], Mapping[str, Any]]


def _key_path(key: Any, label: str) -> list[str]:
    if not isinstance(key, str) or not key.strip() or any(not p for p in key.strip().split(".")):
        raise RecipeError(f"{label}: KEY must be a dotted path like optim.lr")
    return key.strip().split(".")


def parse_override(item: str) -> tuple[list[str], Any]:
    if not isinstance(item, str):
        raise RecipeError(f"override {item!r} is not a KEY=VALUE string; pass ['train.epochs=5'] or {{'train.epochs': 5}}")
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = item.split("=", 1)
    path = _key_path(key, f"--set {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _override_items(overrides: Overrides) -> list[tuple[str, list[str], Any]]:
    """(how an error names it, key path, value) per override, in order."""
    if isinstance(overrides, Mapping):
        return [(f"override {k!r}", _key_path(k, f"override {k!r}"), v) for k, v in overrides.items()]
    if isinstance(overrides, str):  # iterating it would give one override per character
        raise RecipeError(f"overrides {overrides!r} is one string; pass a list ['{overrides}'] or a dict")
    return [(f"--set {item!r}", *parse_override(item)) for item in overrides]


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Set each dotted key in `raw` (sections are created as needed); values from
    KEY=VALUE strings are parsed as YAML scalars, values of a mapping are used as they are.
    An override of distill.method switches methods (see _switch_method)."""
    items = _override_items(overrides)
    method_before = _distill_method(raw)
    for label, path, value in items:
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"{label}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    _switch_method(raw, method_before, {tuple(path) for _, path, _ in items})
    return raw


def _distill_method(raw: dict[str, Any]) -> Any:
    section = raw.get("distill")
    return with_method(section).get("method") if isinstance(section, dict) else None


def _switch_method(raw: dict[str, Any], method_before: Any, overridden: set[tuple[str, ...]]) -> None:
    """Overriding distill.method trains another method with the same recipe (`--set distill.method=dml`,
    compare's variants): the recipe's distill keys were written for its own method, so those the new
    method does not take are left out. Keys the overrides set stay, to be refused if it does not take them."""
    method = _distill_method(raw)
    if method == method_before or method not in METHOD_SETTINGS or ("distill",) in overridden:
        return
    takes = METHOD_SETTINGS[method].model_fields
    raw["distill"] = {k: v for k, v in raw["distill"].items() if k in takes or ("distill", k) in overridden}


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} cannot be read as UTF-8 text: {e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise RecipeError(f"recipe {path} is not valid YAML{where}: {problem}") from e
    if raw is None:
        raise RecipeError(f"recipe {path} is empty; it needs data, teacher, student and train sections")
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections (data, teacher, ...), not a {type(raw).__name__}")
    return raw


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {_format_error(e)}") from e


# The sections `edgekd export` reads back from the recipe a run saved in its student.pt: Recipe's
# own field definitions (names, the `validate` alias, defaults, schema), so errors name the same keys.
_SavedSections = create_model(
    "_SavedSections", __config__=ConfigDict(extra="forbid", populate_by_name=True),
    **{name: (Recipe.model_fields[name].annotation, Recipe.model_fields[name]) for name in ("gate", "export")})


def saved_sections(recipe: dict[str, Any], source: str) -> Any:
    """A run's saved validate: and export: sections, checked as at training time (a student.pt
    from an older edgekd lacks newer sections: their defaults apply): `.gate` (a ValidateConfig)
    and `.export` (an ExportConfig). The one reading of them: export's manifest and search use it."""
    raw = {k: recipe[k] for k in ("validate", "export") if recipe.get(k) is not None}
    try:
        return _SavedSections.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {_format_error(e)}") from None


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


def saved_recipe(saved: dict[str, Any], source: str = "saved recipe") -> Recipe:
    """The Recipe a run saved (recipe.yaml, last.pt, student.pt, a comparison's files), also one
    saved by an older edgekd: keys added since take their defaults, and a distill section written
    flat, with every method's keys, keeps only its method's (method_settings.own_keys_only)."""
    distill = saved.get("distill")
    if isinstance(distill, dict):
        saved = {**saved, "distill": own_keys_only(distill)}
    return validate_recipe(saved, source)


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict saved by an older edgekd as this edgekd writes it (saved_recipe), so that a
    key added since, at its default, or another method's key it recorded, is not a difference."""
    try:
        return saved_recipe(saved).to_dict()
    except RecipeError:
        return saved


# train keys whose `auto` a run resolves and records (summary.json's and last.pt's speed_settings)
RESOLVED_AUTO = ("channels_last", "compile", "amp")


def with_resolved_auto(saved: dict[str, Any], current: dict[str, Any], speed: dict[str, Any] | None) -> dict[str, Any]:
    """`saved` (a run's recipe dict) with each train key it left at `auto` replaced by what the run
    resolved it to (`speed`, the run's recorded speed settings) where `current` pins that key, so
    that pinning a setting to what a run trained with is not a difference from that run."""
    if not speed:
        return saved
    train, now = dict(saved.get("train") or {}), current.get("train") or {}
    for key in RESOLVED_AUTO:
        if train.get(key) == "auto" and now.get(key) != "auto" and key in speed:
            train[key] = speed[key]
    return {**saved, "train": train}


def saved_recipe_diff(saved: dict[str, Any], current: "Recipe", speed: dict[str, Any] | None = None) -> list[str]:
    """Dotted keys where a saved run's recipe differs from `current`: the one comparison that both
    `--resume` and `edgekd compare`'s reuse make. Keys added since the run was saved count at their
    default; a saved `auto` matches a pin to what that run resolved it to (`speed`)."""
    now = current.to_dict()
    return recipe_diff(with_resolved_auto(with_defaults(saved), now, speed), now)


def recipe_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts, sorted."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in set(a) | set(b):
            out += recipe_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return sorted(out)
    return [] if a == b else [prefix.rstrip(".")]


def describe_keys(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
