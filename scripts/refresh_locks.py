"""Re-resolve the lock files the template ships (template/locks/resolved/), one per logger and torch build.

Run after changing the generated project's dependencies (template/pyproject.toml.jinja):

    .venv/bin/python scripts/refresh_locks.py [--torch-wheels DIR]

It renders the template once per logger (Python 3.11, the default), runs the project's own
`lock` subcommand in the render, and keeps what it wrote. The template's tests check that the
shipped locks still match the rendered pyproject.toml (`lock --check`), so a forgotten refresh fails
CI. --torch-wheels: a folder holding the CPU torch wheel, where PyTorch's index cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from template_dev import EXAMPLE_ANSWERS, TOP, render, run, snapshot_template  # noqa: E402

LOGGERS = ("csv", "tensorboard", "wandb")
RESOLVED = TOP / "template" / "locks" / "resolved"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-wheels", help="folder with the CPU torch wheel (instead of PyTorch's index)")
    args = parser.parse_args()
    extra = ["--torch-wheels", args.torch_wheels] if args.torch_wheels else []
    package = EXAMPLE_ANSWERS["package_name"]
    for logger in LOGGERS:  # the template renders only when each file it includes exists
        for variant in ("cpu", "cuda"):
            (RESOLVED / f"{logger}-{variant}.txt").touch()
    with tempfile.TemporaryDirectory() as scratch:
        template = snapshot_template(Path(scratch, "template"))
        for logger in LOGGERS:
            project = Path(scratch, logger)
            render(template, project, logger=logger)
            env = {**os.environ, "PYTHONPATH": str(project / "src")}
            run([sys.executable, "-m", package, "lock", "cpu", "cuda", *extra], cwd=project, env=env)
            for lock in sorted((project / "locks").glob("*.txt")):
                shutil.copyfile(lock, RESOLVED / f"{logger}-{lock.name}")
                print(f"refresh-locks: {logger}-{lock.name}")


if __name__ == "__main__":
    main()
