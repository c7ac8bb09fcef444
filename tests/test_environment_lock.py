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
import re
import stat
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from template_dev import TOP, TORCH_PIN, render, run

PACKAGE = "digits_mlp"
TORCH_WHEELS = Path("/opt/wheels")  # this machine's folder of local wheels (pip's find-links)


def lock_command(project: Path, *args: str, check: bool = True):
    env = {"PYTHONPATH": str(project / "src")}
    return run([sys.executable, "-m", PACKAGE, "lock", *args], cwd=project, env=env, check=check)


@pytest.mark.parametrize(
    ("logger", "example"), [("csv", "digits"), ("tensorboard", "digits"), ("wandb", "digits"), ("csv", "finetune")]
)
def test_the_shipped_locks_match_each_rendered_project(template_repo, tmp_path, logger, example) -> None:
    project = tmp_path / logger
    render(template_repo, project, logger=logger, example=example)
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
    # the fine-tune example's own packages, in both variants; the digits example needs none of them
    for name in ("transformers", "peft", "datasets", "huggingface-hub", "safetensors"):
        assert all((f"\n{name}==" in lock) == (example == "finetune") for lock in (cpu, cuda)), name


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


def offered_pythons() -> list[str]:
    """The Pythons the python_version question accepts (its validator in copier.yml)."""
    validator = yaml.safe_load((TOP / "copier.yml").read_text())["python_version"]["validator"]
    return re.findall(r"'(3\.\d+)'", validator.split("not in", 1)[1].split("]", 1)[0])


@pytest.mark.parametrize("python", offered_pythons())
def test_every_offered_python_gets_its_locks(template_repo, tmp_path, python) -> None:
    """locks/cuda.txt for every Python and both examples; locks/cpu.txt where the CPU wheels' hashes could be
    had (3.11)."""
    for example in ("digits", "finetune"):
        project = tmp_path / f"{python}-{example}"
        render(template_repo, project, python_version=python, logger="wandb", example=example)
        locks = sorted(path.name for path in (project / "locks").glob("*.txt"))
        assert locks == (["cpu.txt", "cuda.txt"] if python == "3.11" else ["cuda.txt"])
        for name in locks:
            assert f"python: {python}   platform:" in (project / "locks" / name).read_text()
        done = lock_command(project, "--check", check=False)
        assert done.returncode == 0, f"run scripts/refresh_locks.py:\n{done.stdout}{done.stderr}"


def compromised() -> dict[str, list[str]]:
    listed = yaml.safe_load((TOP / "compromised-releases.yml").read_text())
    return {package: [str(release["version"]) for release in releases] for package, releases in listed.items()}


def test_no_range_or_lock_admits_a_compromised_release(template_repo, tmp_path) -> None:
    from packaging.requirements import Requirement

    listed = compromised()
    assert listed["lightning"] == ["2.6.2", "2.6.3"]  # GHSA-w37p-236h-pfx3
    ranges = [line.split("#")[0].strip() for line in (TOP / "requirements-test.txt").read_text().splitlines()]
    for logger in ("csv", "tensorboard", "wandb"):
        render(template_repo, tmp_path / logger, logger=logger)
        project = tomllib.loads((tmp_path / logger / "pyproject.toml").read_text())["project"]
        ranges += project["dependencies"] + [
            item for extra in project["optional-dependencies"].values() for item in extra
        ]
        copied = tmp_path / logger / "src" / PACKAGE / "kit" / "cluster" / "compromised_releases.yml"
        assert yaml.safe_load(copied.read_text()) == yaml.safe_load((TOP / "compromised-releases.yml").read_text())
    checked = 0
    for text in filter(None, ranges):
        requirement = Requirement(text)
        for version in listed.get(requirement.name.lower(), []):
            assert not requirement.specifier.contains(version, prereleases=True), f"{text} admits {version}"
            checked += 1
    assert checked >= 8  # lightning in requirements-test.txt and in each logger's pyproject.toml, twice each
    for lock in (TOP / "template" / "locks" / "resolved").glob("*.txt"):
        text = lock.read_text()
        for package, versions in listed.items():
            for version in versions:
                assert f"\n{package}=={version} " not in text, f"{lock.name} pins {package} {version}"


def test_doctor_fails_on_an_installed_compromised_release(example_package) -> None:
    from digits_mlp.kit.cluster.doctor import check_compromised

    assert check_compromised({"lightning": "2.6.6", "torch": "2.13.0+cpu"}, PACKAGE).verdict == "PASS"
    found = check_compromised({"lightning": "2.6.3"}, PACKAGE)
    assert found.verdict == "FAIL" and "lightning 2.6.3 (GHSA-w37p-236h-pfx3: a credential stealer" in found.detail
    assert "install it again from the lock" in found.fix and "rotate them" in found.fix


def test_doctor_names_a_lock_made_for_another_python(example_package, tmp_path) -> None:
    from digits_mlp.kit.cluster.doctor import check_lock

    lock = tmp_path / "cuda.txt"
    lock.write_text("# variant: cuda   torch: torch==2.13.0   python: 3.12   platform: x\n# inputs-sha256: abc\n")
    other = check_lock(lock, "abc", {}, PACKAGE, "2.13.0")
    running = "{}.{}".format(*sys.version_info[:2])
    assert other.verdict == "FAIL" and f"is for Python 3.12, this is Python {running}" in other.detail
    assert "python3.12 -m venv" in other.fix and "digits_mlp lock" in other.fix
