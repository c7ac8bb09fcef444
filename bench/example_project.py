"""The example project for the benchmarks: rendered from this working tree, importable in-process.

BENCH_PROJECT, when set, names a project rendered beforehand (bench/prepare_gpu_checks.py): it is
copied instead of rendered, on a machine without copier (a lent GPU machine).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]


def use_rendered_example(prefix: str) -> tuple[Path, float]:
    """Render the example project into a new temporary directory and work in it from this process.

    The project becomes the working directory and importable (`digits_mlp`), its runs go to a
    `runs/` directory beside it, and Lightning's info lines are silenced. Returns the temporary
    directory and the seconds `copier copy` took.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    started = time.perf_counter()
    if os.environ.get("BENCH_PROJECT"):
        shutil.copytree(os.environ["BENCH_PROJECT"], work / "project", symlinks=True)
    else:
        from template_dev import render, snapshot_template

        render(snapshot_template(work / "template"), work / "project")
    rendered = time.perf_counter() - started
    os.chdir(work / "project")
    os.environ["RUNS_DIR"] = str(work / "runs")
    sys.path.insert(0, str(work / "project" / "src"))
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)  # Lightning sets its own levels on the last two
    return work, rendered


def command_cost(arguments: list[str], env: dict, first: str = "") -> tuple[float, float]:
    """CPU (user + system, its children included) and wall seconds of one command of the example
    project, `main(arguments)` in a fresh process that runs the code `first` before it."""
    code = first + f"import sys; from digits_mlp.cli import main; sys.exit(main({arguments!r}))"
    before, started = os.times(), time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return cpu, time.perf_counter() - started
