#!/usr/bin/env bash
# The template's whole test suite: sets up .venv, then renders projects and runs their checks.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k render`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest tests "$@"
