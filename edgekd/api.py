"""The Python API: distill -> export -> validate, the three steps of the `edgekd` command
(which is a thin layer over these functions). Also reachable as edgekd.distill,
edgekd.export, edgekd.validate, edgekd.Run, edgekd.Bundle and edgekd.Report.

    run = edgekd.distill("recipes/quickstart.yaml", overrides={"train.epochs": 2})
    bundle = edgekd.export(run)
    report = edgekd.validate(bundle)
    report.formats["int8"]["ece"], report.passed

Nothing here prints unless asked (`progress=`, `log=`). Every error edgekd raises on
purpose is an edgekd.errors.EdgeKDError subclass carrying the one-line message the
command prints (RecipeError, DataError, ModelError, CheckpointError, ExportError,
BundleError, MissingDependencyError, ...; a FailedCheck, exit code 1, for a result that
fails on good input: ParityError, Int8SearchError, PeerLostError, GateError); nothing
raises SystemExit. Importing this module imports neither torch nor matplotlib: validate runs
on a device with only numpy and ONNX Runtime; distill and export import torch when
called.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence, Union

from edgekd.arguments import (BOOL, CALLABLE, INT, MAPPING_OR_STRINGS, MODULE, NUMBER, PATH, STRINGS, TEXT, Kind,
                              checked)
from edgekd.errors import EdgeKDError, ExportError, ModelError, RecipeError
from edgekd.export_defaults import CALIB_METHOD, CALIB_SAMPLES, MAX_BATCH
from edgekd.validation import gate
from edgekd.validation.bundle import Bundle
from edgekd.validation.report import Report

if TYPE_CHECKING:  # imported where used: torch is not on a device, pydantic (recipe) costs validate's start-up
    from torch import nn

    from edgekd.recipe import Overrides, Recipe

__all__ = ["distill", "export", "validate", "Run", "Bundle", "Report"]

PathLike = Union[str, "os.PathLike[str]"]
RecipeLike = Union[PathLike, Mapping[str, Any], "Recipe"]
Log = Callable[[str], Any]
PROGRESS = ("off", "epochs", "bar")
RUNTIMES = ("onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class Run:
    """A distillation run: what `edgekd.distill` returns.

    path: the run directory (recipe.yaml, metrics.jsonl, last.pt, student.pt,
      summary.json, eval_logits.npz, reliability_*.png).
    summary: summary.json as a dict ({} on torchrun ranks other than 0, which write nothing).
    teacher, student: the trained nets (nn.Module), on the training device and in the mode
      training left them in (call .eval() before predicting); a module passed to distill
      is this very object.
    """

    path: Path
    summary: dict[str, Any] = field(repr=False)
    teacher: nn.Module | None = field(default=None, repr=False)
    student: nn.Module | None = field(default=None, repr=False)

    @property
    def student_metrics(self) -> dict[str, float]:
        """The student's figures on the evaluation split (train.eval_split), as in summary.json:
        accuracy, ece, mce, adaptive_ece, classwise_ece, nll, brier."""
        return self._metrics("student")

    @property
    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's figures, as student_metrics."""
        return self._metrics("teacher")

    def _metrics(self, role: str) -> dict[str, float]:
        from edgekd.calibration import METRIC_KEYS

        entry = self.summary.get(role) or {}
        return {k: entry[k] for k in METRIC_KEYS if k in entry}


def need_torch(verb: str) -> None:
    """MissingDependencyError naming the extra to install, when PyTorch is not installed."""
    from edgekd import optional

    optional.load("torch", f"edgekd {verb} needs")


def _silent(line: str) -> None:
    pass


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


# ---------------------------------------------------------------- distill

def _is_recipe(v: Any) -> bool:
    recipe = sys.modules.get("edgekd.recipe")  # a Recipe passed in means the module is imported
    return isinstance(v, (str, os.PathLike, Mapping)) or (recipe is not None and isinstance(v, recipe.Recipe))


_RECIPE = Kind("a path, a dict or a Recipe", _is_recipe, RecipeError)


