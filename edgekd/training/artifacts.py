"""What a finished run leaves next to its last.pt: summary.json, student.pt,
eval_logits.npz and one reliability diagram per net.

`evals` maps "teacher" and "student" to their NetEval on the evaluation split,
as Trainer.evaluate returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import edgekd
from edgekd import calibration, files
from edgekd.contracts import EvalLogits, Evals, RunLayout, StudentCheckpoint
from edgekd.training import checkpoint as ckpt
from edgekd.training.setup import Setup
from edgekd.models import count_parameters



def write_artifacts(setup: Setup, run_dir: Path, evals: Evals, epochs: int, history: list[dict[str, Any]],
                    loader_kind: str) -> dict[str, Any]:
    """Write the finished run's files; summary.json last, as the mark of a complete run.
    Returns the summary."""
    from edgekd import plots

    recipe, data = setup.recipe, setup.data
    summary: dict[str, Any] = {
        "run": run_dir.name,
        "recipe": recipe.name,
        "recipe_hash": recipe.digest(),
        "method": recipe.distill.method,
        "epochs": epochs,
        "eval_split": recipe.train.eval_split,
        "eval_images": evals["student"].n,
        "train_seconds": float(sum(h["seconds"] for h in history)),
        "split": data.split_info.to_dict(),
        "edgekd_version": edgekd.__version__,
        "torch_version": torch.__version__,
        "device": str(setup.device),
        "loader": loader_kind,
        "processes": setup.dist.world_size,
        # What train.channels_last / compile / amp resolved to, and why (auto or the recipe).
        "speed_settings": setup.speed.to_dict(),
    }
    last_epoch = history[-1] if history else {}
    for role, net in (("teacher", setup.teacher), ("student", setup.student)):
        logits, labels, metrics = evals[role].logits, evals[role].labels, evals[role].metrics
        arch = getattr(recipe, role).arch
        summary[role] = {
            "arch": arch,
            "params": count_parameters(net),
            **{k: metrics[k] for k in calibration.METRIC_KEYS},
            "train_accuracy": last_epoch.get(f"{role}_train_accuracy"),
            "ts_headroom": calibration.temperature_headroom(logits, labels),
        }
        if role in setup.init_reports:  # started from a pretrained file with init: backbone
            summary[role]["init"] = setup.init_reports[role].to_dict()
        plots.reliability_diagram(
            calibration.reliability_bins(logits, labels), RunLayout(run_dir).reliability(role),
            title=f"{role} {arch} ({recipe.distill.method}) on {recipe.train.eval_split}",
        )
    layout = RunLayout(run_dir)
    EvalLogits.of(teacher=evals["teacher"], student=evals["student"]).write(layout.eval_logits)
    from edgekd.training.quantize import QuantizedStudent

    student = setup.student
    quantized = isinstance(student, QuantizedStudent)
    # A quantize run's student.pt keeps the float net's weights under the keys of the model edgekd
    # builds by name (teachers, export's FP32 file), and the fake quantizers' state beside them.
    weights = student.float_state() if quantized else student.state_dict()

    def on_cpu(state: dict) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    ckpt.save_student(layout.student, StudentCheckpoint(
        arch=recipe.student.arch,
        options=dict(recipe.student.options),
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        state_dict=on_cpu(weights),
        quantize={"flavour": student.flavour, "state": on_cpu(student.quant_state())} if quantized else None,
        preprocessing=data.preprocessing(),
        class_names=list(data.class_names),
        split=data.split_info,
        recipe=recipe.to_dict(),
        recipe_hash=recipe.digest(),
        metrics={k: summary["student"][k] for k in calibration.METRIC_KEYS},
        edgekd_version=edgekd.__version__,
    ))
    files.write_json(layout.summary, summary)
    return summary
