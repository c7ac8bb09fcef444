"""Runs as directories: layout, the manifest, and listing. Managed by the copier-lightning template.

A run lives in `runs/<run_name>/` (or under $RUNS_DIR; the name comes from kit/runs/identity.py):
its resolved config, its checkpoints, its logs and two ledgers with separate roles:
- `manifest.json`, the run's state, which the kit reads to decide: the status (RUN_STATUSES), every
  checkpoint (step, epoch, monitored value, checksum, git SHA, time) and the recent checksums.
  Resume still scans the checkpoint files themselves (kit/runs/checkpoint_files.py): a file is
  written before its manifest entry, so a kill between the two leaves a newer file than the manifest.
- `record.json`, what each start ran with (kit/runs/record.py), for people and cards; the kit never
  decides anything from it.
This module imports neither torch nor Lightning, so that `<package> runs` answers at once.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import PUBLIC
from .atomic_files import TEMPORARY_SUFFIX, atomic_write_text
from .checksums import ALGORITHM, file_checksum
from .identity import PLACEMENT_KEYS

MANIFEST_NAME = "manifest.json"
# A run's checkpoint files, named here once: rolling_checkpoint.py writes them, checkpoint_files.py
# ranks them for a resume, evaluation takes the best one.
LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "previous.ckpt"  # the last.ckpt before, kept until the new one is complete
FINAL_CHECKPOINT = "final.ckpt"  # written when training ends: the run is finished
ON_EXCEPTION_CHECKPOINT = "on_exception.ckpt"  # for post-mortem only, never resumed from
# How a run stands, in manifest.json and in record.json's account of each start: running (a process
# is training it, or was killed without a word), stopped (on a signal, after a checkpoint: re-run to
# continue), failed (an error ended it), finished (final.ckpt written).
RUN_STATUSES = ("running", "stopped", "failed", "finished")
# `fit` exits with this code after checkpointing on the requeue signal; job scripts requeue on it.
REQUEUE_EXIT_CODE = 3
CONFIG_NAME = "config.yaml"
# The checkpoint's own note of the monitored metric's value when it was written
# (kit/training/run_bookkeeping.py puts it there; the manifest entry copies it).
MONITORED_VALUE_KEY = "monitored_value"
# Checksums of the latest checkpoint writes kept besides the per-file ones (renamed files keep theirs).
RECENT_CHECKSUMS = 16


def runs_root() -> Path:
    """Where runs live: $RUNS_DIR if set (e.g. a scratch filesystem on a cluster), else ./runs."""
    return Path(os.environ.get("RUNS_DIR", "runs")).resolve()


def run_git(*args: str, cwd: Path | None = None) -> str | None:
    """A git command's output, or None outside a repository or without git."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The commit the code came from and whether the work tree had uncommitted changes."""
    sha = run_git("rev-parse", "HEAD", cwd=cwd)
    status = run_git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"git_sha": sha.strip() if sha else None, "git_dirty": bool(status.strip()) if status is not None else None}