@checked(recipe=_RECIPE, overrides=MAPPING_OR_STRINGS.raising(RecipeError).or_none(),
         teacher=MODULE.raising(ModelError).or_none(), student=MODULE.raising(ModelError).or_none(),
         out=PATH.or_none(), resume=BOOL, allow_recipe_change=BOOL, progress=TEXT, on_epoch=CALLABLE.or_none(),
         warn=CALLABLE.or_none())
def distill(recipe: RecipeLike, *, overrides: Overrides | None = None, teacher: nn.Module | None = None,
            student: nn.Module | None = None, out: PathLike | None = None, resume: bool = False,
            allow_recipe_change: bool = False, progress: Literal["off", "epochs", "bar"] = "off",
            on_epoch: Callable[[dict[str, Any]], Any] | None = None,
            warn: Callable[[str], Any] | None = None) -> Run:
    """Train teacher and student together (online distillation) as `edgekd distill` does.

    recipe: a recipe file (path), a recipe mapping (the YAML's structure as a dict) or a
      Recipe (edgekd.recipe.load_recipe). A file names the run after its stem, a mapping
      without `name` is called "recipe".
    overrides: like --set: ["train.epochs=2"] (values parsed as YAML) or {"train.epochs": 2}
      (values used as they are); applied before validation.
    teacher, student: nn.Module instances used instead of building teacher.arch /
      student.arch. They are trained in place (and moved to the training device); the
      recipe records their arch as "user:<module>.<class>". Each must map a float
      [batch, channels, size, size] batch to [batch, classes] logits; the recipe's
      `options` for that net must be empty, and its `checkpoint`, if set, is loaded into
      the module. train.seed does not set their initial weights (you built them).
    out: the run directory; default runs/<recipe-name>-<time>/ (with resume: the newest
      unfinished run of this recipe under runs/). It must not exist or be empty.
    resume: continue the run in `out` from its last.pt (the same modules must be passed
      again for a user model). allow_recipe_change: resume even if the recipe differs.
    progress: "off" (default: print nothing), "epochs" (one line per epoch, like --quiet)
      or "bar" (the command's progress bar on a terminal, and the epoch lines); both also
      print the run's first line (the speed settings it resolved) and what a recipe's
      init: backbone loaded (summary.json records both either way).
    on_epoch: called with each epoch's metrics.jsonl record (a dict), after its checkpoint.
    warn: called with warnings (a resume with a changed recipe); default warnings.warn.

    Returns a Run. Under torchrun, call it in every process; each joins the process group
    and gets a Run, only rank 0's with a summary. Raises RecipeError, DataError,
    ModelError, CheckpointError, MissingDependencyError (no PyTorch), EdgeKDError (a run
    directory that is not empty, ...), PeerLostError; a failure before the first
    checkpoint leaves no run directory.
    """
    modules = _user_modules(teacher=teacher, student=student)
    r = resolve_recipe(recipe, overrides, modules)
    if allow_recipe_change and not resume:
        raise EdgeKDError("allow_recipe_change=True only makes sense with resume=True")
    if progress not in PROGRESS:
        raise EdgeKDError(f"progress={progress!r} is not one of {', '.join(PROGRESS)}")
    need_torch("distill")
    from edgekd.training import distributed
    from edgekd.training.setup import rank_device

    dist = distributed.from_env()
    # Under torchrun the group is needed from here on (the ranks agree on the run directory) and is
    # left however the run ends.
    with distributed.process_group(dist, rank_device(r, dist)):
        return _distill_in_group(r, dist, out, resume, allow_recipe_change, progress, on_epoch, warn, modules)


