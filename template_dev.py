"""Small helpers shared by the template's tests, the example script and the benchmarks."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import yaml
from uv import find_uv_bin

import preloaded_commands

TOP = Path(__file__).resolve().parent  # the template repository
EXAMPLE_ANSWERS: dict = yaml.safe_load((TOP / "example-answers.yml").read_text())
TORCH_PIN = (TOP / "torch-pin.txt").read_text().strip()  # the one place the pin is written
TORCH_SPEC = os.environ.get("TORCH_SPEC", TORCH_PIN)
# The generated README's install from the lock (its test checks the README says exactly this).
LOCK_INSTALL = ["pip", "install", "--require-hashes", "--no-deps", "-r", "locks/cpu.txt"]
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "tests@example.org",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.org",
}


def run(command: list[str], cwd: Path, check: bool = True, env: dict | None = None, **kwargs):
    """Run a command, capture its output, and on failure show that output in the error."""
    full_env = {**os.environ, **GIT_IDENTITY, **(env or {})}
    done = preloaded_commands.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, **kwargs)
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
    borrowed: ProjectVenv | None = None  # the venv whose packages this one uses, if any

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def site_packages(self) -> Path:
        return _site_packages(self.python)

    def script(self, name: str) -> Path:
        """A console script of the venv, else of the venv or interpreter whose packages it borrows."""
        for folder in self._bins():
            if (folder / name).exists():
                return folder / name
        return Path(sys.executable).parent / name

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands that find tools on PATH (pre-commit's system hooks)."""
        return {
            "PATH": os.pathsep.join([*map(str, self._bins()), str(Path(sys.executable).parent), os.environ["PATH"]])
        }

    def _bins(self) -> list[Path]:
        return [self.path / "bin", *(self.borrowed._bins() if self.borrowed else [])]


def _site_packages(python: Path) -> Path:
    done = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=python.parent)
    return Path(done.stdout.strip())


def make_project_venv(
    project: Path, standalone: bool = True, borrow_from: ProjectVenv | None = None, with_pip: bool = False
) -> ProjectVenv:
    """Install `project` the way its README says, in `project/.venv`.

    standalone: a full install from the project's lock, `locks/cpu.txt` (every package at its
    pinned version and hash, torch's CPU build included), then the project itself.
    Otherwise the venv borrows the packages of another environment (a .pth file pointing at its
    site-packages): those of `borrow_from` (e.g. a project venv installed from the lock), else
    those of the interpreter running this code; only the project itself is installed: fast, for
    tests that render many projects. Such a venv has no pip of its own unless `with_pip` (the
    README's commands call `pip`): uv installs the project into it, with the build backend it
    borrows (no ensurepip, no isolated build environment, no download).
    """
    venv = project / ".venv"
    python = venv / "bin" / "python"
    log = []
    if standalone:
        run([sys.executable, "-m", "venv", str(venv)], cwd=project)
        # PIP_RETRIES=0: the lock names PyTorch's CPU index, which this machine cannot reach (the
        # wheel comes from pip's find-links here); without it pip retries that index for seconds.
        # pip byte-compiles all 13,000 modules it installs (67 s of its 130 s of CPU here) and must:
        # where PYTHONDONTWRITEBYTECODE is set (as on this machine) no process writes a .pyc, and
        # without pip's each fresh process compiles what it imports again (tried: the whole CI took
        # 2,244 s instead of 1,687 s, the README and Slurm tests twice as long).
        done = run([str(python), "-m", *LOCK_INSTALL], cwd=project, env={"PIP_RETRIES": "0"})
        log.append(done.stdout + done.stderr)
        installed = run([str(python), "-m", "pip", "install", "--no-deps", "-e", "."], cwd=project)
    else:
        run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)], cwd=project)
        # From the venv that holds the packages: a .pth file's folder is not searched for .pth files.
        while borrow_from is not None and borrow_from.borrowed is not None:
            borrow_from = borrow_from.borrowed
        borrowed = borrow_from.site_packages() if borrow_from else Path(sysconfig.get_paths()["purelib"])
        _site_packages(python).joinpath("borrowed-test-packages.pth").write_text(f"{borrowed}\n")
        if with_pip:  # its own pip, whose setuptools (ensurepip's) needs an isolated build
            # From a project venv: exactly its packages (pip would not see a .pth'd folder's as installed).
            project_only = ["--no-deps", "-e", "."] if borrow_from else ["-e", ".[example,dev]"]
            installed = run([str(python), "-m", "pip", "install", *project_only], cwd=project)
        else:  # uv: 0.6 s where pip took 2 s. It cannot see the borrowed packages, so it checks no
            # dependency (--no-deps): one the borrowed ones lack fails the first import instead.
            uv = [find_uv_bin(), "pip", "install", "--python", str(python), "--offline"]
            installed = run([*uv, "--no-deps", "--no-build-isolation", "-e", "."], cwd=project)
        if borrow_from:
            log.append(borrow_from.install_log)  # what this venv's packages came from
    log.append(installed.stdout + installed.stderr)
    return ProjectVenv(venv, "\n".join(log), borrowed=borrow_from)
