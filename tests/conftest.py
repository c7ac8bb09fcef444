"""Fixtures: a committed snapshot of the template, and the example project rendered and installed once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLE_ANSWERS, ProjectVenv, commit_all, make_project_venv, render, snapshot_template

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


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
