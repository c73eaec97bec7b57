#!/usr/bin/env bash
# Wheels for the GPU machine: the packages privfl needs that its bare image lacks.
#
#   bash benchmarks/gpu_wheels.sh [DIR]          (here, where PyPI is reachable; DIR defaults to .whl)
#
# The lent nvidia-h200 image (the device tool's KINDS.md, read 2026-11-17: Python 3.12, torch 2.11 with CUDA,
# numpy, scipy, scikit-learn, scikit-image, matplotlib, PyYAML, tqdm, pytest, hypothesis, absl-py, attrs,
# wrapt, mpmath, opt-einsum, typing-extensions) has no opacus, dp-accounting, dm-tree, pydantic,
# pydantic-core, annotated-types or typing-inspection, and nothing outside it can be reached from it.
# This script downloads those (no dependencies) for CPython $PYVER on manylinux x86-64, at the versions this
# project is tested with here. benchmarks/gpu_check.sh installs whatever lies in .whl/ into /tmp/site
# first; the device call names `.whl` in `carry` (.whl/ is git-ignored):
#
#   bash benchmarks/gpu_wheels.sh
#   device run: command  ONLY="issue17 issue18" bash benchmarks/gpu_check.sh $OUT   carry [".whl"]   timeout_s 590
#
# PYVER=3.11 gives wheels for this machine's Python, for a dry run of the install path in a bare venv.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYVER=${PYVER:-3.12}
PIP=${PIP:-python3 -m pip}
WHEELS=(
    opacus==1.6.0
    dp-accounting==0.6.0
    dm-tree==0.1.10
    pydantic==2.13.4
    pydantic-core==2.46.4
    annotated-types==0.7.0
    typing-inspection==0.4.2
)
mkdir -p "$DIR"
rm -f "$DIR"/*.whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done
$PIP download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${PLATFORMS[@]}" \
    -d "$DIR" "${WHEELS[@]}"
echo "saved in $DIR for CPython $PYVER:"
ls -1 "$DIR"
du -sh "$DIR"
