"""Training from packed shards (kit/data/sharded_data_module.py, the many-files example): packing is the
cached `data prepare` step, a damaged shard stops `fit` with one message, the loader settings follow
the CPUs SLURM gives, and the crash tests hold with shards: a run SIGKILLed mid-epoch resumes to the
uninterrupted run's weights, batch for batch, with 0 and 2 data-loading workers, in one process and
in two DDP processes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from training_runs import effective_batches, final_weights, max_abs_difference, read_records, records_by_rank, train

import preloaded_commands

COUNT, ROWS_PER_SHARD, BATCH_SIZE = 2_000, 500, 128  # 1,600 training samples in 4 shards: 13 batches per epoch
# Two epochs: the kill lands mid-way through the second, so the resumed run must continue mid-epoch.
SHARDED_RUN = ["--trainer.max_epochs=2", "--checkpointing.every_n_steps=3", "--checkpointing.every_n_minutes=null"]
ONE_PROCESS = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
TWO_PROCESSES = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
MID_EPOCH = {"one process": 17, "two processes": 10}  # epoch 1 either way (13 and 7 steps per epoch)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sharded-data")


def sharded_config(path: Path, data_dir: Path, workers: int, records: Path | None = None, kill: dict | None = None):
    """The many-files example at COUNT samples in `data_dir`, with batch recording and a one-time kill."""
    callbacks = [{"class_path": "digits_mlp.kit.ProgressLines"}]
    if records is not None:
        callbacks.append({"class_path": "digits_mlp.kit.RecordBatches", "init_args": {"path": str(records)}})
        callbacks.append({"class_path": "digits_mlp.kit.DistinctRankRandomness"})
    if kill is not None:
        callbacks.append({"class_path": "digits_mlp.kit.KillAt", "init_args": kill})
    data = {
        "class_path": "digits_mlp.kit.ManyFilesDataModule",
        "init_args": {
            "count": COUNT,
            "rows_per_shard": ROWS_PER_SHARD,
            "batch_size": BATCH_SIZE,
            "data_dir": str(data_dir),
            "loader": {"num_workers": workers},
        },
    }
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}, "data": data}))
    return path


def data_command(command: list[str], project: Path, *options: str) -> subprocess.CompletedProcess:
    return preloaded_commands.run(
        [*command, "data", *options], cwd=project, capture_output=True, text=True, env={**os.environ}
    )


def test_packing_is_the_cached_prepare_step(example_project, example_command, tmp_path) -> None:
    project, _ = example_project
    config = sharded_config(tmp_path / "c.json", tmp_path / "data", workers=0)
    first = data_command(example_command, project, "prepare", "--config", str(config))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "computed and cached" in first.stdout
    packed = Path(first.stdout.strip().split(": ")[-1])
    packed = packed if packed.is_absolute() else project / packed
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["rows"] == COUNT and len(manifest["shards"]) == COUNT // ROWS_PER_SHARD
    assert sorted(manifest["columns"]) == ["day", "label", "split"]
    again = data_command(example_command, project, "prepare", "--config", str(config))
    assert "loaded from the cache" in again.stdout and str(packed.name) in again.stdout
    # One raw file changes: the key changes, the data is packed anew beside the old shards.
    raw = sorted((tmp_path / "data" / "raw").glob("many-files-*/*.npy"))
    assert len(raw) == COUNT
    raw[5].write_bytes(raw[6].read_bytes())
    changed = data_command(example_command, project, "prepare", "--config", str(config))
    assert "computed and cached" in changed.stdout and packed.name not in changed.stdout
    fetched = data_command(example_command, project, "fetch", "--config", str(config))
    assert f"  ... and {COUNT - 4:,} more" in fetched.stdout and len(fetched.stdout.splitlines()) == 5


def test_a_damaged_shard_stops_fit_with_one_message(example_project, example_command, tmp_path) -> None:
    project, _ = example_project
    config = sharded_config(tmp_path / "c.json", tmp_path / "data", workers=0)
    prepared = data_command(example_command, project, "prepare", "--config", str(config))
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    shard = next((tmp_path / "data" / "processed").glob("pack-*/shard-00002.inputs.npy"))
    shard.write_bytes(shard.read_bytes()[:-64])  # truncated
    done = train(example_command, project, config, "damaged-shard", *SHARDED_RUN, *ONE_PROCESS)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: shard {shard} is damaged or truncated" in done.stderr and "Traceback" not in done.stderr
    assert not (project / "runs" / "damaged-shard" / "checkpoints" / "last.ckpt").exists()


def test_loader_settings_follow_the_cpus_slurm_gives(example_package, monkeypatch) -> None:
    from digits_mlp.kit import LoaderSettings

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")
    assert LoaderSettings().dataloader_options() == {
        "num_workers": 4,  # one CPU for the training process
        "pin_memory": False,  # no GPU here: pinning costs and gives nothing
        "persistent_workers": False,
        "prefetch_factor": 2,
    }
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert LoaderSettings().dataloader_options() == {"num_workers": 0, "pin_memory": False}
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")
    assert LoaderSettings().dataloader_options()["num_workers"] == 8  # at most MAX_AUTO_WORKERS
    assert LoaderSettings(num_workers=3, pin_memory=True).dataloader_options()["num_workers"] == 3
    with pytest.raises(ValueError, match="num_workers must be 0 or more"):
        LoaderSettings(num_workers=-1)


@pytest.fixture(scope="module")
def uninterrupted(example_project, example_command, data_dir, tmp_path_factory):
    """One uninterrupted run per placement, with no data-loading workers: what every killed run must
    match, with 0 workers and with 2 (workers change where a batch is read, not which one)."""
    project, _ = example_project
    made: dict[str, tuple[str, Path]] = {}

    def reference(processes: str) -> tuple[str, Path]:
        if processes not in made:
            work, name = tmp_path_factory.mktemp("reference"), f"shards-reference-{len(made)}"
            config = sharded_config(work / "r.json", data_dir, 0, work / "records.jsonl")
            placement = ONE_PROCESS if processes == "one process" else TWO_PROCESSES
            done = train(example_command, project, config, name, *SHARDED_RUN, *placement)
            assert done.returncode == 0, done.stderr[-3000:]
            made[processes] = name, work / "records.jsonl"
        return made[processes]

    return reference


@pytest.mark.parametrize("processes", ["one process", "two processes"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_run_on_shards_resumes_to_identical_weights(
    example_project, example_command, data_dir, uninterrupted, tmp_path, workers, processes
) -> None:
    project, _ = example_project
    placement = ONE_PROCESS if processes == "one process" else TWO_PROCESSES
    tag = f"w{workers}-{'ddp' if processes == 'two processes' else 'single'}"
    reference_name, reference_records = uninterrupted(processes)

    records, marker = tmp_path / "killed.jsonl", tmp_path / "killed.marker"
    kill = {"marker_file": str(marker), "hook": "train_batch_end", "global_step": MID_EPOCH[processes]}
    config = sharded_config(tmp_path / "k.json", data_dir, workers, records, kill)
    killed = train(example_command, project, config, f"shards-killed-{tag}", *SHARDED_RUN, *placement)
    assert killed.returncode != 0 and "SIGKILL" in marker.read_text(), killed.stderr[-3000:]
    resumed = train(example_command, project, config, f"shards-killed-{tag}", *SHARDED_RUN, *placement)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"Run 'shards-killed-{tag}': resuming from") == 1

    weights = final_weights(project, f"shards-killed-{tag}"), final_weights(project, reference_name)
    assert max_abs_difference(*weights) == 0.0
    expected, seen = records_by_rank(read_records(reference_records)), records_by_rank(read_records(records))
    assert sorted(seen) == sorted(expected) == ([0] if processes == "one process" else [0, 1])
    for rank in expected:
        assert [b["examples"] for b in effective_batches(seen[rank])] == [b["examples"] for b in expected[rank]]
