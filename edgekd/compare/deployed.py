"""`edgekd compare --deployed`: each run's student scored as the files it would ship. Needs torch.

A user deploys files, not a PyTorch net: FP32 ONNX, INT8 from a plain calibration, or the
INT8 file the search chooses against the recipe's gate. For every finished run this exports
the student (`edgekd export`, into OUT/bundles/), runs each asked-for file in ONNX Runtime on
the evaluation split (and the tune split), and saves the logits as that row's prediction
files, so the report's statistics (means over seeds, paired CIs) are those of the deployed
files. A `+ts` row's file is exported with `--temperature fit`: the temperature is fitted on
the tune split and folded into the file, as it would ship.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.compare import predictions
from edgekd.compare.variants import DEPLOYED, Variant
from edgekd.contracts import BundleManifest, RunLayout
from edgekd.data import load_split_images
from edgekd.data.preprocess import normalize
from edgekd.deploy import export_bundle
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.errors import CheckpointError

BUNDLES = "bundles"
_PLAIN_FORMATS = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int8_cpu": "int8_cpu"}


def bundle_name(run_name: str, posthoc: bool, search: bool) -> str:
    return f"{run_name}{'+ts' if posthoc else ''}{'-search' if search else ''}"


def export_groups(rows: list[Variant]) -> dict[tuple[bool, bool], list[Variant]]:
    """The rows of one run by the bundle they come from: (temperature folded in, INT8 search)."""
    groups: dict[tuple[bool, bool], list[Variant]] = {}
    for row in rows:
        groups.setdefault((row.base is not None, row.deployed == "int8_search"), []).append(row)
    return groups


def _images(manifest: BundleManifest, split: str) -> tuple[np.ndarray, np.ndarray]:
    images = load_split_images(manifest.data, split)
    pre = manifest.preprocessing
    return normalize(images.images, pre["mean"], pre["std"]), images.labels


def deploy_run(out: Path, run_name: str, seed: int, rows: list[Variant], trained_meta: dict[str, Any],
               eval_split: str, log: Callable[[str], Any]) -> None:
    """Export run `run_name` of `out` as `rows` need it and save each row's prediction files.
    `trained_meta`: the trained row's prediction meta (recipe, summary, teacher) this row inherits."""
    run_dir = out / "runs" / run_name
    if not RunLayout(run_dir).student.is_file():
        raise CheckpointError(f"{RunLayout(run_dir).student} is missing: --deployed exports each run's student, and this "
                              f"run was reused from its prediction files alone; train it again (remove "
                              f"{out / predictions.FOLDER / run_name}.*) or leave its deployed rows out")
    for (posthoc, search), group in export_groups(rows).items():
        folder = out / BUNDLES / bundle_name(run_name, posthoc, search)
        formats = ["fp32", *{_PLAIN_FORMATS.get(r.deployed, "int8_cpu") for r in group}]
        log(f"  exporting {', '.join(r.label for r in group)} into {folder}")
        export_bundle(run_dir=run_dir, out=folder, formats=sorted(set(formats)), overwrite=True, int8_search=search,
                      temperature="fit" if posthoc else None, log=lambda line: None)
        manifest = BundleManifest.read(folder)
        x, labels = _images(manifest, eval_split)
        tune = _images(manifest, "tune") if manifest.data.size("tune") else None
        for row in group:
            file = DEPLOYED[row.deployed]
            logits = onnxruntime_logits(folder / file, x)
            tune_logits = onnxruntime_logits(folder / file, tune[0]) if tune is not None else None
            meta = {**{k: trained_meta[k] for k in ("seed", "recipe_hash", "recipe", "eval_split", "eval_images",
                                                    "eval_images_digest", "teacher", "summary")},
                    "variant": row.label, "tune_images": 0 if tune is None else int(len(tune[1])),
                    "deployed": deployed_record(manifest, row.deployed, folder)}
            predictions.save(out, row.slug, seed, meta, labels, logits, None if tune is None else tune[1], tune_logits)


def deployed_record(manifest: BundleManifest, flavour: str, folder: Path) -> dict[str, Any]:
    """What a deployed row's prediction file says of its file: where it is, how it was quantized, the
    temperature inside it, and for int8_search the chosen candidate and its speed against FP32."""
    file = DEPLOYED[flavour]
    entry = manifest.files[file]
    record: dict[str, Any] = {"flavour": flavour, "file": file, "bundle": str(folder), "sha256": entry["sha256"],
                              "quantization": entry.get("quantization"),
                              "temperature": manifest.temperature_value}
    search = manifest.int8_search
    if flavour == "int8_search" and search:
        found = search["files"][file]
        chosen = found["candidates"][found["chosen"]]
        record["search"] = {"candidate": chosen["index"], "float_nodes": chosen["float_nodes"],
                            "images_per_s": chosen["images_per_s"],
                            "fp32_images_per_s": search["reference"]["images_per_s"],
                            "speed_vs_fp32": chosen["images_per_s"] / search["reference"]["images_per_s"],
                            "tried": len(found["candidates"]), "seconds": found["seconds"]}
    return record
