"""Training runs for the crash tests: configs with batch recording and a planned kill, and comparisons.

Shared by test_resume.py (one process) and test_distributed.py (two DDP processes).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import torch

import preloaded_commands

# A short run whose rolling checkpoint is written every 3 steps (not by time): the crash tests' base.
EPOCHS = 3
SHORT_RUN = [
    f"--trainer.max_epochs={EPOCHS}",
    "--checkpointing.every_n_steps=3",
    "--checkpointing.every_n_minutes=null",
]


def resume_test_config(
    path: Path, records: Path, kill: dict | None, marker: Path, num_workers: int = 0, distinct_ranks: bool = False
) -> Path:
    """A config that adds batch recording (and a one-time kill) to the default experiment.

    distinct_ranks: give every DDP process its own random stream (otherwise all share one seed).
    """
    callbacks = [
        {"class_path": "digits_mlp.kit.training.progress.ProgressLines"},
        {"class_path": "digits_mlp.kit.training.resume_testing.RecordBatches", "init_args": {"path": str(records)}},
    ]
    if distinct_ranks:
        callbacks.append({"class_path": "digits_mlp.kit.training.resume_testing.DistinctRankRandomness"})
    if kill is not None:
        callbacks.append(
            {
                "class_path": "digits_mlp.kit.KillAt",
                "init_args": {"marker_file": str(marker), **kill},
            }
        )
    path.write_text(
        json.dumps({"trainer": {"callbacks": callbacks}, "data": {"init_args": {"num_workers": num_workers}}})
    )
    return path


SLOW_FIRST_PROCESS_EXIT = """
import atexit
import time

import lightning.pytorch as pl


class SlowExitOfTheFirstProcess(pl.Callback):
    # The first process ends 6 s after the others, as on a loaded machine: Lightning's child-process observer
    # polls every 5 s meanwhile, and SIGKILLs this process if it sees another one ended with a non-zero code.

    def setup(self, trainer, pl_module, stage) -> None:
        if trainer.is_global_zero:
            atexit.register(time.sleep, 6)
"""


def with_slow_first_process_exit(config: Path, folder: Path) -> dict[str, str]:
    """Add SlowExitOfTheFirstProcess (written into `folder`) to `config`; the PYTHONPATH that finds it."""
    (folder / "slow_exit.py").write_text(SLOW_FIRST_PROCESS_EXIT)
    settings = json.loads(config.read_text())
    settings["trainer"]["callbacks"].append({"class_path": "slow_exit.SlowExitOfTheFirstProcess"})
    config.write_text(json.dumps(settings))
    return {"PYTHONPATH": str(folder)}


def train(command: list[str], project: Path, config: Path, run_name: str, *extra: str, env: dict | None = None):
    """`fit` with `config` under `run_name`; `extra` options follow (the run length, the process count).

    Output goes to files, not pipes, and whatever the run leaves in its process group is killed once
    the command has ended: a data-loading worker whose parent was SIGKILLed while the worker was
    starting takes init as its parent before torch's watchdog notes the parent, never notices it
    died, and would hold a pipe open for ever (seen in CI: the test waited 20 minutes).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = preloaded_commands.start(
            [*command, "fit", "--config", str(config), "--run_name", run_name, *extra],
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: a test may signal the group, as a terminal does
            cwd=project,
            stdout=out,
            stderr=err,
            text=True,
        )
        returncode = process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers only: the command itself has ended
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(process.args, returncode, out.read(), err.read())


def read_records(path: Path) -> list[dict]:
    """The complete records in `path`. A test that polls the file while a run appends to it can read a
    line half-written (seen in CI): a line without its newline yet is left for the next read."""
    *complete, _being_written = path.read_text().split("\n")
    return [json.loads(line) for line in complete]


def effective_batches(records: list[dict]) -> list[dict]:
    """The batches that count: those of each process up to the step the next process resumed from.

    `records` are one rank's (a single process's run is rank 0's): one process per start.
    """
    by_process: dict[int, list[dict]] = {}
    for record in records:
        by_process.setdefault(record["pid"], []).append(record)
    processes = list(by_process.values())
    kept = []
    for current, following in zip(processes, processes[1:] + [None], strict=True):
        resumed_at = following[0]["global_step"] if following else float("inf")
        kept += [r for r in current if r["global_step"] < resumed_at]
    return kept


def validation_rows(project: Path, run_name: str) -> list[dict[str, str]]:
    """The rows of a run's logs/metrics.csv that a validation wrote (those with val/acc)."""
    with open(project / "runs" / run_name / "logs" / "metrics.csv") as stream:
        return [row for row in csv.DictReader(stream) if row.get("val/acc")]


def validated_epochs(project: Path, run_name: str) -> set[int]:
    return {int(row["epoch"]) for row in validation_rows(project, run_name)}


def best_checkpoints(project: Path, run_name: str) -> list[str]:
    """The best-k checkpoint files a run kept, by name."""
    return sorted(path.name for path in (project / "runs" / run_name / "checkpoints").glob("best-*.ckpt"))


def final_weights(project: Path, run_name: str) -> dict[str, torch.Tensor]:
    return checkpoint_weights(project / "runs" / run_name / "checkpoints" / "final.ckpt")


def checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file, or of a sharded checkpoint (a directory) gathered by torch's converter."""
    if not checkpoint.is_dir():
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as scratch:
        dcp_to_torch_save(checkpoint, Path(scratch) / "gathered.pt")
        return torch.load(Path(scratch) / "gathered.pt", weights_only=True)["state_dict"]


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def records_by_rank(records: list[dict]) -> dict[int, list[dict]]:
    by_rank: dict[int, list[dict]] = {}
    for record in records:
        by_rank.setdefault(record.get("rank", 0), []).append(record)
    return by_rank


def examples_per_epoch(batches: list[dict]) -> dict[int, Counter]:
    """How often each example was trained on in each epoch."""
    seen: dict[int, Counter] = {}
    for batch in batches:
        seen.setdefault(batch["epoch"], Counter()).update(batch["examples"])
    return seen


def assert_resumed_exactly(project: Path, run_name: str, records: Path, reference) -> None:
    """A resumed two-process run ends as the uninterrupted `reference` (weights, records, its run): the same
    weights (max abs diff 0), each rank on the same batches, every epoch validated."""
    reference_weights, reference_batches, _ = reference
    assert max_abs_difference(final_weights(project, run_name), reference_weights) == 0.0
    by_rank = records_by_rank(read_records(records))
    for rank in (0, 1):
        kept = effective_batches(by_rank[rank])
        assert [b["examples"] for b in kept] == [b["examples"] for b in reference_batches[rank]], f"rank {rank}"
    assert validated_epochs(project, run_name) == set(range(EPOCHS))
