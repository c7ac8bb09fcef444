"""Crash and resume, for real: SIGKILL a training process, re-run the same command, compare.

The resumed run's final weights must equal an uninterrupted run's exactly, and every training
example must be seen exactly once per epoch across the crash.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch

EPOCHS = 3
STEPS_PER_EPOCH = 10  # 1,257 training examples in batches of 128
SHORT_RUN = [
    f"--trainer.max_epochs={EPOCHS}",
    "--checkpointing.every_n_steps=3",
    "--checkpointing.every_n_minutes=null",
]
# (where to kill, the KillAt options): mid-epoch; on an epoch's last batch; after training, before validation.
KILL_POINTS = {
    "mid_epoch": {"hook": "train_batch_end", "global_step": 14},
    "last_batch_of_epoch": {"hook": "train_batch_end", "global_step": 2 * STEPS_PER_EPOCH},
    "before_validation": {"hook": "validation_start", "epoch": 1},
}


def resume_test_config(path: Path, records: Path, kill: dict | None, marker: Path, num_workers: int) -> Path:
    """A config that adds batch recording (and a one-time kill) to the default experiment."""
    callbacks = [
        {"class_path": "digits_mlp.kit.progress.ProgressLines"},
        {"class_path": "digits_mlp.kit.resume_testing.RecordBatches", "init_args": {"path": str(records)}},
    ]
    if kill is not None:
        callbacks.append(
            {"class_path": "digits_mlp.kit.resume_testing.KillAt", "init_args": {"marker_file": str(marker), **kill}}
        )
    path.write_text(
        json.dumps({"trainer": {"callbacks": callbacks}, "data": {"init_args": {"num_workers": num_workers}}})
    )
    return path


def train(command: list[str], project: Path, config: Path, run_name: str, *extra: str):
    return subprocess.run(
        [*command, "fit", "--config", str(config), *SHORT_RUN, "--run_name", run_name, *extra],
        cwd=project,
        capture_output=True,
        text=True,
    )


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def effective_batches(records: list[dict]) -> list[dict]:
    """The batches that count: those of each process up to the step the next process resumed from."""
    by_process: dict[int, list[dict]] = {}
    for record in records:
        by_process.setdefault(record["pid"], []).append(record)
    processes = list(by_process.values())
    kept = []
    for current, following in zip(processes, processes[1:] + [None], strict=True):
        resumed_at = following[0]["global_step"] if following else float("inf")
        kept += [r for r in current if r["global_step"] < resumed_at]
    return kept


def validated_epochs(project: Path, run_name: str) -> set[int]:
    with open(project / "runs" / run_name / "logs" / "metrics.csv") as stream:
        return {int(row["epoch"]) for row in csv.DictReader(stream) if row.get("val/acc")}


def final_weights(project: Path, run_name: str) -> dict[str, torch.Tensor]:
    checkpoint = project / "runs" / run_name / "checkpoints" / "final.ckpt"
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def reference_runs(example_project, example_command, tmp_path_factory):
    """One uninterrupted run per worker count: the results every resumed run must match."""
    project, _ = example_project
    work = tmp_path_factory.mktemp("reference")
    references = {}
    for workers in (0, 2):
        records = work / f"records-w{workers}.jsonl"
        config = resume_test_config(work / f"w{workers}.json", records, None, work / "unused", workers)
        done = train(example_command, project, config, f"reference-w{workers}")
        assert done.returncode == 0, done.stderr[-3000:]
        references[workers] = (final_weights(project, f"reference-w{workers}"), read_records(records), config)
    return references


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_killed_run_resumes_to_identical_weights(
    example_project, example_command, reference_runs, tmp_path, kill_point, num_workers
) -> None:
    project, _ = example_project
    run_name = f"killed-{kill_point}-w{num_workers}"
    records = tmp_path / "records.jsonl"
    config = resume_test_config(tmp_path / "c.json", records, KILL_POINTS[kill_point], tmp_path / "killed", num_workers)

    killed = train(example_command, project, config, run_name)
    assert killed.returncode == -9, f"expected a SIGKILL, got {killed.returncode}:\n{killed.stderr[-3000:]}"
    resumed = train(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Run '{run_name}': resuming from" in resumed.stdout

    reference_weights, reference_records, _ = reference_runs[num_workers]
    assert max_abs_difference(final_weights(project, run_name), reference_weights) == 0.0

    batches = effective_batches(read_records(records))
    assert [b["examples"] for b in batches] == [b["examples"] for b in reference_records]
    assert validated_epochs(project, run_name) == set(range(EPOCHS))  # including the one the kill interrupted
    for epoch in range(EPOCHS):
        seen = Counter(e for b in batches if b["epoch"] == epoch for e in b["examples"])
        expected = Counter(e for b in reference_records if b["epoch"] == 0 for e in b["examples"])
        assert seen == expected, f"epoch {epoch}: examples missing or seen twice"


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(
    example_project, example_command, reference_runs, tmp_path
) -> None:
    project, _ = example_project
    run_name = "truncated-last"
    config = resume_test_config(
        tmp_path / "c.json", tmp_path / "r.jsonl", KILL_POINTS["mid_epoch"], tmp_path / "killed", 0
    )
    assert train(example_command, project, config, run_name).returncode == -9
    last = project / "runs" / run_name / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # as a crash mid-copy on a non-atomic filesystem would leave it

    resumed = train(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "last.ckpt is unreadable" in resumed.stderr and "resuming from the previous checkpoint" in resumed.stderr
    assert "resuming from previous.ckpt" in resumed.stdout
    assert list((last.parent / "unreadable").glob("last.ckpt.*"))
    assert max_abs_difference(final_weights(project, run_name), reference_runs[0][0]) == 0.0


def test_finished_run_is_not_retrained(example_project, example_command, reference_runs, tmp_path) -> None:
    project, _ = example_project
    config = reference_runs[0][2]  # the very config the finished run was trained with
    final = project / "runs" / "reference-w0" / "checkpoints" / "final.ckpt"
    records = Path(json.loads(config.read_text())["trainer"]["callbacks"][1]["init_args"]["path"])
    before = (final.stat().st_mtime_ns, len(read_records(records)))

    again = train(example_command, project, config, "reference-w0")

    assert again.returncode == 0, again.stderr[-2000:]
    assert "Run 'reference-w0' is complete" in again.stdout and "--run_name NEW_NAME" in again.stdout
    assert (final.stat().st_mtime_ns, len(read_records(records))) == before  # not a single batch trained


@pytest.mark.parametrize("finished", [False, True], ids=["unfinished", "finished"])
def test_a_changed_config_under_the_same_run_name_is_refused(
    example_project, example_command, reference_runs, tmp_path, finished
) -> None:
    project, _ = example_project
    if finished:
        run_name, config = "reference-w0", reference_runs[0][2]
    else:
        run_name = "changed-config"
        config = resume_test_config(
            tmp_path / "c.json", tmp_path / "r.jsonl", KILL_POINTS["mid_epoch"], tmp_path / "k", 0
        )
        assert train(example_command, project, config, run_name).returncode == -9
    checkpoints_before = sorted((project / "runs" / run_name / "checkpoints").iterdir())

    refused = train(example_command, project, config, run_name, "--model.init_args.dropout=0.5")

    assert refused.returncode == 2
    assert f"Run '{run_name}' was started with a different config" in refused.stderr
    assert "-    dropout: 0.2" in refused.stderr and "+    dropout: 0.5" in refused.stderr
    assert sorted((project / "runs" / run_name / "checkpoints").iterdir()) == checkpoints_before


def test_supervise_restarts_a_crashed_run_until_it_finishes(example_project, example_command, reference_runs, tmp_path):
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", KILL_POINTS["mid_epoch"], tmp_path / "k", 0)
    options = ["fit", "--config", str(config), *SHORT_RUN, "--run_name", "supervised"]
    done = subprocess.run(
        [*example_command, "supervise", "--max-restarts", "2", "--backoff-seconds", "0.1", "--", *options],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "command exited with -9; restart 1 of 2" in done.stderr
    assert "Run 'supervised': resuming from" in done.stdout and "Run 'supervised' finished" in done.stdout
    assert max_abs_difference(final_weights(project, "supervised"), reference_runs[0][0]) == 0.0
