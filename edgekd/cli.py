"""The `edgekd` command line: one thin click command per verb over the Python API (edgekd.api).

Heavy imports (torch, onnx) happen inside the API calls, so `edgekd validate` runs
on a device that has only numpy and ONNX Runtime. Errors (EdgeKDError) become one
line on stderr and their exit code (2 for the user's input, 1 for a failed result);
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from edgekd import __version__
from edgekd.errors import EdgeKDError, ModelError, Problems, first_line, raise_all
from edgekd.export_defaults import (CALIB_METHOD, CALIB_METHODS, CALIB_SAMPLES, DEFAULT_SEARCH_BUDGET_S, MAX_BATCH,
                                    MAX_SEARCH_BUDGET_S)
from edgekd.text import pct


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekd")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors (for bug reports).")
def cli(debug: bool) -> None:
    """edgekd: distill a large image classifier into a small, well-calibrated one
    (online BD-KD), export it to ONNX/TensorRT, and validate accuracy AND
    calibration on the target runtime.

    \b
      edgekd distill recipes/quickstart.yaml
      edgekd export                # newest run under runs/
      edgekd validate              # newest bundle under export/
    """


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

    variants = parse_variants(_csv(methods, split_top_level), _csv(deployed))
    seed_list = parse_seeds(_csv(seeds))
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


def _csv(value: str | None, split=lambda text, sep: text.split(sep)) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in split(value, ",") if v.strip()]
    if not items:
        raise click.BadParameter("expected a comma-separated list")
    return items


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle folder. Default: export/<run-name>/.")
@click.option("--formats", default="fp32,fp16,int8,int8_cpu", show_default=True,
              help="Comma-separated ONNX formats to write: fp32, fp16, int8 (symmetric INT8 QDQ for TensorRT and "
                   "ONNX Runtime), int8_cpu (uint8-activation INT8 QDQ, fast in ONNX Runtime on CPUs, not for "
                   "TensorRT). fp32 is always written.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines from the FP16 and INT8 ONNX files, never from "
                                          "int8_cpu (needs TensorRT and an NVIDIA GPU).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=CALIB_SAMPLES, show_default=True,
              help="Training-split images used to calibrate int8 and int8_cpu (never val images).")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=CALIB_METHOD,
              show_default=True, help="INT8 activation calibration method (int8 and int8_cpu share one calibration; "
                   "--int8-search tries every method, starting with this one).")
@click.option("--max-batch", type=click.IntRange(min=1), default=MAX_BATCH, show_default=True,
              help="Largest batch of the TensorRT optimization profile (min 1).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out (atomically).")
@click.option("--int8-search/--no-int8-search", default=None,
              help="Per INT8 file, search for the fastest one that passes the recipe's validate: gate (accuracy "
                   "and calibration), judged on the tune split (else training images held apart from calibration; "
                   "never val): calibration methods x per-channel weights, then the most harmful nodes back to "
                   "float. Default: the recipe's export.int8_search (false).")
@click.option("--search-budget", type=click.FloatRange(min=0, min_open=True, max=MAX_SEARCH_BUDGET_S), default=None,
              metavar="SECONDS", help=f"Time for the whole --int8-search (no candidate starts after it), > 0 and at "
                                      f"most {MAX_SEARCH_BUDGET_S:g} (a day). Default: the recipe's "
                                      f"export.search_budget ({DEFAULT_SEARCH_BUDGET_S:g}).")
@click.option("--temperature", default=None, metavar="fit|T",
              help="Ship a temperature inside every file: each file's output divided by T (a Div after its last op, "
                   "after the last dequantize of an INT8 file). 'fit' fits T by NLL on the run's tune split (never "
                   "val or test); a number > 0 is taken as given. The manifest records T, its source and its effect "
                   "on the tune split; validate measures the files as shipped.")
def export(run_dir, out, formats, trt, calib_samples, calib_method, max_batch, overwrite, int8_search,
           search_budget, temperature) -> int:
    """Export a run's student to a deployment bundle: ONNX FP32/FP16/INT8/INT8-for-CPUs (+ TensorRT engines).

    RUN_DIR defaults to the newest complete run under runs/. Parity with PyTorch
    and accuracy/ECE drift are measured on the run's val split and written into
    the bundle's manifest.json; see export/README.md for the bundle format.
    Exit 0 on success, 1 if an exported file disagrees with PyTorch or --int8-search
    finds no INT8 file that passes the gate (the bundle is written without it), 2 on bad input.
    """
    from edgekd import api

    api.export(run_dir, out=out, formats=_csv(formats), trt=trt, calib_samples=calib_samples,
               calib_method=calib_method, max_batch=max_batch, overwrite=overwrite, int8_search=int8_search,
               search_budget=search_budget, temperature=temperature, log=click.echo)
    return 0


@cli.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="digits | imagefolder:DIR | cifar10:DIR | cifar100:DIR. Default: the run's val split from the manifest.")
@click.option("--formats", default=None,
              help="Comma-separated: fp32, fp16, int8, int8_cpu, engine (engine_fp16, engine_int8). Default: every "
                   "file in the bundle the runtime can run (--runtime tensorrt: the engines + fp32; int8_cpu is "
                   "for CPUs: onnxruntime or openvino).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime",
              show_default=True,
              help="onnxruntime: the ONNX files in ONNX Runtime. openvino: the ONNX files (both INT8 flavours "
                   "included) in OpenVINO on the CPU, float math in f32, never bf16 (pip install 'edgekd[openvino]'). "
                   "tensorrt: the bundle's engines, plus fp32 in ONNX Runtime.")
@click.option("--providers", default=None,
              help="ONNX Runtime execution providers, comma-separated (default: all available; not with --runtime openvino).")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Batch size for throughput and metrics.")
@click.option("--max-ece", type=click.FloatRange(0, 1), default=None, help="Gate: maximum ECE (fraction, e.g. 0.05).")
@click.option("--max-acc-drop", type=click.FloatRange(0, 1), default=None, help="Gate: maximum top-1 drop vs the PyTorch reference.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None, help="Gate: minimum top-1 agreement with the reference.")
@click.option("--max-ece-drift", type=click.FloatRange(0, 1), default=None, help="Gate: maximum |ECE - reference ECE|.")
@click.option("--max-class-acc-drop", type=click.FloatRange(0, 1), default=None,
              help="Gate: maximum accuracy drop of the worst class against the FP32 ONNX file (the class is named).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, metavar="TAU",
              help="The confidence at and above which a device acts on a prediction; with it validate reports the "
                   "share of images on which each file decides as the FP32 file does (both reject, or both accept "
                   "the same class) and the share each accepts.")
@click.option("--min-threshold-agreement", type=click.FloatRange(0, 1), default=None,
              help="Gate: minimum share of the same decisions as the FP32 file at --threshold (needs a threshold).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write all results as JSON.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a Markdown report with reliability diagrams per format.")
@click.option("--save-predictions", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write labels and <format>_logits arrays (.npz) to recompute any metric.")
def validate(bundle, data_spec, formats, runtime, providers, batch, max_ece, max_acc_drop, min_agreement,
             max_ece_drift, max_class_acc_drop, threshold, min_threshold_agreement, json_path, report_dir,
             save_predictions) -> int:
    """Check an exported BUNDLE on this device's runtime: accuracy AND calibration, pass/fail.

    BUNDLE defaults to the newest bundle under export/. Runs without PyTorch.
    Thresholds come from the flags, else from the recipe's validate: section
    recorded in the manifest. Exit 0 if every check passes, 1 if a gate fails,
    2 on bad input.
    """
    from edgekd import api

    report = api.validate(bundle, data=data_spec, formats=_csv(formats), runtime=runtime, providers=_csv(providers),
                          batch=batch, max_ece=max_ece, max_acc_drop=max_acc_drop, min_agreement=min_agreement,
                          max_class_acc_drop=max_class_acc_drop, threshold=threshold,
                          min_threshold_agreement=min_threshold_agreement,
                          max_ece_drift=max_ece_drift, json_path=json_path, report_dir=report_dir,
                          save_predictions=save_predictions, log=click.echo)
    return 0 if report.passed else 1


@cli.command("models")
@click.argument("pattern", required=False)
@click.option("--source", "sources", default="builtin,plugins", show_default=True, metavar="LIST",
              help="Which models, comma-separated: builtin, plugins, timm (timm's need a PATTERN).")
@click.option("--image-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Input size (pixels, square) the parameter counts are for: data.image_size.")
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True,
              help="Input channels (1 for grayscale data such as digits).")
@click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Classes of the final layer.")
def models_command(pattern: str | None, sources: str, image_size: int, in_channels: int, num_classes: int) -> int:
    """List the models a recipe can name as teacher.arch or student.arch, in natural
    order (resnet8 before resnet14), with the parameter count and the compute of one
    image (MACs, counted by torch.utils.flop_counter) at the given input size, their
    options (with defaults) and their source: built in, the installed package that
    registers it through the `edgekd.models` entry point group (see README, "Bring
    your own model"), or timm (`timm/<name>`, with the timm extra). PATTERN filters
    the names, fnmatch style, case-insensitive: 'resnet*', '*mobilenet*'.
    A plugin that cannot be imported, or has a bad factory, is one line naming its
    package, exit 2. A name two packages (or a package and edgekd) claim is
    ambiguous: the others are listed, then one line names it, exit 2.
    """
    from edgekd.api import need_torch

    need_torch("models")
    from edgekd.models import ambiguous_models, model_catalog

    broken: list[ModelError] = []
    rows = model_catalog(num_classes, in_channels, image_size, broken, pattern, tuple(_csv(sources) or ()))
    table = [("model", "parameters", "MACs", "options", "source")] + [
        (m.name, f"{m.params:,}", _si(m.macs), ", ".join(f"{k}={v}" for k, v in m.options.items()) or "-", m.source)
        for m in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    click.echo(f"{len(rows)} model{'' if len(rows) == 1 else 's'}; parameters and MACs (one image) at "
               f"{image_size}x{image_size}, {in_channels} input channel{'s' if in_channels != 1 else ''}, "
               f"{num_classes} classes")
    for name, params, macs, options, source in table:
        click.echo(f"{name:<{widths[0]}}  {params:>{widths[1]}}  {macs:>{widths[2]}}  {options:<{widths[3]}}  {source}")
    # Every other model works; a recipe naming one of these gets the same line.
    raise_all([*broken, *(ModelError(line) for line in ambiguous_models().values())])
    return 0


def _si(n: int) -> str:
    """12,345,678 -> '12.3M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("EDGEKD_DEBUG") == "1"
    try:
        # obj: the raw arguments, which distill --nproc-per-node hands on to its processes.
        rv = cli.main(args=args, prog_name="edgekd", standalone_mode=False, obj={"argv": list(args)})
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("edgekd: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        if debug:
            raise
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        click.echo(f"edgekd: error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"edgekd: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except EdgeKDError as e:  # FailedCheck too: its exit_code is 1
        if debug:
            raise
        lines = [first_line(p) for p in e.problems] if isinstance(e, Problems) else [first_line(e)]
        for msg in lines:
            click.echo(f"edgekd: error: {msg}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("edgekd: interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
