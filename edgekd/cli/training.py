"""The commands that train: `edgekd distill` (one run, or one per process with --nproc-per-node)
and `edgekd compare` (several runs of one recipe, compared)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edgekd.cli.group import cli, csv_list
from edgekd.text import pct


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set train.epochs=5 --set distill.weighting=soft. Repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory. Default: runs/<recipe-name>-<time>/.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out (default: the newest unfinished run of this recipe) from its last.pt.")
@click.option("--allow-recipe-change", is_flag=True,
              help="With --resume: continue even if the recipe differs from the one in last.pt (the differing keys are printed).")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train data-parallel in N processes (DistributedDataParallel) started through torch's launcher, "
                   "like `torchrun --standalone --nproc-per-node N -m edgekd distill ...`: one per GPU, or gloo on the "
                   "CPU. data.batch_size stays the global batch.")
@click.option("--quiet", is_flag=True, help="No progress bar: one short line per epoch.")
def distill(recipe: Path, overrides: tuple[str, ...], out: Path | None, resume: bool, allow_recipe_change: bool,
            nproc_per_node: int | None, quiet: bool) -> int:
    """Train teacher and student together from a YAML RECIPE (online distillation).

    Writes recipe.yaml (resolved), split.json, metrics.jsonl, last.pt (every
    epoch), student.pt, summary.json and reliability diagrams into the run
    directory (and TensorBoard event files in tensorboard/ with
    train.log: [tensorboard]). The first line says what train.channels_last,
    train.compile and train.amp resolved to and why; the last line says where the run
    is and the student's accuracy and ECE on the evaluation split (train.eval_split:
    val or tune).
    """
    if allow_recipe_change and not resume:
        raise click.UsageError("--allow-recipe-change only makes sense with --resume")
    if nproc_per_node and nproc_per_node > 1:
        return _launch(recipe, overrides, out, resume, nproc_per_node)
    from edgekd import api  # here, not at the top: it imports numpy and the validate side, which --help never needs

    run = api.distill(recipe, overrides=list(overrides), out=out, resume=resume,
                      allow_recipe_change=allow_recipe_change, progress="epochs" if quiet else "bar",
                      warn=lambda msg: click.echo(f"edgekd: warning: {msg}", err=True))
    if not run.summary:  # a torchrun rank other than 0
        return 0
    summary = run.summary
    s, t = summary["student"], summary["teacher"]
    click.echo(
        f"teacher {t['arch']}: acc {pct(t['accuracy'])} ECE {pct(t['ece'])} NLL {t['nll']:.4f} Brier {t['brier']:.4f}"
    )
    click.echo(
        f"run {run.path} | student {s['arch']} ({summary['method']}): acc {pct(s['accuracy'])} "
        f"ECE {pct(s['ece'])} NLL {s['nll']:.4f} Brier {s['brier']:.4f} on {summary['eval_images']} {summary['eval_split']} images"
    )
    return 0


def _launch(recipe: Path, overrides: tuple[str, ...], out: Path | None, resume: bool, nproc: int) -> int:
    """--nproc-per-node N: this same command in N processes through torch's launcher."""
    from edgekd import api
    from edgekd.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    api.need_torch("distill")
    from edgekd.training import distributed
    from edgekd.training.run_dir import default_run_dir, find_resumable

    if distributed.from_env().enabled:
        raise click.UsageError("--nproc-per-node launches processes; under torchrun leave it out")
    distributed.per_rank_batch(r.data.batch_size, distributed.Dist(0, nproc, 0))
    out = out or (find_resumable(r) if resume else default_run_dir(r))  # one name for every rank
    argv = (click.get_current_context().obj or {}).get("argv", sys.argv[1:])
    code = distributed.launch(nproc, rank_argv(argv, out))
    if code:
        click.echo(f"edgekd: error: the training processes failed (exit {code}); their message is above", err=True)
    return code


def rank_argv(argv: list[str], out: Path) -> list[str]:
    """The command line each training process of `edgekd distill --nproc-per-node N`
    runs: this command's own arguments (--debug, --set, --resume, --quiet, ...) minus
    --nproc-per-node and its value, plus --out naming the run directory chosen here
    when none was given, so that every rank trains into the same one."""
    child: list[str] = []
    given_out = False
    command_at = None  # where the verb (distill) is: group options such as --debug come before it
    args = iter(argv)
    for a in args:
        if a == "--":  # the rest is positional
            child += [a, *args]
            break
        if a == "--nproc-per-node":
            next(args, None)
        elif a.startswith("--nproc-per-node="):
            pass
        elif a in ("--set", "--out"):  # options that take a value (click checked it is there): copy it unread
            given_out |= a == "--out"
            child += [a, next(args, "")]
        else:
            given_out |= a.startswith("--out=")
            if command_at is None and not a.startswith("-"):
                command_at = len(child)
            child.append(a)
    if not given_out:
        at = len(child) if command_at is None else command_at + 1
        child[at:at] = ["--out", str(out)]
    return child


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--methods", default="ce,dml,bdkd", show_default=True,
              help="Comma-separated variants: a method (ce, kd, dml, bdkd), optionally with recipe overrides "
                   "joined by ':'. A key without a dot is a distill key (bdkd:weighting=soft:temperature=2); a "
                   "dotted key of any section is used as is (ce:optim.label_smoothing=0.1, bdkd:train.epochs=3, "
                   "dml:data.batch_size=64, ce:student.options.width=16, kd:teacher.checkpoint=t.pt). Values may "
                   "be lists in brackets (optim.milestones=[0.5,0.75]). The seed comes from --seeds. A label "
                   "ending in +ts (ce+ts) is a post-hoc row: that variant's runs with a temperature fitted on "
                   "each run's tune split.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated train.seed values; each variant runs once per seed.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key for every run. Repeatable.")
