"""Small helpers shared by the template's tests, the example script and the benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import yaml

TOP = Path(__file__).resolve().parent  # the template repository
EXAMPLE_ANSWERS: dict = yaml.safe_load((TOP / "example-answers.yml").read_text())
TORCH_PIN = (TOP / "torch-pin.txt").read_text().strip()  # the one place the pin is written
TORCH_SPEC = os.environ.get("TORCH_SPEC", TORCH_PIN)
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "tests@example.org",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.org",
}


def run(command: list[str], cwd: Path, check: bool = True, env: dict | None = None, **kwargs):
    """Run a command, capture its output, and on failure show that output in the error."""
    full_env = {**os.environ, **GIT_IDENTITY, **(env or {})}
    done = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, command))} exited {done.returncode} in {cwd}\n"
            f"--- stdout ---\n{done.stdout[-6000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
        )
    return done


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd=cwd).stdout


def copy_working_tree(destination: Path, source: Path = TOP) -> None:
    """Copy the files git would commit from `source` (tracked or new, not ignored) into `destination`."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source).stdout
    destination.mkdir(parents=True, exist_ok=True)
    for relative in filter(None, listed.split("\0")):
        origin = source / relative
        if origin.is_file():
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


def snapshot_template(destination: Path, source: Path = TOP) -> Path:
    """Copy the template as it is in the working tree (uncommitted edits too) into a fresh git repo.

    Copier renders committed content; committing a copy means tests see today's edits and never
    record a `_commit` that exists only in copier's temporary clone.
    """
    copy_working_tree(destination, source)
    git(destination, "init", "-q", "-b", "main")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "template snapshot")
    return destination


def render(template: Path, destination: Path, vcs_ref: str = "HEAD", **answers) -> dict:
    """Render the template into `destination` with the example answers updated by `answers`."""
    from copier import run_copy

    data = {**EXAMPLE_ANSWERS, **answers}
    run_copy(str(template), destination, data=data, defaults=True, vcs_ref=vcs_ref, quiet=True, unsafe=False)
    return data


def commit_all(project: Path, message: str = "snapshot") -> None:
    if not (project / ".git").exists():
        git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "--allow-empty", "-m", message)


@dataclass
class ProjectVenv:
    path: Path
    install_log: str

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def script(self, name: str) -> Path:
        """A console script of the venv, or of the interpreter whose packages it borrows."""
        own = self.path / "bin" / name
        return own if own.exists() else Path(sys.executable).parent / name

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands that find tools on PATH (pre-commit's system hooks)."""
        return {"PATH": os.pathsep.join([str(self.path / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])}


def make_project_venv(project: Path, standalone: bool = True) -> ProjectVenv:
    """Install `project` the way its README says, in `project/.venv`.

    standalone: a full install, torch first and pinned, then `pip install -e ".[example,dev]"`.
    Otherwise the venv borrows the packages of the interpreter running this code (a .pth file
    pointing at its site-packages), so only the project itself is installed: fast, for tests
    that render many projects.
    """
    venv = project / ".venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=project)
    python = venv / "bin" / "python"
    log = []
    if standalone:
        log.append(run([str(python), "-m", "pip", "install", "-q", TORCH_SPEC], cwd=project).stdout)
    else:
        site_packages = run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=project
        )
        Path(site_packages.stdout.strip(), "borrowed-test-packages.pth").write_text(
            sysconfig.get_paths()["purelib"] + "\n"
        )
    installed = run([str(python), "-m", "pip", "install", "-e", ".[example,dev]"], cwd=project)
    log.append(installed.stdout + installed.stderr)
    return ProjectVenv(venv, "\n".join(log))
