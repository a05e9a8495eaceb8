#!/usr/bin/env bash
# Download, here, the wheels edgekd needs on the lent GPU machine that its image
# lacks (it has torch, numpy, pyyaml, click, rich, matplotlib, pillow, but not
# pydantic), for its Python 3.12 on manylinux x86_64. Nothing can be fetched
# there, so they travel in .gpu/wheels (ignored by git; carry ".gpu").
#
#   bash benchmarks/gpu_wheels.sh            # -> .gpu/wheels/*.whl
# There: pip install --no-index --find-links .gpu/wheels pydantic
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-/work/main/.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"
mkdir -p .gpu/wheels
$PIP download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --implementation cp --abi cp312 --dest .gpu/wheels \
    "pydantic>=2.5" pydantic-core annotated-types typing-inspection typing-extensions
ls -l .gpu/wheels