def _distill_in_group(r, dist, out, resume, allow_recipe_change, progress, on_epoch, warn, modules) -> "Run":
    """distill's body, inside the process group (under torchrun)."""
    from edgekd.training import distributed
    from edgekd.training.run_dir import default_run_dir, find_resumable, train_run
    from edgekd.progress import EpochReporter

    if out is None:
        out = distributed.broadcast(find_resumable(r) if resume else default_run_dir(r), dist)
    out = Path(out)
    main = dist.is_main
    reporter = EpochReporter(r.train.epochs, quiet=progress != "bar") if progress != "off" and main else None

    def epoch_done(rec: dict[str, Any]) -> None:
        if reporter is not None:
            reporter.epoch_done(rec)
        if on_epoch is not None:
            on_epoch(rec)

    with reporter or contextlib.nullcontext(), distributed.peer_errors(dist):
        summary, setup = train_run(r, out, resume=resume, on_epoch=epoch_done if main else None,
                                   progress=reporter.step if reporter is not None else None,
                                   allow_recipe_change=allow_recipe_change, warn=warn or _warn, dist=dist,
                                   note=reporter.note if reporter is not None else None, modules=modules)
    return Run(out, summary, setup.teacher, setup.student)


def resolve_recipe(recipe: RecipeLike, overrides: Overrides | None = None,
                   modules: Mapping[str, nn.Module] | None = None) -> Recipe:
    """The Recipe distill trains: `recipe` with `overrides` applied, and each user module's
    arch recorded as "user:<module>.<class>" (models/user.py). Changes nothing passed in."""
    from edgekd.recipe import Recipe, apply_overrides, build_recipe, read_yaml_mapping

    if isinstance(recipe, Recipe):
        raw, source, name = recipe.to_dict(), "recipe", recipe.name
    elif isinstance(recipe, Mapping):
        raw, source, name = copy.deepcopy(dict(recipe)), "recipe", None
    elif isinstance(recipe, (str, os.PathLike)):
        raw, source, name = read_yaml_mapping(recipe), str(recipe), Path(recipe).stem
    else:
        raise RecipeError(f"recipe must be a path, a dict or a Recipe, not a {type(recipe).__name__}")
    raw = apply_overrides(raw, overrides or ())
    if modules:
        from edgekd.models.user import user_arch

        for role, module in modules.items():
            section = raw.get(role)
            if section is None:
                section = raw[role] = {}
            if not isinstance(section, dict):
                raise RecipeError(f"{source}: {role} must be a section (arch, checkpoint, options), "
                                  f"not {type(section).__name__}")
            if section.get("options"):
                raise RecipeError(f"{source}: {role}.options configure a model named by {role}.arch; the {role} "
                                  "module passed in takes none (set them when you build it)")
            section["arch"] = user_arch(module)
    return build_recipe(raw, source=source, default_name=name or "recipe")


def _user_modules(**given: Any) -> dict[str, nn.Module]:
    modules = {role: m for role, m in given.items() if m is not None}
    if modules:
        need_torch("distill")
        from torch import nn

        for role, m in modules.items():
            if not isinstance(m, nn.Module):
                raise ModelError(f"{role} must be a torch.nn.Module, not a {type(m).__name__}")
        if modules.get("teacher") is not None and modules.get("teacher") is modules.get("student"):
            raise ModelError("teacher and student are the same module; online distillation trains two nets")
    return modules


# ---------------------------------------------------------------- export

_TEMPERATURE = Kind("'fit' or a number", lambda v: isinstance(v, str) or NUMBER.accepts(v), ExportError).or_none()


@checked(run=Kind("a Run, a run directory or None", lambda v: v is None or isinstance(v, (Run, str, os.PathLike))),
         out=PATH.or_none(), formats=STRINGS.raising(ExportError).or_none(), trt=BOOL, calib_samples=INT,
         calib_method=TEXT, max_batch=INT, overwrite=BOOL, int8_search=BOOL.or_none(),
         search_budget=NUMBER.or_none(), student=MODULE.raising(ModelError).or_none(),
         temperature=_TEMPERATURE, log=CALLABLE.or_none())
