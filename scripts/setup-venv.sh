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
# The rest through uv, pinned: it downloads and unpacks in parallel (about 30 s where pip took 75 s on
# 2 cores, docs/benchmarks.md). torch stays pip's: pip reads the machine's own configuration (a local
# CPU wheel, a constraint), which uv does not. --compile-bytecode: pip writes .pyc files on install,
# uv only when asked; without them, where PYTHONDONTWRITEBYTECODE is set (as on this machine), every
# test process would compile the libraries' sources again.
.venv/bin/python -m pip install --quiet "uv==0.13.9"
.venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode -r requirements-test.txt
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .   # template_dev.py, the tests' helper
echo "setup-venv: .venv ready ($(.venv/bin/python -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'))"
