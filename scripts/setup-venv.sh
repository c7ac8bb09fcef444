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
# --no-compile, then compileall on every core: pip writes torch's 2,300 .pyc files one at a time
# (32 s for the install, 20 s this way); compileall exits 1 for torch's one Python-3.12-only file,
# which pip skips in silence too.
.venv/bin/python -m pip install --quiet --no-compile "$TORCH_SPEC"
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
# The rest through uv, pinned: it downloads and unpacks in parallel (about 30 s where pip took 75 s on
# 2 cores, docs/benchmarks.md). torch stays pip's: pip reads the machine's own configuration (a local
# CPU wheel, a constraint), which uv does not. --compile-bytecode: pip writes .pyc files on install,
# uv only when asked; without them, where PYTHONDONTWRITEBYTECODE is set (as on this machine), every
# test process would compile the libraries' sources again.
.venv/bin/python -m pip install --quiet "uv==0.13.9"
.venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode -r requirements-test.txt
.venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps -e .   # template_dev.py, the tests' helper
echo "setup-venv: .venv ready ($(.venv/bin/python -c 'from importlib.metadata import version; print("torch", version("torch"), "lightning", version("lightning"))'))"
