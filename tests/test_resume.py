"""Crash and resume, for real: SIGKILL a training process, re-run the same command, compare.

The resumed run's final weights must equal an uninterrupted run's exactly, and every training
example must be seen exactly once per epoch across the crash.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from training_runs import (
    EPOCHS,
    SHORT_RUN,
    effective_batches,
    final_weights,
    max_abs_difference,
    read_records,
    resume_test_config,
    validated_epochs,
    validation_rows,
)
from training_runs import train as train_with

import preloaded_commands

STEPS_PER_EPOCH = 10  # 1,259 training examples in batches of 128
# (where to kill, the KillAt options): mid-epoch; on an epoch's last batch; after training, before validation.
KILL_POINTS = {
    "mid_epoch": {"hook": "train_batch_end", "global_step": 14},
    "last_batch_of_epoch": {"hook": "train_batch_end", "global_step": 2 * STEPS_PER_EPOCH},
    "before_validation": {"hook": "validation_start", "epoch": 1},
}


# Early stopping after the second epoch: validation accuracy gains less than 0.2 from there.
STOP_EARLY = ["--early_stopping.patience=1", "--early_stopping.min_delta=0.2"]


def train(command: list[str], project: Path, config: Path, run_name: str, *extra: str):
    return train_with(command, project, config, run_name, *SHORT_RUN, *extra)


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


# (signal, where it arrives, data-loading workers): every stop signal and point of arrival at least once.
SIGNAL_CASES = {
    "sigint-batch-start": ("SIGINT", {"hook": "train_batch_start", "global_step": 14}, 0),
    "sigint-checkpoint-write-workers": ("SIGINT", {"hook": "save_checkpoint", "global_step": 12}, 2),
    "sigterm-batch-end": ("SIGTERM", {"hook": "train_batch_end", "global_step": 14}, 0),
    "sigterm-validation": ("SIGTERM", {"hook": "validation_start", "epoch": 1}, 0),
}


@pytest.mark.parametrize("case", sorted(SIGNAL_CASES))
def test_ctrl_c_and_sigterm_checkpoint_stop_with_code_3_and_resume_exactly(
    example_project, example_command, reference_runs, tmp_path, case
) -> None:
    project, _ = example_project
    signal_name, point, num_workers = SIGNAL_CASES[case]
    run_name = f"signalled-{case}"
    records = tmp_path / "records.jsonl"
    # Ctrl-C in a terminal reaches the whole process group, the data-loading workers included.
    kill = {**point, "signal": signal_name, "whole_group": signal_name == "SIGINT"}
    config = resume_test_config(tmp_path / "c.json", records, kill, tmp_path / "signalled", num_workers)

    stopped = train(example_command, project, config, run_name)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    assert f"Run '{run_name}' stopped on {signal_name} at step" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    manifest = json.loads((project / "runs" / run_name / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["stopped_by"] == signal_name
    resumed = train(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Run '{run_name}': resuming from last.ckpt" in resumed.stdout
    epoch_seconds = [float(s) for s in re.findall(r"^epoch \d+/\d+  step \d+  ([0-9.]+) s", resumed.stdout, re.M)]
    assert epoch_seconds and max(epoch_seconds) < 60  # the resumed epoch is timed from the resume

    reference_weights, reference_records, _ = reference_runs[num_workers]
    assert max_abs_difference(final_weights(project, run_name), reference_weights) == 0.0
    batches = effective_batches(read_records(records))
    assert [b["examples"] for b in batches] == [b["examples"] for b in reference_records]
    assert validated_epochs(project, run_name) == set(range(EPOCHS))


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
    leftover = last.with_name(".last.ckpt.k1ll3d.partial")  # as a kill during an atomic write leaves it
    leftover.write_bytes(b"half a checkpoint")

    resumed = train(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not leftover.exists() and "removed 1 partial file(s) left by an interrupted write" in resumed.stdout
    assert "last.ckpt is unreadable" in resumed.stderr and "resuming from the previous checkpoint" in resumed.stderr
    assert "resuming from previous.ckpt" in resumed.stdout
    assert list((last.parent / "unreadable").glob("last.ckpt.*"))
    assert max_abs_difference(final_weights(project, run_name), reference_runs[0][0]) == 0.0


def test_silently_damaged_last_checkpoint_is_detected_by_its_checksum(
    example_project, example_command, reference_runs, tmp_path
) -> None:
    project, _ = example_project
    run_name = "bit-flipped-last"
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", KILL_POINTS["mid_epoch"], tmp_path / "k", 0)
    assert train(example_command, project, config, run_name).returncode == -9
    last = project / "runs" / run_name / "checkpoints" / "last.ckpt"
    content = bytearray(last.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 64] = bytes(range(64))  # inside the tensor data
    last.write_bytes(bytes(content))
    assert torch.load(last, weights_only=True)["global_step"] == 12  # it still loads

    resumed = train(example_command, project, config, run_name)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "last.ckpt is damaged: its checksum is not the one recorded" in resumed.stderr
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


def test_a_resumed_run_keeps_the_precision_it_started_in(example_project, example_command, tmp_path) -> None:
    """The automatic precision is chosen for the first start's machine; a resume elsewhere (a job requeued
    onto another kind of GPU, a run taken to a CPU) keeps it, or is refused where it cannot run."""
    project, _ = example_project
    run_name = "kept-precision"
    run = project / "runs" / run_name
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", KILL_POINTS["mid_epoch"], tmp_path / "k", 0)
    assert train(example_command, project, config, run_name).returncode == -9
    manifest_path = run / "manifest.json"
    started = json.loads(manifest_path.read_text())
    assert started["precision"] == "32-true"  # chosen on this machine (a CPU) at the first start
    assert read_records_of(run)[0]["placement"]["precision"] == "32-true"

    # As if the first start had been on a GPU without bf16: fp16 mixed precision cannot run on a CPU.
    manifest_path.write_text(json.dumps({**started, "precision": "16-mixed"}))
    before = (manifest_path.read_bytes(), sorted((run / "checkpoints").iterdir()), (run / "record.json").read_bytes())
    refused = train(example_command, project, config, run_name)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr == (
        f"error: Run '{run_name}' trains in 16-mixed, the precision it started in, and fp16 mixed precision needs "
        "a CUDA GPU: resume it on a machine that runs 16-mixed (a requeued job: a partition of such GPUs), or "
        "train a new run here (--run_name NEW_NAME).\n"
    )
    after = (manifest_path.read_bytes(), sorted((run / "checkpoints").iterdir()), (run / "record.json").read_bytes())
    assert after == before  # refused before anything was written

    # As if the first start had been on an A100: bf16 runs on a CPU too, so the run goes on in it.
    manifest_path.write_text(json.dumps({**started, "precision": "bf16-mixed"}))
    resumed = train(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"Run '{run_name}': training in bf16-mixed, the precision it started in (on this machine a new run "
        "would train in 32-true)." in resumed.stdout.splitlines()
    )
    assert [start["placement"]["precision"] for start in read_records_of(run)] == ["32-true", "bf16-mixed"]


def read_records_of(run: Path) -> list[dict]:
    """The starts in a run's record.json."""
    return json.loads((run / "record.json").read_text())["starts"]


