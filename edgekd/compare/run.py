"""`edgekd compare` end to end: every check first (nothing written on bad input), then
training and evaluation of the runs that need it, then the report from the prediction files.

Each (variant, seed) trains into OUT/runs/<variant-slug>-s<seed>/: a finished run
(summary.json present) is reused, an interrupted one (last.pt) resumed. Its final nets
are evaluated on the evaluation split (and the tune split) into OUT/predictions/; a run
whose prediction files exist for the same recipe and split is reused from them alone,
without its run folder. Torch is imported only when a run needs training or evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekd import calibration
from edgekd.compare import predictions
from edgekd.compare.variants import Variant, check_eval_split, check_splits_fit, plan
from edgekd.contracts import EvalLogits, RunLayout, SplitInfo
from edgekd.errors import RecipeError
from edgekd.recipe import Recipe, load_recipe, read_yaml_mapping
from edgekd.saved_recipe import RESOLVED_AUTO, describe_keys, saved_recipe_diff


@dataclass
class PlannedRun:
    variant: Variant  # a trained variant
    seed: int
    recipe: Recipe
    reuse: bool = False  # its prediction files are there and match
    # --deployed rows made from this run whose prediction files are missing (or of another recipe)
    deploy: list[Variant] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.variant.slug}-s{self.seed}"


@dataclass
class Comparison:
    recipe_path: Path
    overrides: list[str]
    base: Recipe
    variants: list[Variant]
    seeds: list[int]
    eval_split: str
    reference: str
    out: Path
    replicates: int = 1000
    overwrite: bool = False
    runs: list[PlannedRun] = field(default_factory=list)
    more_references: list[str] = field(default_factory=list)  # each gets its own paired table

    @property
    def needs_work(self) -> list[PlannedRun]:
        return [r for r in self.runs if not r.reuse]

    @property
    def needs_torch(self) -> bool:
        return bool(self.needs_work) or any(r.deploy for r in self.runs)


def prepare_comparison(recipe_path: Path, variants: list[Variant], seeds: list[int], overrides: list[str], out: Path,
                       eval_split: str | None = None, reference: str | list[str] | None = None,
                       replicates: int = 1000, overwrite: bool = False) -> Comparison:
    """Every check a comparison can fail, before anything is written: recipes, splits, the
    reference(s), the comparison and prediction files already in OUT, the run folders to reuse.
    `reference`: one label, or several (the first is the reference; each further one gets its own
    table of paired differences, e.g. BD-KD against both DML and CE+TS)."""
    runs = plan(recipe_path, variants, seeds, overrides)
    base = load_recipe(recipe_path, overrides)
    eval_split = eval_split or base.train.eval_split
    check_eval_split(runs, variants, eval_split)
    labels = [v.label for v in variants]
    references = [reference] if isinstance(reference, str) else list(reference or []) or [labels[0]]
    for ref in references:
        if ref not in labels:
            raise RecipeError(f"--reference {ref!r} is not one of the compared variants: {', '.join(labels)}")
    twice = sorted({ref for ref in references if references.count(ref) > 1})
    if twice:
        raise RecipeError(f"--reference {twice[0]!r} is given twice; give each reference once")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise RecipeError(f"--bootstrap must be an integer >= 1, got {replicates!r}")
    cmp = Comparison(Path(recipe_path), list(overrides), base, variants, seeds, eval_split, references[0], Path(out),
                     replicates, overwrite, [PlannedRun(v, s, r) for v, s, r in runs], references[1:])
    _check_previous_comparison(cmp)
    for run in cmp.runs:
        run.reuse = _prediction_matches(cmp, run)
        run.deploy = [v for v in variants if v.deployed is not None and v.run_label == run.variant.label
                      and not _prediction_matches(cmp, run, v)]
        if run.deploy and run.reuse and not RunLayout(cmp.out / "runs" / run.name).student.is_file():
            raise RecipeError(f"{run.deploy[0].label} seed {run.seed} needs {RunLayout(cmp.out / 'runs' / run.name).student} "
                              "to export, and that run is kept only as prediction files; remove them to train it "
                              "again, or leave the deployed rows out")
        if any(v.deployed == "int8_search" for v in run.deploy):
            from edgekd.deploy.int8_search import search_thresholds  # torch-free: a gate the search can use

            search_thresholds(run.recipe.gate.thresholds())
    for run in cmp.needs_work:
        _check_same_recipe(cmp.out / "runs" / run.name, run.recipe)
    if cmp.needs_work:
        check_splits_fit([r.recipe for r in cmp.needs_work])
        _check_nets(cmp.needs_work)
    return cmp


def _check_nets(runs: list[PlannedRun]) -> None:
    """Build every run's nets and method as training will (checkpoints opened, matched and checked
    for NaN), so that a bad variant fails before the first one trains, not hours later. Every
    problem of every variant at once, one line each; a net shared by several runs is checked once."""
    from edgekd.api import need_torch

    need_torch("compare")
    from edgekd.training.nets import check_trainable
    from edgekd.errors import EdgeKDError, raise_all

    problems: list[EdgeKDError] = []
    seen: set[str] = set()
    for run in runs:
        r = run.recipe
        key = json.dumps([r.data.model_dump(mode="json"), r.teacher.model_dump(mode="json"),
                          r.student.model_dump(mode="json"), r.distill.model_dump(mode="json")], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_trainable(r)
        except EdgeKDError as e:
            for p in getattr(e, "problems", [e]):
                problems.append(type(p)(f"variant {run.variant.label!r}: {p}"))
    raise_all(problems)


def resolved_speed(summary: dict | None) -> dict | None:
    """What a run's `auto` speed settings resolved to: its recorded speed_settings; for a CPU run
    made before edgekd recorded them, amp off (auto meant bf16 on CUDA only then)."""
    summary = summary or {}
    if summary.get("speed_settings"):
        return summary["speed_settings"]
    if str(summary.get("device", "")).startswith("cpu"):
        return {"amp": "off"}
    return None


def _common_speed(out: Path) -> dict:
    """The speed settings every prediction file in `out` recorded alike (its runs' resolved
    `auto`s), so a comparison made under `auto` matches a recipe that now pins those values."""
    seen: dict[str, set] = {}
    metas = sorted((out / predictions.FOLDER).glob("*.json")) if (out / predictions.FOLDER).is_dir() else []
    for meta in metas:
        try:
            speed = resolved_speed(json.loads(meta.read_text()).get("summary")) or {}
        except (OSError, ValueError, AttributeError):
            return {}
        for key in RESOLVED_AUTO:
            seen.setdefault(key, set()).add(json.dumps(speed.get(key)))
    return {k: json.loads(next(iter(v))) for k, v in seen.items() if len(v) == 1 and v != {"null"}}


def _check_previous_comparison(cmp: Comparison) -> None:
    """Re-running the same comparison (resume, more seeds, more variants) is fine; replacing
    another one (other recipe, other evaluation split) needs --overwrite."""
    path = cmp.out / "comparison.json"
    if cmp.overwrite or not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        old_recipe = old["recipe"]
        old_split = old.get("eval_split") or old_recipe.get("train", {}).get("eval_split", "val")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise RecipeError(f"{path} is not a comparison edgekd can read; pass --overwrite to replace it or "
                          f"choose another --out") from None
    diffs = saved_recipe_diff(old_recipe, cmp.base, _common_speed(cmp.out))
    if diffs:
        raise RecipeError(f"{path} compares another recipe (keys differ: {describe_keys(diffs)}); pass "
                          f"--overwrite to replace it or choose another --out")
    if old_split != cmp.eval_split:
        raise RecipeError(f"{path} reports on the {old_split} split, not {cmp.eval_split}; pass --overwrite to "
                          f"replace it or choose another --out")


def _prediction_matches(cmp: Comparison, run: PlannedRun, row: Variant | None = None) -> bool:
    """Whether the prediction files of `row` (default: the run's own trained row) for this run's seed
    exist and were made with this recipe on this split; of another one: refused, or with --overwrite redone."""
    slug = (row or run.variant).slug
    meta = predictions.read_meta(cmp.out, slug, run.seed)
    if meta is None:
        return False
    path = predictions.paths(cmp.out, slug, run.seed)[1]
    diffs = saved_recipe_diff(meta.get("recipe") or {}, run.recipe, resolved_speed(meta.get("summary")))
    problem = (f"was made with another recipe (keys differ: {describe_keys(diffs)})" if diffs else
               f"holds the {meta.get('eval_split')} split, not {cmp.eval_split}" if meta.get("eval_split") != cmp.eval_split
               else None)
    if problem is None:
        return True
    if cmp.overwrite:
        return False  # evaluated again and replaced
    raise RecipeError(f"{path} {problem}; pass --overwrite to replace it or choose another --out")


def _check_same_recipe(run_dir: Path, r: Recipe) -> None:
    """A run is reused or resumed only if it was trained with exactly this recipe."""
    saved = RunLayout(run_dir).recipe
    if not saved.is_file():
        return
    summary = RunLayout(run_dir).summary
    speed = resolved_speed(json.loads(summary.read_text())) if summary.is_file() else None
    diffs = saved_recipe_diff(read_yaml_mapping(saved), r, speed)
    if diffs:
        raise RecipeError(f"{run_dir} was trained with a different recipe (keys differ: {describe_keys(diffs)}); "
                          f"remove it or choose another --out")


def run_comparison(cmp: Comparison, log: Callable[[str], None], on_epoch=None, command: str | None = None) -> dict[str, Any]:
    from edgekd.compare import report

    total = len(cmp.runs)
    for i, run in enumerate(cmp.runs, 1):
        head = f"[{i}/{total}] {run.variant.label} seed {run.seed}"
        if run.reuse:
            log(f"{head}: reused from {cmp.out / predictions.FOLDER}")
        else:
            _train_and_evaluate(cmp, run, head, log, on_epoch)
        if run.deploy:
            from edgekd.compare.deployed import deploy_run  # torch: only when a file must be exported

            log(f"{head}: deploying as {', '.join(v.deployed for v in run.deploy)}")
            trained = predictions.read_meta(cmp.out, run.variant.slug, run.seed)
            deploy_run(cmp.out, run.name, run.seed, run.deploy, trained, cmp.eval_split, log)
    preds = {(v.slug, r.seed): predictions.load(cmp.out, v.slug, r.seed) for r in cmp.runs
             for v in [r.variant, *(d for d in cmp.variants if d.deployed is not None and d.run_label == r.variant.label)]}
    result, rows = report.build(cmp, preds, command)
    report.write_outputs(result, rows, cmp.out)
    return result


def _train_and_evaluate(cmp: Comparison, run: PlannedRun, head: str, log, on_epoch) -> None:
    from edgekd.compare import evaluate  # torch only when a run needs training or evaluation

    r, split = run.recipe, cmp.eval_split
    run_dir = cmp.out / "runs" / run.name
    if RunLayout(run_dir).summary.is_file():
        log(f"{head}: finished earlier, reused")
    else:
        layout = RunLayout(run_dir)
        started = layout.last.is_file()
        log(f"{head}: {'resuming' if started else 'training'} in {run_dir}")
        # A run killed before its first checkpoint left only its recipe: training's resume path
        # starts it again in place (after checking the recipe), where a fresh start would refuse
        # the non-empty folder.
        evaluate.train(r, run_dir, resume=started or layout.recipe.is_file(), on_epoch=on_epoch)
    summary = json.loads(RunLayout(run_dir).summary.read_text())
    split_info = SplitInfo.from_dict(summary["split"], f"{RunLayout(run_dir).summary}: split")
    has_tune = split_info.size("tune") > 0
    wanted = [split] + (["tune"] if has_tune and split != "tune" else [])
    logits_file = RunLayout(run_dir).eval_logits
    # The run's own final evaluation is the same nets on the same split: no need to run it again.
    reuse_own = r.train.eval_split == split and logits_file.is_file()
    todo = [s for s in wanted if not (reuse_own and s == split)]
    if todo:
        log(f"{head}: evaluating the final nets on {' and '.join(todo)}")
    evals = evaluate.evaluate_final(r, run_dir, todo) if todo else {}
    if reuse_own:
        evals[split] = EvalLogits.read(logits_file)
    main = evals[split]
    tune = evals.get("tune") if split != "tune" else None
    meta = {
        "variant": run.variant.label, "seed": run.seed, "recipe_hash": r.digest(), "recipe": r.to_dict(),
        "eval_split": split, "eval_images": int(len(main.labels)),
        "eval_images_digest": predictions.split_images_digest(split_info, split),
        "tune_images": int(len(tune.labels)) if tune else 0,
        "teacher": calibration.calibration_metrics(main.teacher, main.labels),
        "summary": summary,
    }
    predictions.save(cmp.out, run.variant.slug, run.seed, meta, main.labels, main.student,
                     tune.labels if tune else None, tune.student if tune else None)


def run_all(recipe_path: Path, variants: list[Variant], seeds: list[int], overrides: list[str], out: Path,
            log: Callable[[str], None], on_epoch=None, command: str | None = None, eval_split: str | None = None,
            reference: str | list[str] | None = None, replicates: int = 1000, overwrite: bool = False) -> dict[str, Any]:
    cmp = prepare_comparison(recipe_path, variants, seeds, overrides, out, eval_split, reference, replicates, overwrite)
    return run_comparison(cmp, log, on_epoch, command)

