"""The code a run trains with: its git origin, your files' hashes, and the snapshot a job runs.

Managed by the copier-lightning template. Without this, a SLURM job runs whatever is in the working
tree when it starts: a job that waited in the queue, or requeued after its time limit, trains the
researcher's later edits under the old run's name, and the run's checkpoints mix two versions of
the model. So:

* `submit` freezes the code (`freeze_code`): every file git would commit (tracked, and new files
  not ignored), as they are now, is copied to `runs/<run>/code/`, with `code-snapshot.json` naming
  the commit, whether the tree had uncommitted changes and their diff. The job script runs in that
  copy (its first start and every requeue): the project's ignored data folders (data/raw,
  data/processed, ...) are linked into it, runs go to $RUNS_DIR as always.
* Every `fit` start compares your code (`code_files`: the files under src/ but the template's own,
  kit/, cli.py and __main__.py, which `copier update` may change under a run) with the code the run
  was started or submitted with, and refuses a difference naming the files, unless
  `--allow_changed_code` says to go on; record.json then keeps the difference.
* `code_origin` says where the running code came from: the snapshot's record inside a snapshot
  (the snapshot sits in the project's ignored runs/ folder, where git would answer for the
  project's *current* commit), git itself elsewhere.

A copy rather than a `git worktree`: it needs nothing from the repository afterwards (a worktree's
metadata lives in .git/ and breaks when the runs directory moves), and it holds new files that were
never added to git, which are code too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..base.project_package import CONSOLE_SCRIPT

SNAPSHOT_RECORD = "code-snapshot.json"
UNCOMMITTED_DIFF = "uncommitted.patch"
# The template's files in your package: `copier update` changes them, and a run must survive that.
TEMPLATE_CODE = ("kit/", "cli.py", "__main__.py")
# A code snapshot holds code: a single file above this is data or a model, which belongs elsewhere.
MAX_SNAPSHOT_FILE_BYTES = 20 * 1024**2
MAX_SNAPSHOT_BYTES = 200 * 1024**2
# Ignored folders that a job needs from the project are linked into its snapshot; not these.
NOT_LINKED = {
    ".git",
    ".venv",
    "venv",
    "runs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "wandb",
    "lightning_logs",
    ".reproduce",
    ".ipynb_checkpoints",
    ".nox",
    ".tox",
}
ALWAYS_LINKED = ("data/raw", "data/processed")


class SnapshotError(RuntimeError):
    """The code cannot be frozen (not a git repository, a file too large, ...)."""


class CodeChangedError(RuntimeError):
    """A run is re-started with other code than it was started (or submitted) with."""


def run_git(*args: str, cwd: Path | None = None) -> str | None:
    """A git command's output, or None outside a repository or without git."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The commit the code came from and whether the work tree had uncommitted changes."""
    snapshot = read_snapshot_record(Path(cwd or "."))
    if snapshot is not None:
        return {"git_sha": snapshot.get("git_sha"), "git_dirty": snapshot.get("git_dirty")}
    sha = run_git("rev-parse", "HEAD", cwd=cwd)
    status = run_git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"git_sha": sha.strip() if sha else None, "git_dirty": bool(status.strip()) if status is not None else None}


def code_origin(cwd: Path | None = None) -> dict[str, Any]:
    """git_state, plus the uncommitted diff (text or None) and the snapshot the code runs from (or None)."""
    where = Path(cwd or ".")
    snapshot = read_snapshot_record(where)
    state = git_state(cwd)
    if snapshot is not None:
        diff_file = where / UNCOMMITTED_DIFF
        diff = diff_file.read_text() if diff_file.exists() else None
        return {**state, "diff": diff, "snapshot": str(where.resolve())}
    diff = run_git("diff", "HEAD", cwd=cwd) if state["git_dirty"] else None
    return {**state, "diff": diff or None, "snapshot": None}


def read_snapshot_record(directory: Path) -> dict[str, Any] | None:
    record = directory / SNAPSHOT_RECORD
    return json.loads(record.read_text()) if record.is_file() else None


