"""The generated project's lock files (locks/<build>.txt) and its `lock` subcommand.

The locks the template ships (template/locks/resolved/, one per logger and torch build, made by
scripts/refresh_locks.py) must match the pyproject.toml each answer renders, and pin the torch of
torch-pin.txt. `lock` resolves with uv against PyPI (a registry this machine reaches); the CPU torch
wheel comes from the machine's wheel folder, where PyTorch's own index is out of reach. That the
project's tests pass in an environment installed from locks/cpu.txt is shown by test_readme_commands
(its project is installed from the lock and runs `pytest`) and the example_project fixture.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from template_dev import TORCH_PIN, render, run

PACKAGE = "digits_mlp"
TORCH_WHEELS = Path("/opt/wheels")  # this machine's folder of local wheels (pip's find-links)


def lock_command(project: Path, *args: str, check: bool = True):
    env = {"PYTHONPATH": str(project / "src")}
    return run([sys.executable, "-m", PACKAGE, "lock", *args], cwd=project, env=env, check=check)


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_the_shipped_locks_match_each_rendered_project(template_repo, tmp_path, logger) -> None:
    project = tmp_path / logger
    render(template_repo, project, logger=logger)
    done = lock_command(project, "--check", check=False)
    assert done.returncode == 0, f"run scripts/refresh_locks.py:\n{done.stdout}{done.stderr}"
    cpu, cuda = ((project / "locks" / f"{name}.txt").read_text() for name in ("cpu", "cuda"))
    version = TORCH_PIN.removeprefix("torch==")
    assert f"\ntorch=={version}+cpu \\\n" in cpu and f"\ntorch=={version} \\\n" in cuda
    assert "nvidia-" not in cpu and "\nnvidia-cublas" in cuda  # only the CUDA build brings CUDA libraries
    assert cpu.count("--hash=sha256:") > 80 and "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu
    # the `export` extra resolved together with the pinned torch: installing it leaves torch alone
    assert all(f"\n{name}==" in cpu for name in ("onnx", "onnxruntime", "onnxscript"))
    logger_package = {"csv": None, "tensorboard": "\ntensorboard==", "wandb": "\nwandb=="}[logger]
    if logger_package:
        assert logger_package in cpu


def test_check_names_a_stale_lock_and_disagreeing_variants(template_repo, tmp_path) -> None:
    project = tmp_path / "project"
    render(template_repo, project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6",', '"pyyaml>=6",\n    "tqdm>=4",'))
    stale = lock_command(project, "--check", check=False)
    assert stale.returncode == 1
    assert "locks/cpu.txt is stale: pyproject.toml's dependencies changed" in stale.stdout
    assert "locks/cuda.txt is stale" in stale.stdout
    render(template_repo, project / "fresh")
    cuda = project / "fresh" / "locks" / "cuda.txt"
    cuda.write_text(cuda.read_text().replace("\nnumpy==", "\nnumpy==0.0.1.dev0 \\\n    --hash=sha256:0\nold-numpy=="))
    apart = lock_command(project / "fresh", "--check", check=False)
    assert apart.returncode == 1 and "cpu.txt and cuda.txt pin different versions: numpy" in apart.stdout
    unknown = lock_command(project, "rocm", check=False)
    assert unknown.returncode == 2 and "unknown variant rocm: choose from cpu, cuda, cu126, cu128" in unknown.stderr


@pytest.mark.skipif(
    not list(TORCH_WHEELS.glob("torch-*+cpu-*.whl")), reason=f"no CPU torch wheel in {TORCH_WHEELS} (PyTorch's index)"
)
def test_lock_resolves_a_new_dependency_into_every_variant(template_repo, tmp_path) -> None:
    project = tmp_path / "project"
    render(template_repo, project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6",', '"pyyaml>=6",\n    "tqdm>=4",'))
    old_umask = os.umask(0o022)
    try:
        done = lock_command(project, "--torch-wheels", str(TORCH_WHEELS))
    finally:
        os.umask(old_umask)
    assert "wrote locks/cpu.txt" in done.stdout and "wrote locks/cuda.txt" in done.stdout
    for name in ("cpu", "cuda"):
        lock = project / "locks" / f"{name}.txt"
        assert "\ntqdm==" in lock.read_text()
        assert stat.S_IMODE(lock.stat().st_mode) == 0o644  # readable by the team, like any file git checks out
    assert lock_command(project, "--check").stdout.startswith("lock: 2 lock file(s) up to date and consistent")
