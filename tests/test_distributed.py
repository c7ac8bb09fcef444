"""Two training processes under DDP (gloo on the CPU), for real: kill, stall, resume, change the count.

The same code path as two GPUs with NCCL: Lightning launches the second process itself (as it
does for `trainer.devices=2` on a workstation); under SLURM, `srun` launches both (test_slurm.py).
A resumed two-process run must end with the weights of an uninterrupted two-process run, bit for
bit, and across the crash every rank must train on exactly the batches it trained on without one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import pytest
import torch
from training_runs import (
    EPOCHS,
    SHORT_RUN,
    assert_resumed_exactly,
    examples_per_epoch,
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

TRAINING_EXAMPLES = 1_259
# 1,259 examples over 2 ranks: 630 each (one example padded in), 5 batches of at most 128 per rank.
STEPS_PER_EPOCH = 5
TWO_PROCESSES = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
ONE_PROCESS = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
KILL_POINTS = {
    "mid_epoch": {"hook": "train_batch_end", "global_step": 7},
    "last_batch_of_epoch": {"hook": "train_batch_end", "global_step": 2 * STEPS_PER_EPOCH},
    "before_validation": {"hook": "validation_start", "epoch": 1},
}


def fit_two(command, project, config, run_name, *extra, env: dict | None = None):
    return train(command, project, config, run_name, *TWO_PROCESSES, *SHORT_RUN, *extra, env=env)


@pytest.fixture(scope="module")
def reference(example_project, example_command, tmp_path_factory):
    """An uninterrupted two-process run: the weights and batches every resumed run must match."""
    project, _ = example_project
    work = tmp_path_factory.mktemp("ddp-reference")
    records = work / "records.jsonl"
    config = resume_test_config(work / "c.json", records, None, work / "unused", distinct_ranks=True)
    done = fit_two(example_command, project, config, "ddp-reference")
    assert done.returncode == 0, done.stderr[-3000:]
    return final_weights(project, "ddp-reference"), records_by_rank(read_records(records)), done


def test_two_processes_record_one_start_and_shard_the_epoch_evenly(example_project, reference) -> None:
    project, _ = example_project
    _, batches_by_rank, done = reference
    run = project / "runs" / "ddp-reference"
    assert done.stdout.count("Run 'ddp-reference': new run") == 1 and done.stdout.count("finished") == 1
    assert '"starts": 1' in (run / "manifest.json").read_text()
    assert sorted(p.name for p in run.glob("packages-*.txt")) == ["packages-1.txt"]
    assert sorted(batches_by_rank) == [0, 1]
    for epoch in range(EPOCHS):
        counts = [sum(1 for b in batches_by_rank[r] if b["epoch"] == epoch) for r in (0, 1)]
        assert counts == [STEPS_PER_EPOCH, STEPS_PER_EPOCH]  # equal batch counts: no rank waits at a collective
        seen = sum((examples_per_epoch(batches_by_rank[r])[epoch] for r in (0, 1)), Counter())
        assert len(seen) == TRAINING_EXAMPLES  # every example, in the two shards together
        assert sum(seen.values()) == TRAINING_EXAMPLES + 1  # and one padded in, as DistributedSampler does
    ranks_differ = [b["examples"] for b in batches_by_rank[0]] != [b["examples"] for b in batches_by_rank[1]]
    assert ranks_differ


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_killed_two_process_run_resumes_to_identical_weights(
    example_project, example_command, reference, tmp_path, kill_point
) -> None:
    project, _ = example_project
    run_name = f"ddp-killed-{kill_point}"
    records = tmp_path / "records.jsonl"
    config = resume_test_config(
        tmp_path / "c.json", records, KILL_POINTS[kill_point], tmp_path / "killed", distinct_ranks=True
    )

    killed = fit_two(example_command, project, config, run_name)
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert (tmp_path / "killed").read_text().count("SIGKILL") >= 1
    resumed = fit_two(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"Run '{run_name}': resuming from") == 1  # rank 0 speaks for both

    assert_resumed_exactly(project, run_name, records, reference)


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"], ids=["rank-1-dies", "rank-1-stalls"])
def test_a_lost_process_ends_the_other_in_bounded_time_and_the_rerun_resumes(
    example_project, example_command, reference, tmp_path, fault
) -> None:
    project, _ = example_project
    run_name = f"ddp-lost-{fault.lower()}"
    records = tmp_path / "records.jsonl"
    kill = {**KILL_POINTS["mid_epoch"], "rank": 1, "signal": fault}
    config = resume_test_config(tmp_path / "c.json", records, kill, tmp_path / "marker", distinct_ranks=True)
    timeout_seconds = 15

    started = time.monotonic()
    failed = fit_two(
        example_command, project, config, run_name, f"--distributed.timeout_minutes={timeout_seconds / 60}"
    )
    elapsed = time.monotonic() - started

    assert failed.returncode != 0
    assert f"{fault} at train_batch_end, epoch 1, step 7, rank 1" in (tmp_path / "marker").read_text()
    # Startup and the first epoch take ~10 s here; the wait itself is bounded by the timeout.
    assert elapsed < 10 + timeout_seconds + 20, f"the surviving process took {elapsed:.0f} s to end"
    if fault == "SIGSTOP":  # rank 0 gives up waiting, says so, and Lightning's launcher kills the frozen rank
        assert "Training process 0 of 2 stopped during training step" in failed.stderr
        assert "it waited for the other processes and they did not answer" in failed.stderr
        assert "Traceback" not in failed.stderr
    else:  # Lightning's launcher sees its child die and ends rank 0 within seconds
        assert "terminated with code -9" in failed.stderr or "did not answer" in failed.stderr

    resumed = fit_two(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_exactly(project, run_name, records, reference)


def test_resuming_mid_epoch_with_another_process_count_is_refused(example_project, example_command, tmp_path) -> None:
    project, _ = example_project
    run_name = "ddp-then-one-mid-epoch"
    config = resume_test_config(
        tmp_path / "c.json", tmp_path / "r.jsonl", KILL_POINTS["mid_epoch"], tmp_path / "k", distinct_ranks=True
    )
    assert fit_two(example_command, project, config, run_name).returncode != 0
    checkpoints = project / "runs" / run_name / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoints.glob("*.ckpt")}
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 6  # mid-epoch 1

    refused = train(example_command, project, config, run_name, *ONE_PROCESS, *SHORT_RUN)

    assert refused.returncode == 2
    assert "written mid-epoch by 2 training process(es); this run has 1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints.glob("*.ckpt")} == before


def test_a_refusal_both_processes_raise_after_the_launch_ends_with_exit_2_also_when_the_first_ends_last(
    example_project, example_command, tmp_path
) -> None:
    """The optimizer settings are refused in each process after Lightning launched the second (unlike the
    checks before the launch): exit 2 with the one line, not -9 from Lightning's child-process observer."""
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused")
    slow_first_exit = with_slow_first_process_exit(config, tmp_path)
    negative_learning_rate = "--model.init_args.learning_rate=-1"

    refused = fit_two(example_command, project, config, "ddp-refused", negative_learning_rate, env=slow_first_exit)

    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "error: DigitsClassifier refused its optimizer settings (" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not list((project / "runs" / "ddp-refused").glob("checkpoints/*"))


