"""Render a project from this working tree into DEST, install it in DEST/.venv and train the example."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]

from template_dev import EXAMPLE_ANSWERS, make_project_venv, render, snapshot_template  # noqa: E402


def main() -> int:
    destination = Path(sys.argv[1] if len(sys.argv) > 1 else "example-project").resolve()
    if destination.exists():
        shutil.rmtree(destination)
    started = time.perf_counter()
    template = snapshot_template(destination.parent / f".{destination.name}-template")
    render(template, destination)
    shutil.rmtree(template)
    venv = make_project_venv(destination)
    print(f"Rendered and installed {destination} in {time.perf_counter() - started:.1f} s", flush=True)
    command = venv.script(EXAMPLE_ANSWERS["package_name"])
    done = subprocess.run([str(command), "fit"], cwd=destination)
    print(f"copier copy -> trained example: {time.perf_counter() - started:.1f} s")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