@click.option("--eval-split", type=click.Choice(["val", "tune", "test"]), default=None,
              help="Split the comparison reports on. Default: the recipe's train.eval_split. tune and test "
                   "evaluate each finished run's final nets on that split (the recipe needs data.test_fraction "
                   "or data.test_size for test).")
@click.option("--reference", "references", multiple=True, metavar="LABEL",
              help="Variant the others are compared with (paired differences and verdicts). Default: the first. "
                   "Repeatable: each further reference gets its own table (--reference dml --reference ce+ts).")
@click.option("--bootstrap", "replicates", type=click.IntRange(min=1), default=1000, show_default=True, metavar="B",
              help="Replicates of the paired hierarchical bootstrap.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Comparison folder. Default: runs/compare-<recipe-name>/.")
@click.option("--overwrite", is_flag=True,
              help="Replace a comparison in --out made with another recipe or evaluation split (its prediction "
                   "files too). Without it such a comparison is left as it is.")
@click.option("--deployed", default=None, metavar="FILES",
              help="Also score each row as deployed files, comma-separated: fp32, fp16, int8, int8_cpu (what "
                   "plain export writes) and int8_search (model_int8_cpu.onnx as --int8-search chooses it against "
                   "the recipe's gate, on the tune split). Each becomes a row <label>@<file>, scored from the "
                   "file's logits in ONNX Runtime; a +ts row's file holds its temperature (export --temperature fit).")
@click.option("--quiet", is_flag=True, help="Only one line per run, not per epoch.")
def compare(recipe: Path, methods: str, seeds: str, overrides: tuple[str, ...], eval_split: str | None,
            references: tuple[str, ...], replicates: int, out: Path | None, overwrite: bool, deployed: str | None,
            quiet: bool) -> int:
    """Run RECIPE under several methods and seeds with everything else identical
    (split, schedule, augmentation, seeds), then write comparison.json,
    comparison.md and overlaid reliability diagrams.

    \b
    Per variant: mean and 95% t interval over seeds of accuracy, ECE,
    adaptive ECE, classwise ECE, NLL and Brier (students and teachers), and
    the ECE noise floor (what a perfectly calibrated model would show on this
    many images). Against --reference: seed- and image-paired differences with
    a 95% CI from a hierarchical bootstrap, and a verdict (lower, higher, no
    detectable difference).

    \b
    Each run trains into OUT/runs/<variant>-s<seed>/ (finished runs are reused
    if trained with exactly the same recipe, interrupted ones resumed), and
    its student's predictions go to OUT/predictions/ (small: commit them). A
    run whose prediction files match is reused without its run folder.

    \b
    Ablations of BD-KD use the same flag:
      --methods bdkd,bdkd:weighting=soft,bdkd:weighting=forward,bdkd:weighting=reverse
      --methods bdkd,bdkd:switch=flipped,bdkd:teacher_divergence=none,bdkd:gap_temperature=1

    \b
    Choose hyper-parameters on the tune split, report on a held-out test split:
      edgekd compare R --methods dml:temperature=4,dml:temperature=8 --set train.eval_split=tune --out runs/tune
      edgekd compare R --methods ce,ce+ts,dml:temperature=8,bdkd --seeds 0,1,2,3,4 --reference dml:temperature=8 \\
        --reference ce+ts --set data.tune_fraction=0.1 --set data.test_fraction=0.2 --eval-split test
    """
    from edgekd.compare import parse_seeds, parse_variants, prepare_comparison, run_comparison
    from edgekd.compare.variants import split_top_level
    from edgekd.recipe import load_recipe

    variants = parse_variants(csv_list(methods, split_top_level), csv_list(deployed))
    seed_list = parse_seeds(csv_list(seeds))
    base = load_recipe(recipe, overrides)
    out = out or Path("runs") / f"compare-{base.name}"
    cmp = prepare_comparison(recipe, variants, seed_list, list(overrides), out, eval_split=eval_split,
                             reference=list(references), replicates=replicates, overwrite=overwrite)
    if cmp.needs_torch:
        from edgekd.api import need_torch

        need_torch("compare")
    on_epoch = None if quiet else (lambda rec: "student_accuracy" in rec and click.echo(
        f"  epoch {rec['epoch']}: student acc {pct(rec['student_accuracy'])} ECE {pct(rec['student_ece'])}"))
    argv = (click.get_current_context().obj or {}).get("argv", sys.argv[1:])  # what main() was given
    command = "edgekd " + " ".join(shlex.quote(a) for a in argv)
    run_comparison(cmp, log=click.echo, on_epoch=on_epoch, command=command)
    click.echo((out / "comparison.md").read_text())
    click.echo(f"comparison of {len(cmp.runs)} runs ({len(variants)} rows) in {out}")
    return 0
