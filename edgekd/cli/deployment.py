"""The commands that ship a student: `edgekd export` (a run -> a bundle) and `edgekd validate`
(a bundle checked on this device's runtime; runs without PyTorch)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekd.cli.group import cli, csv_list
from edgekd.export_defaults import (CALIB_METHOD, CALIB_METHODS, CALIB_SAMPLES, DEFAULT_SEARCH_BUDGET_S, MAX_BATCH,
                                    MAX_SEARCH_BUDGET_S)


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

    api.export(run_dir, out=out, formats=csv_list(formats), trt=trt, calib_samples=calib_samples,
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
                   "for CPUs: onnxruntime or openvino), except, for an INT8-aware (train.quantize) run, the fp32 "
                   "and fp16 files, whose float weights are not the network it trained.")
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

    report = api.validate(bundle, data=data_spec, formats=csv_list(formats), runtime=runtime, providers=csv_list(providers),
                          batch=batch, max_ece=max_ece, max_acc_drop=max_acc_drop, min_agreement=min_agreement,
                          max_class_acc_drop=max_class_acc_drop, threshold=threshold,
                          min_threshold_agreement=min_threshold_agreement,
                          max_ece_drift=max_ece_drift, json_path=json_path, report_dir=report_dir,
                          save_predictions=save_predictions, log=click.echo)
    return 0 if report.passed else 1