def test_resuming_at_an_epoch_boundary_with_another_process_count_continues(
    example_project, example_command, tmp_path
) -> None:
    """Checkpoints only at epoch ends: the one-process continuation sees every example once per epoch."""
    project, _ = example_project
    run_name = "ddp-then-one-epoch-boundary"
    records = tmp_path / "records.jsonl"
    config = resume_test_config(
        tmp_path / "c.json", records, KILL_POINTS["mid_epoch"], tmp_path / "k", distinct_ranks=True
    )
    epoch_ends_only = ["--checkpointing.every_n_steps=null"]
    assert fit_two(example_command, project, config, run_name, *epoch_ends_only).returncode != 0

    resumed = train(example_command, project, config, run_name, *ONE_PROCESS, *SHORT_RUN, *epoch_ends_only)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from last.ckpt (epoch 1, step 5)" in resumed.stdout
    records_written = read_records(records)
    one_process = [r for r in records_written if r["pid"] == records_written[-1]["pid"]]  # the resumed process
    for epoch, seen in examples_per_epoch(one_process).items():
        assert len(seen) == TRAINING_EXAMPLES and set(seen.values()) == {1}, f"epoch {epoch}"
    assert sorted(examples_per_epoch(one_process)) == [1, 2]
    assert validated_epochs(project, run_name) == set(range(EPOCHS))


