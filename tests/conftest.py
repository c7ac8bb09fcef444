"""Fixtures: a committed snapshot of the template, and the example project rendered and installed once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from template_dev import EXAMPLE_ANSWERS, TOP, ProjectVenv, commit_all, make_project_venv, render, snapshot_template

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
_CHECKOUT_BEFORE = pytest.StashKey[set]()


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return snapshot_template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def example_project(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ProjectVenv]:
    """The example project, rendered with example-answers.yml and installed as its README says."""
    project = tmp_path_factory.mktemp("projects") / "digits-mlp"
    render(template_repo, project)
    commit_all(project, "Start from copier-lightning")
    return project, make_project_venv(project, standalone=True)


@pytest.fixture(scope="session")
def example_command(example_project) -> list[str]:
    _, venv = example_project
    return [str(venv.script(EXAMPLE_ANSWERS["package_name"]))]


@pytest.fixture(scope="session")
def example_package(example_project) -> Path:
    """The example project's package importable in this process (for fast in-process tests)."""
    project, _ = example_project
    assert EXAMPLE_ANSWERS["package_name"] == "digits_mlp"  # the in-process tests import it by this name
    sys.path.insert(0, str(project / "src"))
    yield project
    sys.path.remove(str(project / "src"))


@pytest.fixture(autouse=True)
def _work_in_a_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts in its own temporary directory: project code that writes relative paths
    (data/, runs/) must never write into the template's checkout (copier would then render a dirty
    template and report a bogus version)."""
    monkeypatch.chdir(tmp_path)


def _checkout_changes() -> set[str]:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=TOP, capture_output=True, text=True
    )
    return set(status.stdout.splitlines())


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_CHECKOUT_BEFORE] = _checkout_changes()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test changed or added files in the checkout (see the fixture above)."""
    written = _checkout_changes() - session.config.stash.get(_CHECKOUT_BEFORE, set())
    if written:
        print("\nThe tests wrote into the template's checkout (tests must write to temporary directories):")
        print("\n".join(f"  {line}" for line in sorted(written)))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