def timestamp() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json_atomically(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


class ConfigChangedError(RuntimeError):
    """The run directory holds a run with a different config than the one given."""


@dataclass
class RunDirectory:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    # The run's other subfolders: loggers' files, `evaluate` outputs, `find-lr` results, job scripts.
    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def evaluation_dir(self, split: str) -> Path:
        return self.path / "evaluation" / split

    @property
    def tuning_dir(self) -> Path:
        return self.path / "tuning"

    @property
    def slurm_dir(self) -> Path:
        return self.path / "slurm"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text())

    def checkpoints_best_first(self) -> list[str]:
        """Checkpoint names by the monitored metric (best first), then final, then last."""
        manifest = self.read_manifest()
        scored = [
            (name, e["value"]) for name, e in manifest.get("checkpoints", {}).items() if e.get("value") is not None
        ]
        scored = [(name, value) for name, value in scored if name.startswith("best")]
        descending = manifest.get("monitor", {}).get("mode") != "min"
        ordered = [name for name, _ in sorted(scored, key=lambda item: item[1], reverse=descending)]
        return ordered + [FINAL_CHECKPOINT, LAST_CHECKPOINT]

    def best_value(self) -> float | None:
        """The best monitored value among the checkpoints the run recorded."""
        manifest = self.read_manifest()
        values = [e["value"] for e in manifest.get("checkpoints", {}).values() if e.get("value") is not None]
        if not values:
            return None
        return min(values) if manifest.get("monitor", {}).get("mode") == "min" else max(values)

    def is_finished(self) -> bool:
        return self.read_manifest().get("status") == "finished"

    def check_same_config(self, config_text: str) -> None:
        """Refuse to continue a run under a different config: results would mix two experiments."""
        if not self.config_path.exists():
            return
        recorded = self.config_path.read_text()
        as_recorded_by_older_releases = _with_public_kit_paths(_without_placement(recorded))
        if config_text in {recorded, _without_placement(recorded), as_recorded_by_older_releases}:
            return
        import difflib

        diff = "".join(
            difflib.unified_diff(
                recorded.splitlines(keepends=True),
                config_text.splitlines(keepends=True),
                fromfile=f"{self.config_path} (the run's config)",
                tofile="the config given now",
            )
        )
        raise ConfigChangedError(
            f"Run '{self.name}' was started with a different config. Give this config its own run with "
            f"--run_name NEW_NAME (or leave --run_name out to get a name derived from the config), or "
            f"move {self.path} away to start over.\n{diff}"
        )

    def start(self, config_text: str, monitor: dict[str, str]) -> None:
        """Create the directory on the first start, and mark the run as running on every start."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.remove_partial_files()
        if not self.config_path.exists():
            self.config_path.write_text(config_text)
        manifest = self.read_manifest()
        manifest.setdefault("run_name", self.name)
        manifest.setdefault("started", timestamp())
        manifest.setdefault("checkpoints", {})
        manifest["starts"] = manifest.get("starts", 0) + 1
        manifest.update(status="running", monitor=monitor, **git_state())
        _write_json_atomically(self.manifest_path, manifest)

    def remove_partial_files(self) -> list[Path]:
        """Delete what a write killed half-way left behind (`.<name>.*.partial`, never a finished file)."""
        leftovers = sorted(self.path.glob(f"**/.*{TEMPORARY_SUFFIX}"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        if leftovers:
            print(f"Run '{self.name}': removed {len(leftovers)} partial file(s) left by an interrupted write.")
        return leftovers

    def set_status(self, status: str, **details: Any) -> None:
        """Record how the run's latest start ended: one of RUN_STATUSES."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; one of {', '.join(RUN_STATUSES)}")
        manifest = self.read_manifest()
        manifest.update(status=status, status_time=timestamp(), **details)
        _write_json_atomically(self.manifest_path, manifest)

    def remember_checksum(self, checksum: str, global_step: int) -> None:
        """Record a checkpoint's checksum before the file takes its name (kit/runs/checksums.py).

        The recent ones are kept apart from the per-file entries: `last.ckpt` becomes `previous.ckpt`
        by a rename, and its checksum must still be known then.
        """
        manifest = self.read_manifest()
        checksums = manifest.setdefault("checksums", {"algorithm": ALGORITHM, "since_step": global_step, "recent": []})
        checksums["recent"] = [*checksums["recent"], checksum][-RECENT_CHECKSUMS:]
        _write_json_atomically(self.manifest_path, manifest)

    def checksum_verdict(self, path: Path, global_step: int) -> bool | None:
        """True if `path`'s checksum is one this run recorded, False if not, None if the file predates checksums."""
        manifest = self.read_manifest()
        checksums = manifest.get("checksums")
        if not checksums or global_step < checksums["since_step"]:
            return None
        known = set(checksums["recent"]) | {e["checksum"] for e in manifest["checkpoints"].values() if "checksum" in e}
        return file_checksum(path) in known

    def record_checkpoint(self, path: Path, checkpoint: dict[str, Any], checksum: str | None = None) -> None:
        """Add a just-written checkpoint to the manifest; forget files that no longer exist."""
        manifest = self.read_manifest()
        entries = manifest.setdefault("checkpoints", {})
        monitored_value = checkpoint.get(MONITORED_VALUE_KEY)
        entries[path.name] = {
            "checksum": checksum,
            "step": int(checkpoint.get("global_step", -1)),
            "epoch": int(checkpoint.get("epoch", -1)),
            "metric": manifest.get("monitor", {}).get("metric"),
            "value": float(monitored_value) if monitored_value is not None else None,
            "git_sha": manifest.get("git_sha"),
            "time": timestamp(),
        }
        manifest["checkpoints"] = {name: e for name, e in entries.items() if (path.parent / name).exists()}
        _write_json_atomically(self.manifest_path, manifest)