def test_a_signal_to_one_process_stops_both_at_the_same_batch(example_project, example_command, tmp_path) -> None:
    """USR1 to rank 0 alone (`kill -USR1 PID` of the command): both stop, one checkpoint, exit 3 (also when
    the first process ends last), exact resume."""
    project, venv = example_project
    # A timed save every 0.3 s; a regression that hangs fails after a minute, not ten.
    long_run = ["--trainer.max_epochs=15", "--checkpointing.every_n_minutes=0.005", "--distributed.timeout_minutes=1"]
    records = tmp_path / "records.jsonl"
    config = resume_test_config(tmp_path / "c.json", records, None, tmp_path / "unused", distinct_ranks=True)
    reference = train(example_command, project, config, "ddp-signal-reference", *TWO_PROCESSES, *long_run)
    assert reference.returncode == 0, reference.stderr[-3000:]
    records.unlink()

    env = {**os.environ, **with_slow_first_process_exit(config, tmp_path)}
    command = [*example_command, "fit", "--config", str(config), "--run_name", "ddp-signalled", *TWO_PROCESSES]
    process = preloaded_commands.start(
        [*command, *long_run], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 120
    while not (records.exists() and any(r["epoch"] >= 3 for r in read_records(records))):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be signalled"
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)  # rank 0 only: Lightning started rank 1 as its own child process
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 3, stderr.decode()[-3000:]
    assert stdout.decode().count("stopped on SIGUSR1") == 1
    stopped_at = {rank: batches[-1]["global_step"] for rank, batches in records_by_rank(read_records(records)).items()}
    assert stopped_at[0] == stopped_at[1]  # the same batch on both
    resumed = train(example_command, project, config, "ddp-signalled", *TWO_PROCESSES, *long_run, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        max_abs_difference(final_weights(project, "ddp-signalled"), final_weights(project, "ddp-signal-reference")) == 0
    )


def test_a_signal_that_arrives_during_an_agreement_counts_at_the_next(example_package, tmp_path, monkeypatch) -> None:
    """The processes agree on the stop flag in a collective; a signal handled while this process waits
    in it must not be overwritten by the agreed 'no' (that lost a USR1 once in five CI runs)."""
    from digits_mlp.kit.training import rolling_checkpoint

    callback = rolling_checkpoint.RollingCheckpoint(tmp_path)

    class Trainer:
        global_step, is_global_zero = 10, True

    def agree_while_a_signal_arrives(trainer, *values):
        callback.signal_received = True  # the handler runs while this process waits for the others
        return list(values)  # the maximum over processes of what each passed: nobody had a signal yet

    monkeypatch.setattr(rolling_checkpoint, "agree_max", agree_while_a_signal_arrives)
    callback._agree_on_signal_and_time(Trainer())
    assert callback.stop_agreed is False  # every process acts on the agreed value: no stop yet
    assert callback.signal_received is True  # ... and the signal is not forgotten
    monkeypatch.setattr(rolling_checkpoint, "agree_max", lambda trainer, *values: list(values))
    Trainer.global_step = 11
    callback._agree_on_signal_and_time(Trainer())
    assert callback.stop_agreed is True  # the next agreement stops every process


LAST_STEP = EPOCHS * STEPS_PER_EPOCH
AT_THE_END = {
    "sigterm-on-the-last-batch": {"hook": "train_batch_end", "global_step": LAST_STEP, "signal": "SIGTERM"},
    "usr1-at-the-last-epoch-end": {"hook": "train_epoch_end", "epoch": EPOCHS - 1, "signal": "SIGUSR1"},
    "kill-after-the-last-epochs-checkpoint": {"hook": "train_end", "global_step": LAST_STEP, "signal": "SIGKILL"},
}


@pytest.mark.parametrize("case", sorted(AT_THE_END))
def test_two_processes_stopped_at_the_very_end_finish_on_the_rerun(
    example_project, example_command, reference, tmp_path, case
) -> None:
    project, _ = example_project
    run_name = f"ddp-at-the-end-{case}"
    records = tmp_path / "records.jsonl"
    config = resume_test_config(
        tmp_path / "c.json", records, AT_THE_END[case], tmp_path / "stopped", distinct_ranks=True
    )
    run = project / "runs" / run_name

    stopped = fit_two(example_command, project, config, run_name)
    assert stopped.returncode != 0 and not (run / "checkpoints" / "final.ckpt").exists()
    if AT_THE_END[case]["signal"] != "SIGKILL":
        assert stopped.returncode == 3, stopped.stderr[-3000:]

    resumed = fit_two(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert resumed.stdout.count(f"Run '{run_name}' finished") == 1
    assert '"status": "finished"' in (run / "manifest.json").read_text()
    assert max_abs_difference(final_weights(project, run_name), reference[0]) == 0.0


def test_two_diverging_processes_stop_together_and_keep_finite_checkpoints(
    example_project, example_command, tmp_path
) -> None:
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused")
    diverging = ["--model.init_args.learning_rate=1e8", "--checkpointing.every_n_steps=1"]
    run = project / "runs" / "ddp-diverged"

    for _ in range(2):  # the re-run resumes the last finite checkpoint and diverges again
        done = fit_two(example_command, project, config, "ddp-diverged", *diverging)
        assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-3000:]
        assert done.stderr.count("error: training diverged") == 1 and "Traceback" not in done.stderr
        assert '"status": "failed"' in (run / "manifest.json").read_text()
        checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
        assert checkpoints and not (run / "checkpoints" / "final.ckpt").exists()
        for path in checkpoints:
            weights = torch.load(path, weights_only=True)["state_dict"]
            assert all(torch.isfinite(value).all() for value in weights.values()), path.name
