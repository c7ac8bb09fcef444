"""A runs directory that cannot take a file, and a checkpoint policy that cannot work: one clear message each.

Real filesystems: a small tmpfs (full disk), the same remounted read-only, a file where the runs
directory should be. Mounting needs root (CI runs as root); elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from training_runs import SHORT_RUN, max_abs_difference, resume_test_config, train

# One example checkpoint (weights and Adam state) is about 1 MB: 2.6 MB hold the rolling pair and no more.
SMALL_DISK = "2600k"


@pytest.fixture
def small_disk(tmp_path: Path):
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(mount_point)])
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def remount(mount_point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True)


def assert_one_clear_error(done: subprocess.CompletedProcess, cause: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write the run's files: {cause}"), errors


def test_full_disk_stops_with_the_cause_keeps_the_checkpoints_and_resumes_when_freed(
    example_project, example_command, small_disk, tmp_path
) -> None:
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused")
    on_small_disk = {"RUNS_DIR": str(small_disk)}

    full = train(example_command, project, config, "full-disk", *SHORT_RUN, env=on_small_disk)

    assert_one_clear_error(full, "the disk is full")
    checkpoints = small_disk / "full-disk" / "checkpoints"
    kept = {path.name: torch.load(path, weights_only=True)["global_step"] for path in checkpoints.glob("*.ckpt")}
    assert kept == {"previous.ckpt": 3, "last.ckpt": 6}  # the write at step 9 failed; both earlier ones intact
    assert not list(checkpoints.glob(".*.partial"))

    remount(small_disk, "size=64m")
    resumed = train(example_command, project, config, "full-disk", *SHORT_RUN, env=on_small_disk)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from last.ckpt (epoch 1, step 6)" in resumed.stdout

    reference = train(example_command, project, config, "full-disk-reference", *SHORT_RUN, env=on_small_disk)
    assert reference.returncode == 0, reference.stderr[-3000:]
    weights = {
        name: torch.load(small_disk / name / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
        for name in ("full-disk", "full-disk-reference")
    }
    assert max_abs_difference(weights["full-disk"], weights["full-disk-reference"]) == 0.0


def test_read_only_runs_directory(example_project, example_command, small_disk, tmp_path) -> None:
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused")
    remount(small_disk, "ro")
    done = train(example_command, project, config, "read-only", *SHORT_RUN, env={"RUNS_DIR": str(small_disk)})
    assert_one_clear_error(done, "the filesystem is read-only")


def test_runs_dir_that_is_a_file(example_project, example_command, tmp_path) -> None:
    project, _ = example_project
    config = resume_test_config(tmp_path / "c.json", tmp_path / "r.jsonl", None, tmp_path / "unused")
    a_file = tmp_path / "runs-is-a-file"
    a_file.write_text("not a directory\n")
    done = train(example_command, project, config, "nowhere", *SHORT_RUN, env={"RUNS_DIR": str(a_file)})
    assert_one_clear_error(done, "a path on the way is a file, not a directory")
    assert a_file.read_text() == "not a directory\n"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--checkpointing.every_n_steps=0", "checkpointing: every_n_steps must be a positive number of steps"),
        ("--checkpointing.every_n_minutes=-1", "checkpointing: every_n_minutes must be positive"),
        ("--distributed.timeout_minutes=0", "distributed: timeout_minutes must be positive"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(example_project, example_command, tmp_path, option, message) -> None:
    project, _ = example_project
    (tmp_path / "none.json").write_text("{}")
    done = train(
        example_command, project, tmp_path / "none.json", "bad-policy", option, env={"RUNS_DIR": str(tmp_path)}
    )
    assert done.returncode == 2 and f"error: {message}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "bad-policy").exists()