# What a runs directory can say when it cannot take a file: full, over quota, read-only, not a directory.
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a path on the way is a file, not a directory",
    errno.EEXIST: "a file is in the way of a directory",
}


def storage_error(error: BaseException) -> OSError | None:
    """The OSError about storage behind `error` (torch wraps it in its own errors), or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def storage_error_message(error: BaseException) -> str | None:
    """A short explanation, cause first, if `error` comes from the runs directory's storage."""
    cause = storage_error(error)
    if cause is None:
        return None
    where = f" ({cause.filename})" if cause.filename else ""
    return (
        f"cannot write the run's files: {STORAGE_ERRNOS[cause.errno]}{where}. Checkpoints written before "
        f"are intact (each write is complete or absent). Free space or fix the path (runs go to "
        f"{runs_root()}; set RUNS_DIR to move them), then re-run the same command to resume."
    )


def _without_placement(config_text: str) -> str:
    """A config recorded before placement keys were left out, without them (one-line values only)."""
    keys = "|".join(PLACEMENT_KEYS)
    return re.sub(rf"(?m)^  (?:{keys}): [^\n]*\n", "", config_text)


def _with_public_kit_paths(config_text: str) -> str:
    """A config recorded before 0.3.0, with its kit class paths as they are written now.

    Before 0.3.0 a kit class was recorded by its module (`<package>.kit.progress.ProgressLines`);
    now by the kit's public name (`<package>.kit.ProgressLines`), which stays the same whatever
    module holds it.
    """
    return re.sub(r"\bkit\.(?:[a-z_]+\.)+([A-Z]\w*)", lambda m: f"kit.{m[1]}" if m[1] in PUBLIC else m[0], config_text)


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run under `root` with its manifest."""
    if not root.is_dir():
        return []
    runs = []
    for manifest_path in sorted(root.glob(f"*/{MANIFEST_NAME}")):
        manifest = json.loads(manifest_path.read_text())
        manifest["path"] = str(manifest_path.parent)
        runs.append(manifest)
    return runs


def format_runs(runs: list[dict[str, Any]]) -> str:
    """A plain-text table: one block per run, one line per checkpoint."""
    if not runs:
        return f"No runs yet under {runs_root()}."
    lines = []
    for run in runs:
        sha = (run.get("git_sha") or "no-git")[:10] + ("+dirty" if run.get("git_dirty") else "")
        lines.append(f"{run['run_name']}  [{run.get('status', '?')}]  started {run.get('started', '?')}  code {sha}")
        for name, entry in sorted(run.get("checkpoints", {}).items(), key=lambda item: item[1]["step"]):
            metric = ""
            if entry.get("value") is not None:
                metric = f"  {entry['metric']}={entry['value']:.4f}"
            lines.append(f"    {name:<36} step {entry['step']:>7}  epoch {entry['epoch']:>4}{metric}  {entry['time']}")
        lines.append(f"    in {run['path']}")
    return "\n".join(lines)