def export(run: Run | PathLike | None = None, *, out: PathLike | None = None, formats: Sequence[str] | None = None,
           trt: bool = False, calib_samples: int = CALIB_SAMPLES, calib_method: str = CALIB_METHOD,
           max_batch: int = MAX_BATCH, overwrite: bool = False, int8_search: bool | None = None,
           search_budget: float | None = None, student: nn.Module | None = None,
           temperature: float | Literal["fit"] | None = None, log: Log | None = None) -> Bundle:
    """Export a run's student to a deployment bundle, as `edgekd export` does.

    run: a Run, a run directory, or None for the newest complete run under runs/.
    out: the bundle folder; default export/<run-name>/. overwrite: replace one (atomically).
    formats: ONNX precisions among "fp32", "fp16", "int8", "int8_cpu"; default all four;
      fp32 is always written. trt: also build TensorRT engines from fp16/int8 (needs
      TensorRT and an NVIDIA GPU). calib_samples, calib_method (one of
      edgekd.export_defaults.CALIB_METHODS): INT8 calibration on training images.
      max_batch: the TensorRT profile's.
    int8_search: per INT8 file, search calibration settings (and nodes kept in float) for
      the fastest file that passes the recipe's gate, judged on the tune split (else held-
      apart training images, never val); search_budget: its time in seconds. None: the
      run's recipe (export.int8_search, export.search_budget). On a terminal the search
      shows a progress bar.
    student: a module of the student's class to load student.pt's weights into (a copy of
      it; yours is unchanged). Default: the Run's student, else the arch rebuilt by name.
      A user model (arch "user:...") cannot be rebuilt by name, so a run directory of one
      needs it: export("runs/x", student=Net()). Nothing in a run stores code.
    temperature: a temperature inside every file (each output divided by it, after the last
      dequantize): a number > 0, or "fit" to fit it by NLL on the run's tune split (a run
      without one is refused). The manifest records it (manifest["temperature"]).
    log: called with each line the command prints (default: print nothing).

    Returns the Bundle (checked like validate reads it). Raises EdgeKDError (no such run),
    CheckpointError, ExportError (bad format or setting), ParityError (a file disagrees
    with PyTorch; exit code 1), Int8SearchError (no INT8 file passed the search; exit code
    1, raised after the bundle is written without it), MissingDependencyError (no
    PyTorch/ONNX; or trt=True without TensorRT, raised after the ONNX bundle is
    written). Any other failure leaves no bundle.
    """
    need_torch("export")
    from edgekd import optional

    for module in ("onnx", "onnxruntime", "onnxscript"):  # deploy imports them at its top
        optional.load(module, "edgekd export needs")
    from edgekd.deploy import export_bundle

    if isinstance(run, Run):
        run, student = run.path, student if student is not None else run.student
    if student is not None:
        from torch import nn

        if not isinstance(student, nn.Module):
            raise ModelError(f"student must be a torch.nn.Module, not a {type(student).__name__}")
    if isinstance(formats, str):
        raise ExportError(f"formats={formats!r} is one string; pass a list such as {formats.split(',')!r}")
    path = export_bundle(run_dir=run, out=out, formats=formats, trt=trt, calib_samples=calib_samples,
                         calib_method=calib_method, max_batch=max_batch, overwrite=overwrite, log=log or _silent,
                         int8_search=int8_search, search_budget=search_budget, model=student,
                         temperature=temperature)
    from edgekd.validation.bundle import load_bundle

    return load_bundle(path, _silent)


# ---------------------------------------------------------------- validate

_FRACTION = NUMBER.or_none()


@checked(bundle=Kind("a Bundle, a bundle folder or None", lambda v: v is None or isinstance(v, (Bundle, str, os.PathLike))),
         data=TEXT.or_none(), formats=STRINGS.or_none(), runtime=TEXT, providers=STRINGS.or_none(), batch=INT,
         max_ece=_FRACTION, max_acc_drop=_FRACTION, min_agreement=_FRACTION, max_ece_drift=_FRACTION,
         max_class_acc_drop=_FRACTION, threshold=_FRACTION, min_threshold_agreement=_FRACTION,
         json_path=PATH.or_none(), report_dir=PATH.or_none(), save_predictions=PATH.or_none(), log=CALLABLE.or_none())
