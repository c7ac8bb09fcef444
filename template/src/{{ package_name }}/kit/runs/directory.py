"""A run as a directory: its layout and its manifest. Managed by the copier-lightning template.

A run lives in `runs/<run_name>/` (or under $RUNS_DIR; the name comes from kit/runs/identity.py):
its resolved config, its checkpoints, its logs and two ledgers with separate roles:
- `manifest.json`, the run's state, which the kit reads to decide: the status (RUN_STATUSES), every
  checkpoint (step, epoch, monitored value, checksum, git SHA, time) and the recent checksums.
  Resume still scans the checkpoint files themselves (kit/runs/checkpoint_files.py): a file is
  written before its manifest entry, so a kill between the two leaves a newer file than the manifest.
- `record.json`, what each start ran with (kit/runs/record.py), for people and cards; the kit never
  decides anything from it.
The runs folder around the runs (the listing, finding a run by its config, sweeps/, seeds/,
slurm-logs/) is root.py's; what a full or read-only disk means for a run is storage_errors.py's.
This module imports neither torch nor Lightning, so that `<package> runs` answers at once.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import PUBLIC
from .atomic_files import TEMPORARY_SUFFIX, atomic_write_text
from .checksums import ALGORITHM, checkpoint_checksum
from .code_state import git_state, read_snapshot_record
from .identity import AUTO, what_is_trained, with_chosen_monitor

MANIFEST_NAME = "manifest.json"
# A run's checkpoint files, named here once: rolling_checkpoint.py writes them, checkpoint_files.py
# ranks them for a resume, evaluation takes the best one.
CHECKPOINT_SUFFIX = ".ckpt"
CHECKPOINTS_DIRNAME = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "previous.ckpt"  # the last.ckpt before, kept until the new one is complete
FINAL_CHECKPOINT = "final.ckpt"  # written when training ends: the run is finished
ON_EXCEPTION_CHECKPOINT = "on_exception.ckpt"  # for post-mortem only, never resumed from
# The best-k copies ModelCheckpoint keeps by the monitored metric (Lightning fills in the fields).
BEST_CHECKPOINT_PREFIX = "best-"
BEST_CHECKPOINT_FILENAME = BEST_CHECKPOINT_PREFIX + "epoch{epoch:03d}-step{step:07d}"
# How a run stands, in manifest.json and in record.json's account of each start: running (a process
# is training it, or was killed without a word), stopped (on a signal, after a checkpoint: re-run to
# continue), failed (an error ended it), finished (final.ckpt written).
RUN_STATUSES = ("running", "stopped", "failed", "finished")
# `fit`'s exit code is a contract that job scripts and `supervise` act on:
#   0  the run is finished (final.ckpt written), or was already;
#   1  an error ended it (a crash: re-running resumes from the last checkpoint);
#   2  refused before training (a bad option or config, a changed run, data missing, another writer);
#   3  stopped on a signal after writing its checkpoint: re-run to continue (job scripts requeue);
#   4  diverged (NaN or inf loss or weights): a re-run would replay the same steps, so nothing restarts it.
REQUEUE_EXIT_CODE = 3
DIVERGED_EXIT_CODE = 4
CONFIG_NAME = "config.yaml"
RECORD_NAME = "record.json"  # written by record.py
# The checkpoint's own note of the monitored metric's value when it was written
# (kit/training/run_bookkeeping.py puts it there; the manifest entry copies it).
MONITORED_VALUE_KEY = "monitored_value"
# Checksums of the latest checkpoint writes kept besides the per-file ones (renamed files keep theirs).
RECENT_CHECKSUMS = 16


def timestamp() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json_atomically(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


class DamagedRunFile(ValueError):
    """A run's own JSON file (manifest.json, record.json) that does not parse: damaged on its disk or by hand.
    The kit writes them atomically, so no interrupted write of its own leaves one."""


def read_run_json(path: Path) -> dict[str, Any]:
    """A run's JSON file, parsed; DamagedRunFile, one line saying where it breaks and what to do, otherwise."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        data, problem = None, f"not JSON{where}"
    else:
        problem = f"a JSON {type(data).__name__}, not an object"
    if isinstance(data, dict):
        return data
    raise DamagedRunFile(
        f"{path} is damaged ({problem}): nothing reads the run from it. Restore the file, or move the run "
        f"away (mv {path.parent} {path.parent}.damaged) and train it anew."
    )