# -- your code and its hashes ----------------------------------------------------------------------
def code_files(project: Path) -> dict[str, str]:
    """Your code under src/ (not the template's kit/, cli.py, __main__.py): relative path -> sha256.

    In a git repository, the files git would commit; in a snapshot (or without git), the files on
    disk but caches.
    """
    project = Path(project)
    listed = None
    if read_snapshot_record(project) is None:
        listed = run_git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "src", cwd=project)
    if listed is not None:
        paths = [path for path in listed.split("\0") if path]
    else:
        paths = [
            str(path.relative_to(project))
            for path in sorted((project / "src").rglob("*"))
            if path.is_file()
            and "__pycache__" not in path.parts
            and not path.name.endswith(".pyc")
            and not any(part.endswith(".egg-info") for part in path.parts)
        ]
    hashes = {}
    for relative in sorted(paths):
        inside_package = relative.split("/", 2)[2] if relative.count("/") >= 2 else ""
        if inside_package.startswith(TEMPLATE_CODE):
            continue
        path = project / relative
        if path.is_file():  # listed by git but deleted in the work tree: not code any more
            hashes[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def code_differences(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Lines naming the files that changed, appeared or went away between two code_files()."""
    lines = [f"changed: {path}" for path in sorted(before.keys() & now.keys()) if before[path] != now[path]]
    lines += [f"added: {path}" for path in sorted(now.keys() - before.keys())]
    lines += [f"removed: {path}" for path in sorted(before.keys() - now.keys())]
    return lines


def refuse_changed_code(run_name: str, before: dict[str, str], now: dict[str, str]) -> None:
    differences = code_differences(before, now)
    if differences:
        shown = "\n".join(f"  {line}" for line in differences[:20])
        more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
        raise CodeChangedError(
            f"Run '{run_name}' was started with other code than the code here now: its checkpoints would mix "
            f"two versions of the model. The differences:\n{shown}{more}\n"
            f"Start a new run for the new code (--run_name NEW_NAME), put the old code back (git stash), or "
            f"continue anyway with --allow_changed_code=true (record.json keeps the difference). "
            f"(`{CONSOLE_SCRIPT} runs` shows each run's commit.)"
        )


# -- the snapshot a job runs -------------------------------------------------------------------------
def freeze_code(project: Path, destination: Path) -> dict[str, Any]:
    """Copy every file git would commit from `project` into `destination`, with its record; returns it.

    The copy is made beside `destination` and renamed into place: a killed `submit` leaves no
    half snapshot. The project's ignored data folders are linked into it. A snapshot already there
    with the same content is kept as it is (a job may be running in it); its record is returned.
    """
    project = Path(project).resolve()
    listed = run_git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=project)
    if listed is None or run_git("rev-parse", "HEAD", cwd=project) is None:
        raise SnapshotError(
            f"{project} is not a git repository with a commit: a job runs a snapshot of the code as git would "
            f"commit it, named by its commit. Run `git init && git add -A && git commit -m 'Start'` there first."
        )
    files = [path for path in listed.split("\0") if path and (project / path).is_file()]
    sizes = {path: (project / path).stat().st_size for path in files}
    too_large = [path for path, size in sizes.items() if size > MAX_SNAPSHOT_FILE_BYTES]
    if too_large:
        raise SnapshotError(
            f"{too_large[0]} is {sizes[too_large[0]] / 1024**2:.0f} MB: a code snapshot copies every file git "
            f"would commit, and a file over {MAX_SNAPSHOT_FILE_BYTES // 1024**2} MB is data, not code. Keep data "
            f"under data/raw/ (ignored by git; data/raw.sha256 records it) or add the file to .gitignore."
        )
    if sum(sizes.values()) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(
            f"the files git would commit add up to {sum(sizes.values()) / 1024**2:.0f} MB, over the "
            f"{MAX_SNAPSHOT_BYTES // 1024**2} MB a code snapshot takes: move data out of git (data/raw/ is ignored)."
        )
    content = hashlib.sha256()
    for relative in sorted(files):
        content.update(f"{relative}\0{hashlib.sha256((project / relative).read_bytes()).hexdigest()}\0".encode())
    existing = read_snapshot_record(Path(destination))
    if existing is not None and existing.get("content_sha256") == content.hexdigest():
        return {**existing, "kept": True}
    destination = Path(destination)
    staging = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for relative in files:
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / relative, target)
    origin = code_origin(project)
    if origin["diff"]:
        (staging / UNCOMMITTED_DIFF).write_text(origin["diff"])
    record = {
        "made": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "project": str(project),
        "git_sha": origin["git_sha"],
        "git_dirty": origin["git_dirty"],
        "uncommitted_diff": UNCOMMITTED_DIFF if origin["diff"] else None,
        "files": len(files),
        "bytes": sum(sizes.values()),
        "content_sha256": content.hexdigest(),
        "code_files": code_files(project),
    }
    (staging / SNAPSHOT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    _link_data(project, staging)
    if destination.exists():
        shutil.rmtree(destination)
    os.replace(staging, destination)
    return record


def _link_data(project: Path, snapshot: Path) -> None:
    """Link the project's ignored data (data/raw, data/processed, other ignored folders) into the snapshot."""
    for relative in ALWAYS_LINKED:
        (project / relative).mkdir(parents=True, exist_ok=True)
    ignored = run_git("ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory", cwd=project) or ""
    entries = {path.rstrip("/") for path in ignored.split("\0") if path} | set(ALWAYS_LINKED)
    for relative in sorted(entries):
        parts = Path(relative).parts
        if any(part in NOT_LINKED or part.endswith(".egg-info") for part in parts):
            continue
        link = snapshot / relative
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(project / relative)
