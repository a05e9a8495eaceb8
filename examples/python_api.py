"""distill -> export -> validate from Python, on the digits (recipes/quickstart.yaml cut to 2 epochs).

    python examples/python_api.py

Writes runs/quickstart-<time>/ and export/quickstart-<time>/ under the current folder
and prints each step's figures. Two epochs are enough to see every step work, not to
pass the recipe's gate (ECE <= 5%): the full recipe (25 epochs) is what passes it.
"""

from pathlib import Path

import edgekd

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def main() -> None:
    # Any recipe key can be overridden, like --set on the command line.
    run = edgekd.distill(RECIPE, overrides={"train.epochs": 2},
                         on_epoch=lambda rec: print(f"epoch {rec['epoch']}: student acc {rec['student_accuracy']:.2%}"))
    for role, m in (("teacher", run.teacher_metrics), ("student", run.student_metrics)):
        print(f"{role}: acc {m['accuracy']:.2%} ECE {m['ece']:.2%} NLL {m['nll']:.4f}")
    print(f"run {run.path}")

    bundle = edgekd.export(run)  # FP32, FP16, INT8 and INT8-for-CPUs ONNX files, each checked against PyTorch
    print(f"bundle {bundle.path}: {', '.join(bundle.formats.values())}")

    report = edgekd.validate(bundle)  # ONNX Runtime on the run's val split; torch is not needed here
    for fmt, m in report.formats.items():
        print(f"{fmt:<9} acc {m['accuracy']:.2%}  ECE {m['ece']:.2%}  agreement with fp32 {m['agreement']:.2%}")
    for check in report.checks:
        if check.status == "fail":
            print(f"failed: {check.format} {check.metric} {check.value:.2%} (limit {check.op} {check.threshold:.2%})")
    print(report.verdict)


if __name__ == "__main__":
    main()