class ConfigChangedError(RuntimeError):
    """The run directory holds a run with a different config than the one given."""


@dataclass
class RunDirectory:
    path: Path

    @classmethod
    def holding(cls, checkpoint: Path) -> RunDirectory:
        """The run a checkpoint belongs to: in its checkpoints/ folder, or below it (consolidated/)."""
        return cls(next(folder.parent for folder in checkpoint.parents if folder.name == CHECKPOINTS_DIRNAME))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIRNAME

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
    def export_dir(self) -> Path:
        """`export`'s ONNX and torch.export files and export.json; `budget` and `predict-files` read them."""
        return self.path / "export"

    @property
    def slurm_dir(self) -> Path:
        return self.path / "slurm"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def record_path(self) -> Path:
        return self.path / RECORD_NAME

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return read_run_json(self.manifest_path)

    def checkpoints_best_first(self) -> list[str]:
        """Checkpoint names by the monitored metric (best first), then final, then last."""
        manifest = self.read_manifest()
        scored = [
            (name, e["value"]) for name, e in manifest.get("checkpoints", {}).items() if e.get("value") is not None
        ]
        scored = [(name, value) for name, value in scored if name.startswith(BEST_CHECKPOINT_PREFIX)]
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
        """Refuse to continue a run under a different config: results would mix two experiments.

        Compared is what is trained (kit/runs/identity.py's what_is_trained): a config that differs
        only in its loggers, progress display or placement continues the run.
        """
        if not self.config_path.exists():
            return
        chosen = self.chosen_monitor()
        recorded = comparable_config(self.config_path.read_text(), chosen)
        given = comparable_config(config_text, chosen)
        if recorded == given:
            return
        import difflib

        diff = "".join(
            difflib.unified_diff(
                yaml.safe_dump(recorded, sort_keys=False).splitlines(keepends=True),
                yaml.safe_dump(given, sort_keys=False).splitlines(keepends=True),
                fromfile=f"{self.config_path} (the run's config)",
                tofile="the config given now",
            )
        )
        longer = ""
        length = ("max_epochs", "max_steps")
        if any(recorded.get("trainer", {}).get(key) != given.get("trainer", {}).get(key) for key in length):
            longer = (
                f" To train it longer, start a new run from its last checkpoint: fit --run_name NEW_NAME "
                f"--ckpt_path {self.checkpoint_dir / FINAL_CHECKPOINT} with the new length (it goes on from that "
                f"checkpoint's epoch and step; its record names this run)."
            )
        raise ConfigChangedError(
            f"Run '{self.name}' was started with a different config. Give this config its own run with "
            f"--run_name NEW_NAME (or leave --run_name out to get a name derived from the config), or "
            f"move {self.path} away to start over.{longer}\n{diff}"
        )

    @property
    def code_snapshot_dir(self) -> Path:
        """The code a job of this run runs (kit/runs/code_state.py), made by `submit`."""
        return self.path / "code"

    def recorded_code_files(self) -> dict[str, str] | None:
        """The hashes of your code this run was started with, else submitted with; None if neither is known."""
        recorded = self.read_manifest().get("code_files")
        if recorded is None:
            snapshot = read_snapshot_record(self.code_snapshot_dir)
            recorded = snapshot.get("code_files") if snapshot else None
        return recorded

    def recorded_pretrained(self) -> dict[str, dict] | None:
        """The base weights (model id -> revision and file hashes) the run started from; None if it used none."""
        return self.read_manifest().get("pretrained")

    def kept_precision(self) -> str | None:
        """The precision the run started in (its first start's Trainer's); None before it started, or for a run
        started before the kit recorded it."""
        return self.read_manifest().get("precision")

    def chosen_monitor(self) -> dict[str, Any] | None:
        """The metric and mode this run follows ({"metric", "mode"}; metric None: it logs none), as its
        manifest records them; None before it has chosen (a new run, or "auto" before its first validation)."""
        monitor = self.read_manifest().get("monitor")
        if not monitor or monitor.get("metric") == AUTO:
            return None
        return monitor

    def note_chosen_monitor(self, metric: str | None, mode: str | None) -> None:
        """Record the metric "auto" chose at the first validation: every later start follows it."""
        manifest = self.read_manifest()
        manifest["monitor"] = {"metric": metric, "mode": mode}
        _write_json_atomically(self.manifest_path, manifest)

    def recorded_config(self) -> dict[str, Any]:
        """The settings the run was started with (its config.yaml), parsed; {} before its first start."""
        if not self.config_path.exists():
            return {}
        return yaml.safe_load(self.config_path.read_text()) or {}

    def record(self) -> dict[str, Any]:
        """The run's record.json (its starts, status, end and final metrics; kit/runs/record.py); {} before
        the first start."""
        if not self.record_path.exists():
            return {}
        return read_run_json(self.record_path)

    def last_start(self) -> dict[str, Any]:
        """The latest start in the run's record (seed, data fingerprint, machine, ...); {} before the first."""
        starts = self.record().get("starts") or []
        return starts[-1] if starts else {}

    def start(
        self,
        config_text: str,
        monitor: dict[str, str],
        code: dict[str, str] | None = None,
        pretrained: dict[str, dict] | None = None,
        precision: str | None = None,
    ) -> None:
        """Create the directory on the first start, and mark the run as running on every start.

        code: the hashes of the code this start runs (kit/runs/code_state.py's code_files), the run's from now on.
        pretrained: the base weights it starts from (kit/weights/cache.py's resolved_sources), likewise.
        precision: the Trainer's precision; the first start's is the run's (kept_precision).
        """
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
        if code is not None:
            manifest["code_files"] = code
        if pretrained:
            manifest["pretrained"] = pretrained
        if precision:
            manifest.setdefault("precision", precision)
        _write_json_atomically(self.manifest_path, manifest)

    def remove_partial_files(self) -> list[Path]:
        """Delete what a write killed half-way left behind (`.<name>.*.partial`, never a finished file;
        a directory for a sharded checkpoint's staging)."""
        leftovers = sorted(
            path
            for path in self.path.glob(f"**/.*{TEMPORARY_SUFFIX}")
            if self.code_snapshot_dir not in path.parents  # your code, copied: not the run's writes
        )
        for leftover in leftovers:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
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
        checksum = checkpoint_checksum(path)  # a sharded checkpoint's: None if a shard is damaged
        return checksum is not None and checksum in known

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


def comparable_config(config_text: str, chosen_monitor: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recorded or given config as a mapping of what is trained, in today's words.

    Configs recorded by older releases name kit classes by module (see _with_public_kit_paths) and
    may hold placement keys; both are normalised away. An "auto" monitor reads as the run's
    `chosen_monitor` (RunDirectory.chosen_monitor), when it has chosen one.
    """
    config = yaml.safe_load(_with_public_kit_paths(config_text)) or {}
    return what_is_trained(with_chosen_monitor(config, chosen_monitor))


def _with_public_kit_paths(config_text: str) -> str:
    """A config recorded before 0.3.0, with its kit class paths as they are written now.

    Before 0.3.0 a kit class was recorded by its module (`<package>.kit.progress.ProgressLines`);
    now by the kit's public name (`<package>.kit.ProgressLines`), which stays the same whatever
    module holds it.
    """
    return re.sub(r"\bkit\.(?:[a-z_]+\.)+([A-Z]\w*)", lambda m: f"kit.{m[1]}" if m[1] in PUBLIC else m[0], config_text)