def test_supervise_restarts_a_crashed_run_until_it_finishes(example_project, example_command, reference_runs, tmp_path):
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", KILL_POINTS["mid_epoch"], tmp_path / "k", 0)
    options = ["fit", "--config", str(config), *SHORT_RUN, "--run_name", "supervised"]
    done = preloaded_commands.run(
        [*example_command, "supervise", "--max-restarts", "2", "--backoff-seconds", "0.1", "--", *options],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "command exited with -9; restart 1 of 2" in done.stderr
    assert "Run 'supervised': resuming from" in done.stdout and "Run 'supervised' finished" in done.stdout
    assert max_abs_difference(final_weights(project, "supervised"), reference_runs[0][0]) == 0.0


# A stop or a kill at a run's very end (Lightning then skips its whole fit loop on the resume): the
# re-run must finish the run, exit 0 and end with the uninterrupted run's weights. (signal, where).
LAST_STEP = EPOCHS * STEPS_PER_EPOCH
AT_THE_END = {
    "sigterm-on-the-last-batch": {"hook": "train_batch_end", "global_step": LAST_STEP, "signal": "SIGTERM"},
    "usr1-at-the-last-epoch-end": {"hook": "train_epoch_end", "epoch": EPOCHS - 1, "signal": "SIGUSR1"},
    "kill-after-the-last-epochs-checkpoint": {"hook": "train_end", "global_step": LAST_STEP, "signal": "SIGKILL"},
}


@pytest.mark.parametrize("case", sorted(AT_THE_END))
def test_a_run_stopped_at_its_very_end_finishes_on_the_rerun(
    example_project, example_command, reference_runs, tmp_path, case
) -> None:
    project, _ = example_project
    run_name = f"at-the-end-{case}"
    kill = AT_THE_END[case]
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", kill, tmp_path / "stopped", 0)
    run = project / "runs" / run_name

    stopped = train(example_command, project, config, run_name)
    assert stopped.returncode == (-9 if kill["signal"] == "SIGKILL" else 3), stopped.stderr[-3000:]
    assert not (run / "checkpoints" / "final.ckpt").exists()
    assert json.loads((run / "manifest.json").read_text())["status"] != "finished"

    resumed = train(example_command, project, config, run_name)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"Run '{run_name}': resuming from" in resumed.stdout
    assert f"Run '{run_name}' finished" in resumed.stdout
    assert json.loads((run / "manifest.json").read_text())["status"] == "finished"
    assert max_abs_difference(final_weights(project, run_name), reference_runs[0][0]) == 0.0

    again = train(example_command, project, config, run_name)
    assert again.returncode == 0 and f"Run '{run_name}' is complete" in again.stdout


def test_a_kill_right_after_early_stopping_finishes_without_training_on(
    example_project, example_command, tmp_path
) -> None:
    """Early stopping decided at epoch 1 of 3; a kill before final.ckpt must not train epoch 2 on the re-run."""
    project, _ = example_project
    reference_config = resume_test_config(tmp_path / "ref.json", tmp_path / "ref.jsonl", None, tmp_path / "unused", 0)
    reference = train(example_command, project, reference_config, "early-stop-reference", *STOP_EARLY)
    assert "Stopped early after epoch 2" in reference.stdout, reference.stdout[-2000:]
    kill = {"hook": "train_end", "global_step": 2 * STEPS_PER_EPOCH}
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", kill, tmp_path / "killed", 0)
    assert train(example_command, project, config, "early-stop-killed", *STOP_EARLY).returncode == -9

    resumed = train(example_command, project, config, "early-stop-killed", *STOP_EARLY)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Stopped early after epoch 2" in resumed.stdout and "epoch 3/" not in resumed.stdout
    reference_weights = final_weights(project, "early-stop-reference")
    assert max_abs_difference(final_weights(project, "early-stop-killed"), reference_weights) == 0.0


DIVERGING = ["--model.init_args.learning_rate=1e8", "--checkpointing.every_n_steps=1"]


def assert_diverged(done, run: Path) -> None:
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "learning rate" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "finished" not in done.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "TrainingDiverged" in manifest["error"]
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    assert checkpoints and not (run / "checkpoints" / "final.ckpt").exists()
    for path in checkpoints:  # the last finite state is kept; nothing non-finite was ever written
        weights = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(value).all() for value in weights.values()), path.name


