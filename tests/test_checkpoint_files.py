"""Checkpoint files (kit/runs/checkpoint_files.py, checkpoint_io.py): atomic writes, fallback from a
damaged file, RNG state that loads safely. In-process, on the example project's kit."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def kit(example_package) -> SimpleNamespace:
    from digits_mlp.kit.runs import checkpoint_files, checkpoint_io, directory
    from digits_mlp.kit.training import random_states

    return SimpleNamespace(
        checkpoint_io=checkpoint_io,
        atomic_torch_save=checkpoint_io.atomic_torch_save,
        newest_checkpoint=checkpoint_files.newest_checkpoint,
        read_checkpoint_info=checkpoint_files.read_checkpoint_info,
        UnreadableCheckpointWarning=checkpoint_files.UnreadableCheckpointWarning,
        RunDirectory=directory.RunDirectory,
        capture_rng_states=random_states.capture_rng_states,
        restore_rng_states=random_states.restore_rng_states,
    )


def fake_checkpoint(step: int) -> dict:
    return {"global_step": step, "epoch": step // 10, "state_dict": {"w": torch.full((100,), float(step))}}


def test_failed_write_keeps_the_previous_checkpoint(kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    kit.atomic_torch_save(fake_checkpoint(10), target)

    def write_half_then_fail(obj, stream):
        stream.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (injected)")

    monkeypatch.setattr(kit.checkpoint_io.torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="injected"):
        kit.atomic_torch_save(fake_checkpoint(20), target)

    assert torch.load(target, weights_only=True)["global_step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_resume_skips_a_truncated_checkpoint_and_moves_it_aside(kit, tmp_path: Path) -> None:
    kit.atomic_torch_save(fake_checkpoint(10), tmp_path / "previous.ckpt")
    kit.atomic_torch_save(fake_checkpoint(20), tmp_path / "last.ckpt")
    whole = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(whole[: len(whole) // 2])

    with pytest.warns(kit.UnreadableCheckpointWarning, match="last.ckpt"):
        chosen = kit.newest_checkpoint(tmp_path)

    assert chosen is not None and chosen.path.name == "previous.ckpt" and chosen.global_step == 10
    moved = list((tmp_path / "unreadable").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("last.ckpt")


def test_newest_is_chosen_by_step_not_by_file_time(kit, tmp_path: Path) -> None:
    kit.atomic_torch_save(fake_checkpoint(30), tmp_path / "best-epoch002-step0000030.ckpt")
    kit.atomic_torch_save(fake_checkpoint(20), tmp_path / "last.ckpt")  # written later, but older
    assert kit.newest_checkpoint(tmp_path).global_step == 30


def test_partial_files_from_a_crash_are_ignored(kit, tmp_path: Path) -> None:
    kit.atomic_torch_save(fake_checkpoint(10), tmp_path / "last.ckpt")
    (tmp_path / ".last.ckpt.x1y2.partial").write_bytes(b"PK\x03\x04 cut off by a crash")
    assert kit.newest_checkpoint(tmp_path).global_step == 10


def test_rng_states_round_trip_through_a_weights_only_load(kit, tmp_path: Path) -> None:
    import numpy as np

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    kit.atomic_torch_save({"rng": kit.capture_rng_states()}, tmp_path / "rng.ckpt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    kit.restore_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def damage_the_middle(path: Path) -> None:
    """Overwrite 64 bytes in the middle of the file (tensor data): it still loads."""
    content = bytearray(path.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(content))


def test_a_damaged_checkpoint_that_still_loads_is_set_aside_by_its_checksum(kit, tmp_path: Path) -> None:
    run = kit.RunDirectory(tmp_path / "run")
    run.start("config: 1\n", monitor={"metric": "val/loss", "mode": "min"})
    for step, name in ((10, "previous.ckpt"), (20, "last.ckpt")):
        remember = lambda checksum, step=step: run.remember_checksum(checksum, step)  # noqa: E731
        kit.atomic_torch_save(fake_checkpoint(step), run.checkpoint_dir / name, before_commit=remember)
    damage_the_middle(run.checkpoint_dir / "last.ckpt")
    assert torch.load(run.checkpoint_dir / "last.ckpt", weights_only=True)["global_step"] == 20  # silent damage

    with pytest.warns(kit.UnreadableCheckpointWarning, match="last.ckpt is damaged: its checksum"):
        chosen = kit.newest_checkpoint(
            run.checkpoint_dir, is_intact=lambda c: run.checksum_verdict(c.path, c.global_step)
        )

    assert chosen is not None and chosen.path.name == "previous.ckpt"
    assert [p.name.split(".ckpt")[0] for p in (run.checkpoint_dir / "unreadable").iterdir()] == ["last"]


def test_an_exception_checkpoint_is_never_resumed_from(kit, tmp_path: Path) -> None:
    kit.atomic_torch_save(fake_checkpoint(20), tmp_path / "last.ckpt")
    kit.atomic_torch_save(fake_checkpoint(23), tmp_path / "on_exception.ckpt")  # mid-step, for post-mortem
    assert kit.newest_checkpoint(tmp_path).path.name == "last.ckpt"


def test_a_checkpoint_says_which_model_class_it_holds(kit, tmp_path: Path) -> None:
    recorded = {**fake_checkpoint(3), "hyper_parameters": {"_class_path": "project.model.Regressor", "width": 8}}
    kit.atomic_torch_save(recorded, tmp_path / "with-class.ckpt")
    kit.atomic_torch_save(fake_checkpoint(3), tmp_path / "without.ckpt")
    assert kit.read_checkpoint_info(tmp_path / "with-class.ckpt").model_class == "project.model.Regressor"
    assert kit.read_checkpoint_info(tmp_path / "without.ckpt").model_class is None


@pytest.mark.parametrize(
    ("monitor", "refused_mode"),
    [
        ("val/acc", "min"),
        ("val/loss", "max"),
        ("val/mean_iou", "min"),
        ("valid_MSE", "max"),
        ("val/neg_loss", "min"),  # a negating word turns the direction: higher is better
        ("val/neg_acc", "max"),
    ],
)
def test_a_mode_against_the_metrics_name_is_refused(monitor: str, refused_mode: str, example_package) -> None:
    from digits_mlp.kit.training.fit_policies import refuse_a_mode_against_the_metric

    kept_mode = {"min": "max", "max": "min"}[refused_mode]
    refuse_a_mode_against_the_metric(monitor, kept_mode)
    with pytest.raises(ValueError, match=f"monitor is '{monitor}' with mode '{refused_mode}'"):
        refuse_a_mode_against_the_metric(monitor, refused_mode)


@pytest.mark.parametrize("monitor", ["val/score", "val/acc_minus_loss", None])
def test_a_metric_whose_name_does_not_say_takes_either_mode(monitor, example_package) -> None:
    from digits_mlp.kit.training.fit_policies import refuse_a_mode_against_the_metric

    for mode in ("min", "max"):
        refuse_a_mode_against_the_metric(monitor, mode)
