"""Re-resolve the lock files the template ships (template/locks/resolved/), per Python, logger and torch build.

Run after changing the generated project's dependencies (template/pyproject.toml.jinja) or the list
of compromised releases (compromised-releases.yml):

    .venv/bin/python scripts/refresh_locks.py [--torch-wheels DIR] [--python 3.12 ...]

It renders the template once per Python version that `copier copy` offers and per logger, runs the
project's own `lock` subcommand in the render (uv keeps the versions the previous lock pinned where
they still fit), and keeps what it wrote as `<python>-<logger>-<variant>.txt`; the fine-tune
example's (`example: finetune`, whose `example` extra brings transformers, peft and datasets) as
`<python>-<logger>-finetune-<variant>.txt`. The template's tests
check that every offered Python gets its locks and that the shipped locks still match the rendered
pyproject.toml (`lock --check`), so a forgotten refresh fails CI.

Variants: `cuda` (PyPI's torch, the CUDA build) for every Python; `cpu` (PyTorch's CPU index) for
the Pythons in CPU_LOCK_PYTHONS. A CPU lock needs the CPU wheels' hashes from
download.pytorch.org/whl/cpu, or a folder holding those wheels (--torch-wheels); the machine these
locks were made on reaches neither for other Pythons than 3.11, which is why only 3.11 ships one
(the README of a project on another Python says how to make it: `<package> lock cpu`).
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
EXAMPLES = {"digits": "", "finetune": "-finetune"}  # the `example` answer -> its locks' infix
# The Pythons the python_version question offers (copier.yml), and those that get a CPU lock too.
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
CPU_LOCK_PYTHONS = ("3.11",)
RESOLVED = TOP / "template" / "locks" / "resolved"


def variants(python: str) -> list[str]:
    return ["cpu", "cuda"] if python in CPU_LOCK_PYTHONS else ["cuda"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-wheels", help="folder with the CPU torch wheel (instead of PyTorch's index)")
    parser.add_argument("--python", action="append", choices=PYTHONS, help="only these Pythons (default: all)")
    parser.add_argument("--example", action="append", choices=list(EXAMPLES), help="only these examples (default: all)")
    args = parser.parse_args()
    extra = ["--torch-wheels", args.torch_wheels] if args.torch_wheels else []
    package = EXAMPLE_ANSWERS["package_name"]
    pythons = args.python or PYTHONS
    examples = args.example or list(EXAMPLES)
    for python in PYTHONS:  # the template renders only when each file it includes exists
        for logger in LOGGERS:
            for infix in EXAMPLES.values():
                for variant in variants(python):
                    (RESOLVED / f"{python}-{logger}{infix}-{variant}.txt").touch()
    with tempfile.TemporaryDirectory() as scratch:
        template = snapshot_template(Path(scratch, "template"))
        for example in examples:
            for python in pythons:
                for logger in LOGGERS:
                    stem = f"{python}-{logger}{EXAMPLES[example]}"
                    project = Path(scratch, stem)
                    render(template, project, logger=logger, python_version=python, example=example)
                    env = {**os.environ, "PYTHONPATH": str(project / "src")}
                    run([sys.executable, "-m", package, "lock", *variants(python), *extra], cwd=project, env=env)
                    for lock in sorted((project / "locks").glob("*.txt")):
                        shutil.copyfile(lock, RESOLVED / f"{stem}-{lock.name}")
                        print(f"refresh-locks: {stem}-{lock.name}", flush=True)


if __name__ == "__main__":
    main()
