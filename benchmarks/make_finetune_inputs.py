"""STAND-IN pretrained files for recipes/finetune-imagefolder.yaml: random weights, real formats.

    .venv/bin/python benchmarks/make_finetune_inputs.py --out DIR [--num-classes 10] [--image-size 96] [--seed 0]

Nothing can be downloaded on the machines this project runs on, so this writes files
in the formats the recipe expects, filled with RANDOM weights (a fixed seed):

  DIR/mobilenet_v2-STANDIN-random.pth  torchvision's mobilenet_v2 with 1000 classes, saved the
                                       way torchvision ships its ImageNet file (a bare state_dict)
  DIR/teacher-STANDIN-random.pt        an edgekd resnet18 with NUM_CLASSES outputs built for
                                       IMAGE_SIZE (torchvision's stem above 64 px), a state_dict

They let the recipe run end to end (to time it, to test it); they teach the student
nothing, and the names say so. Real runs use torchvision's real file and a teacher you
trained; point the recipe at them with --set student.checkpoint=... / teacher.checkpoint=....
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STUDENT_FILE = "mobilenet_v2-STANDIN-random.pth"
TEACHER_FILE = "teacher-STANDIN-random.pt"


def make(out: Path, num_classes: int, image_size: int, seed: int) -> tuple[Path, Path]:
    import torch
    import torchvision

    from edgekd import files
    from edgekd.models import build_model

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    student = torchvision.models.mobilenet_v2(weights=None, num_classes=1000)
    teacher = build_model("resnet18", num_classes, 3, image_size)
    paths = out / STUDENT_FILE, out / TEACHER_FILE
    for net, path in zip((student, teacher), paths):
        files.torch_save(net.state_dict(), path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the two files (created)")
    p.add_argument("--num-classes", type=int, default=10, help="the teacher's classes: your class folders (default 10)")
    p.add_argument("--image-size", type=int, default=96, help="data.image_size of the run (default 96)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.num_classes < 2 or a.image_size < 8:
        print(f"error: need --num-classes >= 2 and --image-size >= 8, got {a.num_classes} and {a.image_size}",
              file=sys.stderr)
        return 2
    for path in make(a.out, a.num_classes, a.image_size, a.seed):
        print(f"wrote {path} (STAND-IN: random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
