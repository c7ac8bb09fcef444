#!/usr/bin/env bash
# Render a project from this working tree, install it and train its example.
# Usage: bash scripts/try-example.sh [DESTINATION]   (default: ./example-project, replaced if present)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-example-project}"
bash scripts/setup-venv.sh
exec .venv/bin/python scripts/try_example.py "$DEST"