def validate(bundle: Bundle | PathLike | None = None, *, data: str | None = None, formats: Sequence[str] | None = None,
             runtime: Literal["onnxruntime", "openvino", "tensorrt"] = "onnxruntime", providers: Sequence[str] | None = None,
             batch: int = 64, max_ece: float | None = None, max_acc_drop: float | None = None,
             min_agreement: float | None = None, max_ece_drift: float | None = None,
             max_class_acc_drop: float | None = None, threshold: float | None = None,
             min_threshold_agreement: float | None = None,
             json_path: PathLike | None = None, report_dir: PathLike | None = None,
             save_predictions: PathLike | None = None, log: Log | None = None) -> Report:
    """Check a bundle on this machine's runtime: accuracy AND calibration, as `edgekd validate`
    does. Never imports torch.

    bundle: a Bundle, a bundle folder, or None for the newest bundle under export/.
    data: "digits", "imagefolder:DIR", "cifar10:DIR", "cifar100:DIR"; default the run's val
      split, rebuilt from the manifest.
    formats: among "fp32", "fp16", "int8", "int8_cpu", "engine", "engine_fp16",
      "engine_int8"; default every file the runtime can run. runtime: "onnxruntime" (the
      ONNX files in ONNX Runtime), "openvino" (the ONNX files in OpenVINO on the CPU) or
      "tensorrt" (the engines, plus fp32 in ONNX Runtime). providers: ONNX Runtime
      execution providers (default all available; not with "openvino").
    batch: batch size for metrics and timing.
    max_ece, max_acc_drop, min_agreement, max_ece_drift: gate thresholds (fractions in
      [0, 1]); each one not given comes from the recipe's validate: section in the manifest.
    max_class_acc_drop: the worst class's accuracy drop against the FP32 file (the class is named).
    threshold, min_threshold_agreement: the confidence in (0, 1) a device acts at, and the least
      share of images on which a file and the FP32 file make the same decision there (both
      reject, or both accept with the same class); needs threshold.
    json_path, report_dir, save_predictions: also write --json, --report and
      --save-predictions files.
    log: called with each line the command prints (default: print nothing).

    Returns a Report. A failed gate is not an exception: report.passed is False, and
    report.raise_for_gate() raises GateError (exit code 1) if you want one. Bad input
    raises BundleError, DataError, MissingDependencyError (no ONNX Runtime/OpenVINO/TensorRT) or
    EdgeKDError (a bad argument).
    """
    from edgekd.validation import run_validation

    thresholds = {"max_ece": max_ece, "max_acc_drop": max_acc_drop, "min_agreement": min_agreement,
                  "max_ece_drift": max_ece_drift, "max_class_acc_drop": max_class_acc_drop,
                  "min_threshold_agreement": min_threshold_agreement}
    for key, value in thresholds.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 1):
            raise EdgeKDError(f"{key} must be a fraction in [0, 1], got {value!r}")
    if threshold is not None and (problem := gate.threshold_problem({"threshold": threshold})):
        raise EdgeKDError(problem)
    thresholds["threshold"] = threshold
    if runtime not in RUNTIMES:
        raise EdgeKDError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EdgeKDError(f"batch must be an integer >= 1, got {batch!r}")
    for name, items in (("formats", formats), ("providers", providers)):
        if isinstance(items, str):
            raise EdgeKDError(f"{name}={items!r} is one string; pass a list such as {items.split(',')!r}")
    return run_validation(
        bundle=bundle.path if isinstance(bundle, Bundle) else _path(bundle), data_spec=data,
        formats=None if formats is None else list(formats), runtime=runtime,
        providers=None if providers is None else list(providers), batch=batch, thresholds=thresholds,
        json_path=_path(json_path), report_dir=_path(report_dir), save_predictions=_path(save_predictions),
        log=log or _silent)


def _path(p: PathLike | None) -> Path | None:
    return None if p is None else Path(p)
