"""Prepare bench/gpu_checks.py for a lent GPU machine, and print the device call that runs it.

That machine has no copier, no package index and no network, and its Python (3.12) holds torch,
Lightning, torchmetrics, transformers, peft and most of what the projects need, but not all (its
image's package list: the device tool's KINDS.md). Here, into `.gpu-checks/` (git-ignored; the call
carries it):

- projects/digits-mlp, projects/ticket-topics: the two examples rendered from this working tree;
- wheels/: the packages below, at the versions the projects' locks/cuda.txt pin, built for that
  machine's Python (pip download, no dependencies: each one the checks import is named here).

    .venv/bin/python bench/prepare_gpu_checks.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from template_dev import render, snapshot_template

TOP = Path(__file__).resolve().parents[1]
PREPARED = TOP / ".gpu-checks"
DEVICE_PYTHON = "3.12"
# What the projects import on the checks' paths and the GPU image lacks (KINDS.md, read 2026-11-17):
# the CLI's parser, `reproduce`'s task runner and `sweep` (imported by the kit's commands), and the
# fine-tune example's data. Developer tools (copier, pre-commit, ruff, uv) and `serve`'s stack are
# left out: the checks do not run them.
CARRIED = [
    "jsonargparse", "docstring-parser", "typeshed-client", "doit",
    "optuna", "alembic", "sqlalchemy", "mako", "colorlog",
    "datasets", "dill", "multiprocess",
]  # fmt: skip
MANYLINUX = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# The device tool's limit on what a call carries (the working tree included).
CARRY_LIMIT_BYTES = 64 * 2**20


def locked_versions(lock: Path) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r"(?m)^([A-Za-z0-9_.\-]+)==(\S+)", lock.read_text())}


def download_wheels(versions: dict[str, str], destination: Path) -> None:
    platforms = [option for platform in MANYLINUX for option in ("--platform", platform)]
    pins = [f"{name}=={versions[name]}" for name in CARRIED]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(destination), *pins],
        check=True,
    )  # fmt: skip


def main() -> None:
    shutil.rmtree(PREPARED, ignore_errors=True)
    template = snapshot_template(PREPARED / "template")
    projects = PREPARED / "projects"
    render(template, projects / "digits-mlp")
    render(template, projects / "ticket-topics", example="finetune", project_name="Ticket Topics",
           package_name="ticket_topics")  # fmt: skip
    shutil.rmtree(template)
    versions = locked_versions(projects / "digits-mlp" / "locks" / "cuda.txt")
    versions |= locked_versions(projects / "ticket-topics" / "locks" / "cuda.txt")
    download_wheels(versions, PREPARED / "wheels")
    size = sum(path.stat().st_size for path in PREPARED.rglob("*") if path.is_file())
    print(f"prepared {PREPARED.relative_to(TOP)}: {size / 2**20:.1f} MiB (a call carries at most 64 MiB)")
    if size > CARRY_LIMIT_BYTES * 0.8:
        sys.exit("error: too large to carry beside the working tree")
    print('The device call (run, carry [".gpu-checks"], timeout_s 600):')
    print(
        "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-checks/wheels/*.whl"
        ' && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_checks.py --prepared .gpu-checks --out "$OUT"'
    )


if __name__ == "__main__":
    main()