def test_a_diverged_run_stops_keeps_its_finite_checkpoints_and_never_finishes(
    example_project, example_command, tmp_path
) -> None:
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused", 0)
    run = project / "runs" / "diverged"

    first = train(example_command, project, config, "diverged", *DIVERGING)
    assert_diverged(first, run)
    steps = {torch.load(p, weights_only=True)["global_step"] for p in (run / "checkpoints").glob("*.ckpt")}

    again = train(example_command, project, config, "diverged", *DIVERGING)  # resumes the finite state, diverges again
    assert "Run 'diverged': resuming from last.ckpt" in again.stdout
    assert_diverged(again, run)
    assert max(steps) < LAST_STEP


def test_a_finished_run_trains_longer_as_a_new_run_from_its_final_checkpoint(
    example_project, example_command, reference_runs, tmp_path
) -> None:
    """The refusal of a longer run under the old name names the way; that new run resumes from its own checkpoints."""
    project, _ = example_project
    _, _, config = reference_runs[0]  # reference-w0: 3 epochs, finished
    longer = f"--trainer.max_epochs={EPOCHS + 1}"
    refused = train(example_command, project, config, "reference-w0", longer)
    assert refused.returncode == 2, refused.stderr[-3000:]
    final = project / "runs" / "reference-w0" / "checkpoints" / "final.ckpt"
    hint = "To train it longer, start a new run from its last checkpoint: fit --run_name NEW_NAME --ckpt_path "
    assert hint + "runs/reference-w0/checkpoints/final.ckpt" in refused.stderr.replace(f"{project}/", "")
    from_final = ["--ckpt_path", str(final), longer]
    straight = train(example_command, project, config, "longer-straight", *from_final)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert f"Run 'longer-straight': starting from the given checkpoint {final}" in straight.stdout
    assert validated_epochs(project, "longer-straight") == {EPOCHS}  # one more epoch, the fourth

    kill = {"hook": "train_batch_end", "epoch": EPOCHS, "batch_index": 4}  # last.ckpt at step 33 (every 3)
    killable = resume_test_config(tmp_path / "k.json", tmp_path / "k.jsonl", kill, tmp_path / "killed")
    assert train(example_command, project, killable, "longer-killed", *from_final).returncode != 0
    resumed = train(example_command, project, killable, "longer-killed", *from_final)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Run 'longer-killed': resuming from last.ckpt (epoch {EPOCHS + 1}, step 33)" in resumed.stdout
    assert max_abs_difference(final_weights(project, "longer-killed"), final_weights(project, "longer-straight")) == 0
    record = json.loads((project / "runs" / "longer-killed" / "record.json").read_text())
    assert record["starts"][0]["started_from"] == {"checkpoint": str(final.resolve()), "run": "reference-w0"}


