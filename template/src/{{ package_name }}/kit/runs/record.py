"""What a run ran with, recorded at every start. Managed by the copier-lightning template.

`runs/<run>/record.json` holds one entry per start (a resumed or requeued run has several): the
git commit, whether the work tree was dirty (and the uncommitted diff, in git-diff-<n>.patch), the
installed packages (packages-<n>.txt, with their hash and the hashes of the project's lock files,
locks/*.txt), Python/torch/Lightning/CUDA versions, the NVIDIA driver, the GPU or MIG slice, SLURM
job and array ids, where the processes ran (accelerator, devices, nodes, strategy, process count),
the seed, the data fingerprint, the start time; at the end, the end time, how it ended (a status in the
manifest's words) and the final metrics. The kit decides nothing from this file: the run's state
is manifest.json's (kit/runs/directory.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from ..base.file_hashes import file_sha256
from ..base.machine import visible_gpus
from .atomic_files import atomic_write_text
from .code_state import code_origin
from .directory import CHECKPOINTS_DIRNAME, RECORD_NAME, RUN_STATUSES, RunDirectory, read_run_json, timestamp

# The project's own locks (locks/*.txt, kit/cluster/environment_lock.py) and other tools' lock files.
OTHER_LOCK_FILES = ("uv.lock", "poetry.lock", "requirements.lock", "pdm.lock", "conda-lock.yml")
SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
    "SLURM_JOB_NODELIST",
)


def installed_packages() -> list[str]:
    # One parse of each METADATA file: `.metadata` parses it again at every access, `.version` too.
    headers = [d.metadata for d in importlib.metadata.distributions()]
    names = {(h["Name"] or "?").lower(): h["Version"] for h in headers}
    return [f"{name}=={version}" for name, version in sorted(names.items())]


def lock_files() -> list[Path]:
    return sorted(Path("locks").glob("*.txt")) + [Path(name) for name in OTHER_LOCK_FILES if Path(name).exists()]


def accelerator_description() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)
        info["nvidia_driver"] = visible_gpus()[1]  # nvidia-smi's answer; torch does not say
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible.startswith("MIG-"):
        info["mig_device"] = visible
    return info


def start_record(
    run_path: Path, seed: Any, data_fingerprint: str | None, placement: dict[str, Any] | None = None
) -> None:
    """Append this start's environment to record.json; write its package list and uncommitted diff.

    placement: where this start's processes ran (accelerator, devices, nodes, strategy, process count).
    """
    import lightning
    import torch

    record_path = run_path / RECORD_NAME
    record = read_run_json(record_path) if record_path.exists() else {"starts": []}
    number = len(record["starts"]) + 1
    packages = installed_packages()
    (run_path / f"packages-{number}.txt").write_text("\n".join(packages) + "\n")
    entry: dict[str, Any] = {
        "started": timestamp(),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "packages_sha256": hashlib.sha256("\n".join(packages).encode()).hexdigest(),
        "lock_file_sha256": {str(path): file_sha256(path) for path in lock_files()},
        "seed": seed,
        "data_fingerprint": data_fingerprint,
        "placement": placement or {},
        "slurm": {name: os.environ[name] for name in SLURM_VARIABLES if name in os.environ},
        **accelerator_description(),
        **_git(run_path, number),
    }
    record["starts"].append(entry)
    _write(record_path, record)


def note_changed_raw_data(run_path: Path, differences: list[str]) -> None:
    """Mark this start as trained on raw data that differs from data/raw.sha256 (--allow_changed_data)."""
    _note_on_this_start(run_path, "raw_data_differs_from_record", differences)


def note_pretrained(run_path: Path, sources: dict[str, dict]) -> None:
    """Name this start's base weights: model id, revision and the content hash of each file."""
    _note_on_this_start(run_path, "pretrained", sources)


def note_parameters(run_path: Path, summary: dict[str, Any]) -> None:
    """What this start trains: parameter counts, what checkpoints hold, adapters (kit/weights/adapters.py)."""
    _note_on_this_start(run_path, "parameters", summary)


def note_changed_code(run_path: Path, differences: list[str]) -> None:
    """Mark this start as running other code than the run's earlier starts (--allow_changed_code)."""
    _note_on_this_start(run_path, "code_differs_from_earlier_starts", differences)


def note_started_from(run_path: Path, checkpoint: Path) -> None:
    """Mark this start as continuing from another checkpoint (`fit --ckpt_path`): its file and its run."""
    checkpoint = checkpoint.resolve()
    inside_a_run = any(folder.name == CHECKPOINTS_DIRNAME for folder in checkpoint.parents)
    parent = RunDirectory.holding(checkpoint).name if inside_a_run else None
    _note_on_this_start(run_path, "started_from", {"checkpoint": str(checkpoint), "run": parent})


def _note_on_this_start(run_path: Path, key: str, value: Any) -> None:
    record_path = run_path / RECORD_NAME
    record = read_run_json(record_path)
    record["starts"][-1][key] = value
    _write(record_path, record)


def end_start(
    run: RunDirectory, status: str, step: int, metrics: dict[str, float] | None = None, **details: Any
) -> None:
    """How this start of the run ended, in both ledgers: the manifest (what the kit decides from) and
    the record (for people). The one place that ends a start: `fit`'s end, a stop, a failure.

    status: one of RUN_STATUSES; step: the global step reached; details: `stopped_by`, `error`, ...
    """
    run.set_status(status, step=step, **details)
    _finish_record(run.path, metrics or {}, status, **details)


def _finish_record(run_path: Path, metrics: dict[str, float], status: str, **details: Any) -> None:
    """The record's half of end_start: the time, the status, the metrics.

    The latest start's ending is also kept at the top (`ended`, `status`, `final_metrics`). A start
    that computed no metrics (it only wrote final.ckpt of a run that had trained to its end) keeps
    the metrics an earlier start recorded.
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}; one of {', '.join(RUN_STATUSES)}")
    record_path = run_path / RECORD_NAME
    record = read_run_json(record_path) if record_path.exists() else {"starts": []}
    ending = {"ended": timestamp(), "status": status, **details}
    if record["starts"]:
        record["starts"][-1].update(ending)
    record.update(ending, final_metrics=metrics or record.get("final_metrics", {}))
    _write(record_path, record)


def _git(run_path: Path, number: int) -> dict[str, Any]:
    origin = code_origin()  # inside a job's code snapshot: the commit and diff it was frozen from
    if origin["diff"]:
        (run_path / f"git-diff-{number}.patch").write_text(origin["diff"])
    return {
        "git_sha": origin["git_sha"],
        "git_dirty": origin["git_dirty"],
        "git_diff_file": f"git-diff-{number}.patch" if origin["diff"] else None,
        "code_snapshot": origin["snapshot"],
    }


def _write(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
