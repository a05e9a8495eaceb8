"""Pack CIFAR-10 images into one uint8 .npz for benchmarks/gpu_check.py on a lent GPU.

    .venv/bin/python benchmarks/make_gpu_data.py [--root /work/shared/data/cifar10/train] [--count 10000]

The GPU machine can fetch nothing, and only the working tree (plus a few carried
ignored folders) travels there, so the data goes as one small file in .gpu/
(ignored by git; carry ".gpu"). ROOT is an image folder (ROOT/<class>/<image>);
the first count / classes images of every class, in sorted file order, are taken,
so the set is balanced and the same on every run. Writes images [N, 32, 32, 3]
uint8 (RGB), labels [N] int64 and class_names.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def bad_input(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def pack(root: Path, count: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        bad_input(f"{root} has no class folders; expected ROOT/<class>/<image files>")
    per_class = count // len(classes)
    if per_class < 1:
        bad_input(f"--count {count} is less than the {len(classes)} classes; allowed: >= {len(classes)}")
    images, labels = [], []
    for label, name in enumerate(classes):
        paths = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
        if len(paths) < per_class:
            bad_input(f"{root / name} has {len(paths)} images, fewer than the {per_class} needed per class")
        for p in paths:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        labels += [label] * per_class
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("/work/shared/data/cifar10/train"))
    p.add_argument("--count", type=int, default=10_000, help="images in all (split evenly over the classes)")
    p.add_argument("--out", type=Path, default=Path(".gpu/cifar10-10k.npz"))
    args = p.parse_args()
    if not args.root.is_dir():
        bad_input(f"--root {args.root} is not a folder")
    images, labels, classes = pack(args.root, args.count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # written whole, then renamed: never a half-written .npz
    np.savez(buf, images=images, labels=labels, class_names=np.asarray(classes))
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(args.out)
    print(f"{args.out}: {len(labels)} images {images.shape[1]}x{images.shape[2]}, {len(classes)} classes, "
          f"{args.out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