def test_a_run_that_stopped_early_goes_on_as_a_new_run_from_its_final_checkpoint(
    example_project, example_command, tmp_path
) -> None:
    """Its final.ckpt says training ended (early stopping): that is the old run's end, not the new run's."""
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused")
    stopped = train(example_command, project, config, "stopped-early", *STOP_EARLY)
    assert "Stopped early after epoch 2" in stopped.stdout, stopped.stdout[-2000:]
    final = project / "runs" / "stopped-early" / "checkpoints" / "final.ckpt"
    go_on = ["--ckpt_path", str(final), "--early_stopping.patience=null"]
    went_on = train(example_command, project, config, "after-early-stop", *go_on)
    assert went_on.returncode == 0, went_on.stderr[-3000:]
    assert validated_epochs(project, "after-early-stop") == {EPOCHS - 1}  # the third epoch, trained now


def test_a_run_that_reaches_max_steps_mid_epoch_validates_there_finishes_and_resumes_exactly(
    example_project, example_command, tmp_path
) -> None:
    """Lightning validates at an epoch's end only; a run whose `max_steps` ends mid-epoch validates there too.

    Without that the run ended on the previous epoch's values: its "best" checkpoint at the last step carried
    a metric of other weights, and `finished` showed that metric as the run's (before the first epoch's end:
    tests/test_option_errors.py).
    """
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused", 0)
    end_mid_epoch = ["--trainer.max_steps=14"]  # 10 steps an epoch: the end comes 4 steps into the second
    reference = train(example_command, project, config, "max-steps-14", *end_mid_epoch)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert [row["epoch"] for row in validation_rows(project, "max-steps-14")] == ["0", "1"]
    (best,) = (project / "runs" / "max-steps-14" / "checkpoints").glob("best-*step0000014.ckpt")
    last_validation = float(validation_rows(project, "max-steps-14")[-1]["val/acc"])
    assert f"Run 'max-steps-14' finished. val/acc = {last_validation:.4f}" in reference.stdout
    # The value RunBookkeeping writes into each checkpoint: the one `evaluate` and the cards show.
    assert torch.load(best, weights_only=True)["monitored_value"] == pytest.approx(last_validation)

    kill = {"hook": "validation_start", "epoch": 1}  # the end's validation
    killable = resume_test_config(tmp_path / "k.json", tmp_path / "k.jsonl", kill, tmp_path / "killed", 0)
    assert train(example_command, project, killable, "max-steps-killed", *end_mid_epoch).returncode == -9
    resumed = train(example_command, project, killable, "max-steps-killed", *end_mid_epoch)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Run 'max-steps-killed': resuming from last.ckpt (epoch 2, step 12)" in resumed.stdout
    assert max_abs_difference(final_weights(project, "max-steps-killed"), final_weights(project, "max-steps-14")) == 0
    assert validation_rows(project, "max-steps-killed")[-1] == validation_rows(project, "max-steps-14")[-1]


