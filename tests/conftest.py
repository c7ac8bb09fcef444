"""Fixtures: a committed snapshot of the template, and the example project rendered and installed once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock
from packaging.version import Version

from template_dev import (
    EXAMPLE_ANSWERS,
    TOP,
    ProjectVenv,
    commit_all,
    copy_working_tree,
    git,
    make_project_venv,
    render,
    snapshot_template,
)

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
_CHECKOUT_BEFORE = pytest.StashKey[set]()


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return snapshot_template(tmp_path_factory.mktemp("template"))


def _session_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test session that every test process (xdist worker) sees."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def locked_example_install(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ProjectVenv:
    """The example project installed from its lock (locks/cpu.txt) as its README says, once per session.

    The test processes share it (the first one installs, under a file lock; the others wait for it):
    the install is a minute or more, and its packages are the same for everybody.
    """
    shared = _session_directory(tmp_path_factory)
    with FileLock(str(shared / "example-install.lock")):
        project = shared / "example-install" / "digits-mlp"
        log = project / ".venv" / "install.log"
        if not log.exists():
            shutil.rmtree(project, ignore_errors=True)  # a half-made one from a process that died
            render(template_repo, project)
            commit_all(project, "Start from copier-lightning")
            log.write_text(make_project_venv(project, standalone=True).install_log)
        return ProjectVenv(project / ".venv", log.read_text())


@pytest.fixture(scope="session")
def example_project(
    template_repo: Path, locked_example_install: ProjectVenv, tmp_path_factory
) -> tuple[Path, ProjectVenv]:
    """The example project, rendered with example-answers.yml, on the packages of the locked install.

    Each test process has its own copy (its tests write runs and edit files in it); its venv holds
    the project itself and borrows every other package from the shared install from the lock.
    """
    project = tmp_path_factory.mktemp("projects") / "digits-mlp"
    render(template_repo, project)
    commit_all(project, "Start from copier-lightning")
    return project, make_project_venv(project, standalone=False, borrow_from=locked_example_install)


def copy_of_example_project(example_project, destination: Path) -> tuple[Path, list[str]]:
    """A git clone of the example project with its own venv (borrowing the example's packages).

    For tests that edit the project's code: the example project itself is shared by tests running
    at the same time in the other test process.
    """
    original, venv = example_project
    git(original.parent, "clone", "-q", str(original), str(destination))
    commit_all(destination, "clone")
    own_venv = make_project_venv(destination, standalone=False, borrow_from=venv)
    return destination, [str(own_venv.script(EXAMPLE_ANSWERS["package_name"]))]


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


# The release before the kit moved, and its commit (for a clone made without tags).
LAST_RELEASE, LAST_RELEASE_COMMIT = "0.2.0", "bb76cd1153aa540ca801cd40eb6986c69995e56f"


@pytest.fixture(scope="session")
def template_with_history(tmp_path_factory) -> tuple[Path, str]:
    """This repository's history with its tags, plus the working tree as the newest release."""
    template = tmp_path_factory.mktemp("history") / "copier-lightning"
    git(TOP, "clone", "-q", "--no-hardlinks", str(TOP), str(template))
    if LAST_RELEASE not in git(template, "tag").split():
        git(template, "tag", LAST_RELEASE, LAST_RELEASE_COMMIT)
    git(template, "rm", "-rq", "--cached", ".")
    for path in template.iterdir():
        if path.name != ".git":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    copy_working_tree(template)
    git(template, "add", "-A")
    git(template, "commit", "-q", "--allow-empty", "-m", "working tree")
    newest = max(Version(tag) for tag in git(template, "tag").split())
    working_tree_version = f"{newest.major + 1}.0.0"  # above every real release, so every migration runs
    git(template, "tag", working_tree_version)
    return template, working_tree_version


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


# The order the test processes take files in (scripts/test.sh: --dist loadfile, no reordering by
# size): the longest first, so that the last file to end is a short one; two install-free files
# first, so that the others work while the third installs the example from its lock. xdist gives
# a process its next file as soon as two or fewer of its tests are left, so the file after the
# README test (two tests, the second takes minutes) waits behind it: that is why Slurm's comes before.
# Seconds a file took in CI (its process's wall time, three processes: 2,424 s in all, at 5acee00).
LONGEST_FIRST = [
    "test_finetune_example.py",  # 208 s; renders and installs its own project
    "test_update_from_release.py",  # 133 s, needs no install
    "test_resume.py",  # 209 s; installs the example from the lock (~110 s) on its way
    "test_slurm.py",  # 382 s, much of it waiting for Slurm's scheduler while the others compute
    "test_readme_commands.py",  # 297 s in its second test
    "test_generated_project.py",  # 202 s
    "test_update.py",  # 175 s
    "test_task_kinds.py",  # 141 s: four task shapes trained, killed, resumed, tested and evaluated
    "test_fsdp_training.py",  # 101 s
    "test_distributed.py",  # 86 s
    "test_deployment.py",  # 67 s
    "test_serving.py",  # 57 s: servers, clients and a browser
    "test_reproduce_and_cache.py",  # 56 s
    "test_sharded_training.py",  # 53 s
    "test_run_integrity.py",  # 49 s
    "test_environment_lock.py",  # 41 s
    "test_render.py",  # 33 s
    "test_search.py",  # 23 s
    "test_pretrained_weights.py",  # 22 s
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: a file's tests keep their order, the unlisted files theirs
