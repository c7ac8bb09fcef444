#!/usr/bin/env bash
# Create .venv with everything the template's tests, example and benchmarks need.
# torch goes in first and pinned: resolved as a bare dependency, pip would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# The pin lives in torch-pin.txt alone; TORCH_SPEC overrides it for another build.
TORCH_SPEC="${TORCH_SPEC:-$(cat torch-pin.txt)}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -r requirements-test.txt
.venv/bin/python -m pip install --quiet --no-deps -e .   # template_dev.py, the tests' and benchmarks' helper
echo "setup-venv: .venv ready ($(.venv/bin/python -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'))"