# Lightning settings under which a resume was not exact: (the setting, the stop, where the stopped run ended).
SETTINGS_THAT_MOVE_THE_RESUME_POINT = {
    # The gradients summed over a step's first batches are in no checkpoint: a stop there lost them. A stop,
    # or a timed save, now waits for the batch that steps (batch 6 of 10: step 2).
    "accumulated-gradients": (
        ["--trainer.accumulate_grad_batches=3"],
        {"hook": "train_batch_end", "epoch": 0, "batch_index": 4, "signal": "SIGTERM"},
        "stopped on SIGTERM at step 2;",
    ),
    # Resumed at an epoch's end, Lightning builds a new training loader as the next epoch starts: the random
    # states were to be restored before the old loader's first batch, so never were (other dropout masks).
    "reloaded-loaders": (
        ["--trainer.reload_dataloaders_every_n_epochs=1"],
        {"hook": "train_batch_end", "global_step": 11},  # SIGKILL; last.ckpt is the first epoch's end
        None,
    ),
}


@pytest.mark.parametrize("case", SETTINGS_THAT_MOVE_THE_RESUME_POINT)
def test_a_stopped_run_resumes_exactly_under_settings_that_move_the_resume_point(
    example_project, example_command, tmp_path, case
) -> None:
    project, _ = example_project
    options, stop, stopped_at = SETTINGS_THAT_MOVE_THE_RESUME_POINT[case]
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused", 0)
    assert train(example_command, project, config, f"{case}-reference", *options).returncode == 0
    stoppable = resume_test_config(tmp_path / "s.json", tmp_path / "s.jsonl", stop, tmp_path / "stopped", 0)
    stopped = train(example_command, project, stoppable, case, *options)
    assert stopped.returncode == (3 if stopped_at else -9), stopped.stderr[-3000:]
    assert stopped_at is None or f"Run '{case}' {stopped_at}" in stopped.stdout, stopped.stdout[-2000:]
    resumed = train(example_command, project, stoppable, case, *options)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Run '{case}': resuming from last.ckpt" in resumed.stdout
    reference_weights = final_weights(project, f"{case}-reference")
    assert max_abs_difference(final_weights(project, case), reference_weights) == 0.0
