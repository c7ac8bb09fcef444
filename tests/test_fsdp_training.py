"""Sharded training (FSDP2: `--trainer.strategy=fsdp2`) with two processes on the CPU (gloo), for real.

The example's model says nothing about sharding; the kit shards it layer by layer. Every checkpoint
is a directory of shards, staged and checksummed before one rename commits it
(kit/training/sharded_training.py). A killed sharded run, wherever it dies (a step, an epoch's last
batch, validation, half-way through writing its shards), resumes to the weights of an uninterrupted
sharded run, bit for bit, on the same batches; a damaged shard is found by its checksum, moved aside,
and the previous checkpoint used; the evaluation commands get one consolidated file.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import copy_of_example_project
from training_runs import (
    EPOCHS,
    SHORT_RUN,
    assert_resumed_exactly,
    checkpoint_weights,
    final_weights,
    max_abs_difference,
    read_records,
    records_by_rank,
    resume_test_config,
    train,
    validated_epochs,
    with_slow_first_process_exit,
)

import preloaded_commands

TWO_SHARDED = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=fsdp2"]
STEPS_PER_EPOCH = 5  # 1,259 examples over 2 ranks, batches of 128 (as under DDP: test_distributed.py)
KILL_POINTS = {
    "mid_epoch": {"hook": "train_batch_end", "global_step": 7},
    "last_batch_of_epoch": {"hook": "train_batch_end", "global_step": 2 * STEPS_PER_EPOCH},
    "before_validation": {"hook": "validation_start", "epoch": 1},
    "while_writing_shards": {"hook": "shards_written", "global_step": 9},
}
TWO_DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
EPOCH_ENDS_ONLY = ["--checkpointing.every_n_steps=null"]  # checkpoints at each epoch's end only
SHARD_FILES = {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt", "checksums.json"}


def fit_sharded(command, project, config, run_name, *extra, env=None):
    return train(command, project, config, run_name, *TWO_SHARDED, *SHORT_RUN, *extra, env=env)


@pytest.fixture(scope="module")
def reference(example_project, example_command, tmp_path_factory):
    """An uninterrupted two-process sharded run: the weights and batches every resumed run must match."""
    project, _ = example_project
    work = tmp_path_factory.mktemp("fsdp-reference")
    records = work / "records.jsonl"
    config = resume_test_config(work / "c.json", records, None, work / "unused", distinct_ranks=True)
    done = fit_sharded(example_command, project, config, "fsdp-reference")
    assert done.returncode == 0, done.stderr[-3000:]
    return final_weights(project, "fsdp-reference"), records_by_rank(read_records(records)), done


def test_every_checkpoint_is_a_committed_directory_of_checksummed_shards(example_package, reference) -> None:
    project = example_package
    weights, batches_by_rank, done = reference
    run = project / "runs" / "fsdp-reference"
    checkpoints = run / "checkpoints"
    assert done.stdout.count("Run 'fsdp-reference': new run") == 1 and sorted(batches_by_rank) == [0, 1]
    assert {"final.ckpt", "last.ckpt", "previous.ckpt"} <= {p.name for p in checkpoints.iterdir()}
    for name in ("final.ckpt", "last.ckpt", "previous.ckpt"):
        assert {p.name for p in (checkpoints / name).iterdir()} == SHARD_FILES, name
    assert not list(run.glob("**/.*.partial")), "a staging directory was left behind"
    manifest = json.loads((run / "manifest.json").read_text())
    # Each entry's checksum is that of the shard listing inside, which lists every file's own.
    from digits_mlp.kit.runs.checksums import checkpoint_checksum

    for name, entry in manifest["checkpoints"].items():
        assert entry["checksum"] == checkpoint_checksum(checkpoints / name), name
    assert manifest["status"] == "finished"
    # The two shards hold different halves: each process wrote part of every layer.
    shard_sizes = [(checkpoints / "final.ckpt" / f"__{rank}_0.distcp").stat().st_size for rank in (0, 1)]
    assert min(shard_sizes) > 0.3 * sum(shard_sizes)
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_a_killed_sharded_run_resumes_to_identical_weights(
    example_project, example_command, reference, tmp_path, kill_point
) -> None:
    project, _ = example_project
    run_name = f"fsdp-killed-{kill_point}"
    records = tmp_path / "records.jsonl"
    config = resume_test_config(
        tmp_path / "c.json", records, KILL_POINTS[kill_point], tmp_path / "killed", distinct_ranks=True
    )
    killed = fit_sharded(example_command, project, config, run_name)
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert (tmp_path / "killed").read_text().count("SIGKILL") >= 1
    if kill_point == "while_writing_shards":  # the new checkpoint's shards are staged, never committed
        checkpoints = project / "runs" / run_name / "checkpoints"
        assert list(checkpoints.glob(".last.ckpt.*.partial")), sorted(p.name for p in checkpoints.iterdir())
    resumed = fit_sharded(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"Run '{run_name}': resuming from") == 1
    assert_resumed_exactly(project, run_name, records, reference)


def test_a_damaged_shard_is_set_aside_and_the_previous_checkpoint_used(
    example_project, example_command, reference, tmp_path
) -> None:
    project, _ = example_project
    run_name = "fsdp-damaged"
    records = tmp_path / "records.jsonl"
    kill = {"hook": "train_batch_end", "global_step": 8}  # last.ckpt at step 6; previous.ckpt at 5 (epoch 0 ended)
    config = resume_test_config(tmp_path / "c.json", records, kill, tmp_path / "killed", distinct_ranks=True)
    assert fit_sharded(example_command, project, config, run_name).returncode != 0
    shard = project / "runs" / run_name / "checkpoints" / "last.ckpt" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensors: the file still loads
    shard.write_bytes(bytes(data))
    # Asked for one file of it, the evaluation refuses in one line and makes nothing.
    evaluated = preloaded_commands.run(
        [*example_command, "evaluate", "--run_name", run_name, "--ckpt_path", str(shard.parent)],
        cwd=project, capture_output=True, text=True,
    )  # fmt: skip
    assert evaluated.returncode == 2 and "Traceback" not in evaluated.stderr, evaluated.stderr[-3000:]
    assert f"Sharded checkpoint {shard.parent} is incomplete or damaged" in evaluated.stderr + evaluated.stdout
    assert not (shard.parent.parent / "consolidated").exists()

    resumed = fit_sharded(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "last.ckpt is damaged" in resumed.stderr, resumed.stderr[-3000:]
    assert f"Run '{run_name}': resuming from previous.ckpt (epoch 1, step 5)" in resumed.stdout, resumed.stdout
    assert list((project / "runs" / run_name / "checkpoints" / "unreadable").glob("last.ckpt.*"))
    assert_resumed_exactly(project, run_name, records, reference)


def test_test_evaluate_and_export_use_one_consolidated_file(example_project, example_command, reference) -> None:
    project, _ = example_project
    tested = preloaded_commands.run(
        [*example_command, "test", "--run_name", "fsdp-reference", "--trainer.accelerator=cpu"],
        cwd=project, capture_output=True, text=True,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test/acc" in tested.stdout
    checkpoints = project / "runs" / "fsdp-reference" / "checkpoints"
    consolidated = list((checkpoints / "consolidated").glob("*.ckpt"))
    assert len(consolidated) == 1 and consolidated[0].name.startswith("best-")  # the run's best, made one file
    sharded = checkpoints / (consolidated[0].name.rsplit("-", 1)[0] + ".ckpt")  # its name ends in the checksum
    one_file = torch.load(consolidated[0], weights_only=True)
    assert max_abs_difference(one_file["state_dict"], checkpoint_weights(sharded)) == 0.0
    assert "optimizer_states" not in one_file and one_file["global_step"] > 0
    for command in ("evaluate", "export"):
        done = preloaded_commands.run(
            [*example_command, command, "--run_name", "fsdp-reference"], cwd=project, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert f"Record: {project / 'runs' / 'fsdp-reference' / 'export' / 'export.json'}" in done.stdout
    assert len(list((checkpoints / "consolidated").glob("*.ckpt"))) == 1  # made once, then reused


def test_reproduce_trains_the_example_sharded_once_and_builds_every_artifact_from_it(example_project, tmp_path) -> None:
    """Two processes train `example` sharded; the table, export and card read it as one file; nothing rebuilds after."""
    project, command = copy_of_example_project(example_project, tmp_path / "project")
    artifacts = project / "src" / "digits_mlp" / "artifacts.py"
    sharded = '"--trainer.max_epochs=3", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=fsdp2"'
    declared = 'fit_options=["--run_name", "example"'
    text = artifacts.read_text().replace(declared, f"{declared}, {sharded}")
    assert text != artifacts.read_text()
    artifacts.write_text(text)
    assert preloaded_commands.run([*command, "data", "fetch"], cwd=project, capture_output=True).returncode == 0
    built = preloaded_commands.run([*command, "reproduce", "--all"], cwd=project, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # One `reproduce`: the second process re-runs `fit`, not the whole plan.
    for artifact in ("example-model", "final-metrics", "exported-model", "model-card"):
        assert built.stdout.count(f".  {artifact}") == 1, built.stdout[-3000:]
    assert built.stdout.count("Run 'example' finished") == 1
    final = project / "runs" / "example" / "checkpoints" / "final.ckpt"
    assert {p.name for p in final.iterdir()} == SHARD_FILES
    assert "| accuracy |" in (project / "artifacts" / "tables" / "final_metrics.md").read_text()
    assert "`digits_mlp.model.DigitsClassifier`" in (project / "artifacts" / "cards" / "model-example.md").read_text()
    again = preloaded_commands.run([*command, "reproduce", "--all"], cwd=project, capture_output=True, text=True)
    assert again.returncode == 0 and ".  " not in again.stdout, again.stdout[-3000:]  # all up to date


def test_another_process_count_resumes_at_an_epoch_boundary_and_is_refused_mid_epoch(
    example_project, example_command, tmp_path
) -> None:
    """torch's distributed checkpoint reshards 2 shards onto 1 process; a mid-epoch position cannot move."""
    project, _ = example_project
    one_process = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=fsdp2", *SHORT_RUN]
    records = tmp_path / "records.jsonl"
    config = resume_test_config(tmp_path / "c.json", records, KILL_POINTS["mid_epoch"], tmp_path / "k")
    # Checkpoints every 3 steps: the run dies at step 7 with last.ckpt at step 6, mid-epoch.
    assert fit_sharded(example_command, project, config, "fsdp-mid-epoch").returncode != 0
    refused = train(example_command, project, config, "fsdp-mid-epoch", *one_process)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "written mid-epoch by 2 training process(es); this run has 1" in refused.stderr
    assert (project / "runs" / "fsdp-mid-epoch" / "checkpoints" / "last.ckpt" / "meta.pt").is_file()  # kept

    config = resume_test_config(tmp_path / "e.json", records, KILL_POINTS["mid_epoch"], tmp_path / "k2")
    assert fit_sharded(example_command, project, config, "fsdp-epoch-end", *EPOCH_ENDS_ONLY).returncode != 0
    # DDP (and one process without a strategy) reads one file: refused in one line, the shards kept.
    by_ddp = train(example_command, project, config, "fsdp-epoch-end", *SHORT_RUN, *EPOCH_ENDS_ONLY, *TWO_DDP)
    assert by_ddp.returncode == 2 and "Traceback" not in by_ddp.stderr, by_ddp.stderr[-3000:]
    assert "last.ckpt is a sharded checkpoint (a directory of shards written with --trainer.strategy=fsdp2); " \
        "this run's strategy (DDPStrategy) reads one file" in by_ddp.stderr  # fmt: skip
    assert (project / "runs" / "fsdp-epoch-end" / "checkpoints" / "last.ckpt" / "meta.pt").is_file()
    resumed = train(example_command, project, config, "fsdp-epoch-end", *one_process, *EPOCH_ENDS_ONLY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from last.ckpt (epoch 1, step 5)" in resumed.stdout
    one = [r for r in read_records(records) if r["pid"] == read_records(records)[-1]["pid"]]
    assert sorted({r["epoch"] for r in one}) == [1, 2]
    for epoch in (1, 2):
        seen = [example for r in one if r["epoch"] == epoch for example in r["examples"]]
        assert len(seen) == len(set(seen)) == 1_259, f"epoch {epoch}: every example once"
    assert validated_epochs(project, "fsdp-epoch-end") == set(range(EPOCHS))


def test_a_ddp_run_continues_sharded_from_an_epochs_end(example_project, example_command, tmp_path) -> None:
    """Sharded training loads DDP's one-file checkpoint and shards it; the run goes on with every example once."""
    project, _ = example_project
    records = tmp_path / "records.jsonl"
    config = resume_test_config(tmp_path / "c.json", records, KILL_POINTS["mid_epoch"], tmp_path / "k")
    killed = train(example_command, project, config, "ddp-then-fsdp", *SHORT_RUN, *EPOCH_ENDS_ONLY, *TWO_DDP)
    assert killed.returncode != 0
    killed_batches = len(read_records(records))
    last = project / "runs" / "ddp-then-fsdp" / "checkpoints" / "last.ckpt"
    assert last.is_file()  # DDP's: one file
    resumed = fit_sharded(example_command, project, config, "ddp-then-fsdp", *EPOCH_ENDS_ONLY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Run 'ddp-then-fsdp': resuming from last.ckpt (epoch 1, step 5)" in resumed.stdout
    assert {p.name for p in last.iterdir()} == SHARD_FILES  # from here on sharded
    after = read_records(records)[killed_batches:]  # the two resumed processes
    for epoch in (1, 2):
        seen = [example for r in after if r["epoch"] == epoch for example in r["examples"]]
        # Every example, one of them twice: the distributed sampler pads 1,259 examples to 2 x 630.
        assert len(set(seen)) == 1_259 and len(seen) == 1_260, f"epoch {epoch}"
    assert validated_epochs(project, "ddp-then-fsdp") == set(range(EPOCHS))


A_MODEL_HOLDING_A_PARAMETER = """
import torch
from torch import nn

from digits_mlp.model import DigitsClassifier


class ScaledDigits(DigitsClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1))  # the LightningModule's own, in no submodule
"""


def test_a_model_the_default_cannot_shard_is_refused_before_the_run_is_recorded(
    example_project, example_command, tmp_path
) -> None:
    project, _ = example_project
    (tmp_path / "scaled_digits.py").write_text(A_MODEL_HOLDING_A_PARAMETER)
    config = resume_test_config(tmp_path / "c.json", tmp_path / "records.jsonl", None, tmp_path / "unused")
    model, path = "--model=scaled_digits.ScaledDigits", {"PYTHONPATH": str(tmp_path)}
    refused = fit_sharded(example_command, project, config, "fsdp-unshardable", model, env=path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert refused.stderr.count("error: ScaledDigits holds parameters itself (temperature): sharded training") == 1
    assert not (project / "runs" / "fsdp-unshardable").exists()


TAKE_THE_RUN = """
import json
from pathlib import Path

import lightning.pytorch as pl


class TakeTheRunAt(pl.Callback):
    # Another writer takes the run's lease at `global_step`, as a new start does from a writer frozen too long.

    def __init__(self, lease_file: str, global_step: int) -> None:
        self.lease_file, self.global_step = Path(lease_file), global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and trainer.global_step == self.global_step:
            taker = {"host": "node-9", "pid": 1, "pid_started": None, "job": "77", "since": "now", "token": "other"}
            self.lease_file.write_text(json.dumps(taker))
"""


def test_a_sharded_run_whose_lease_was_taken_stops_every_process_without_writing(
    example_project, example_command, tmp_path
) -> None:
    """Rank 0 finds the lease gone at the next save and tells every process: none writes a shard, one says why,
    and the command ends with the stop's own code (1), not Lightning's -9 for a child that ended first."""
    project, _ = example_project
    run_dir = project / "runs" / "fsdp-taken-over"
    (tmp_path / "take_the_run.py").write_text(TAKE_THE_RUN)
    config = resume_test_config(tmp_path / "c.json", tmp_path / "records.jsonl", None, tmp_path / "unused")
    settings = json.loads(config.read_text())
    taker = {"lease_file": str(run_dir / "lease.json"), "global_step": 7}  # checkpoints at steps 3, 5, 6, 9
    settings["trainer"]["callbacks"].append({"class_path": "take_the_run.TakeTheRunAt", "init_args": taker})
    config.write_text(json.dumps(settings))
    slow_exit = with_slow_first_process_exit(config, tmp_path)  # the first process ends 6 s after the other
    stopped = fit_sharded(example_command, project, config, run_dir.name, env=slow_exit)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.stderr.count("this process lost its lease to host node-9") == 1, stopped.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt" / "meta.pt", weights_only=True)["global_step"] == 6
    assert not list(checkpoints.glob(".*.partial")), "a shard was written after the lease was lost"
    assert json.loads((run_dir / "lease.json").read_text())["token"] == "other"  # the taker's, untouched
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"  # the taker's to end


def test_a_frozen_process_ends_the_other_in_bounded_time_and_the_rerun_resumes(
    example_project, example_command, reference, tmp_path
) -> None:
    """Rank 1 frozen (SIGSTOP) mid-epoch: rank 0 gives up at the collective timeout with one message."""
    project, _ = example_project
    run_name = "fsdp-frozen-rank"
    records = tmp_path / "records.jsonl"
    kill = {**KILL_POINTS["mid_epoch"], "rank": 1, "signal": "SIGSTOP"}
    config = resume_test_config(tmp_path / "c.json", records, kill, tmp_path / "marker", distinct_ranks=True)
    timeout_seconds = 15
    started = time.monotonic()
    bounded = f"--distributed.timeout_minutes={timeout_seconds / 60}"
    failed = fit_sharded(example_command, project, config, run_name, bounded)
    elapsed = time.monotonic() - started
    assert failed.returncode != 0
    assert elapsed < 10 + timeout_seconds + 20, f"the surviving process took {elapsed:.0f} s to end"
    assert "Training process 0 of 2 stopped during training step" in failed.stderr, failed.stderr[-3000:]
    assert "it waited for the other processes and they did not answer" in failed.stderr
    assert "Traceback" not in failed.stderr
    resumed = fit_sharded(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_exactly(project, run_name, records, reference)
