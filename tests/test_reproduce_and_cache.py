"""Issue 7 mechanics: `reproduce` rebuilds exactly what is stale, the preprocessing cache hits and
misses when it should, and run records and cards are complete."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import re
import shutil
import sys

import pytest
import torch

from template_dev import EXAMPLE_ANSWERS, commit_all, make_project_venv, render, run

PACKAGE = EXAMPLE_ANSWERS["package_name"]
ALL = {"example-model", "learning-curves", "final-metrics", "dataset-card", "exported-model", "model-card"}


# -- the preprocessing cache, in process -------------------------------------------------------
@pytest.fixture
def transform_module(example_package, tmp_path, monkeypatch):
    """A transform in a module file of its own, so that the test can edit its code."""
    source = tmp_path / "my_features.py"
    source.write_text("import torch\n\n\ndef double(raw_files, factor):\n    return {'x': torch.ones(3) * factor}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_features")
    yield source, module
    sys.modules.pop("my_features", None)


def test_cache_hits_and_misses(transform_module, tmp_path) -> None:
    from digits_mlp.kit.data.preprocessing_cache import cached_features

    source, module = transform_module
    raw = tmp_path / "raw.csv"
    raw.write_text("1,2,3\n")
    cache = tmp_path / "cache"

    first = cached_features(module.double, [raw], {"factor": 2}, cache)
    again = cached_features(module.double, [raw], {"factor": 2}, cache)
    assert (first.hit, again.hit, again.key) == (False, True, first.key)
    assert torch.equal(again.value["x"], torch.full((3,), 2.0))

    changed_param = cached_features(module.double, [raw], {"factor": 3}, cache)
    assert not changed_param.hit and changed_param.key != first.key

    raw.write_text("1,2,4\n")
    changed_data = cached_features(module.double, [raw], {"factor": 2}, cache)
    assert not changed_data.hit and changed_data.key not in (first.key, changed_param.key)

    source.write_text(source.read_text() + "# a comment is a code change too\n")
    module = importlib.reload(module)
    changed_code = cached_features(module.double, [raw], {"factor": 2}, cache)
    assert not changed_code.hit and changed_code.key != changed_data.key


KILLED_WRITE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from digits_mlp.kit.runs.atomic_files import atomic_output

with atomic_output(Path(sys.argv[2])) as stream:
    stream.write(b"half a feature file")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_a_cache_write_killed_outright_is_removed_by_the_next_miss(example_package, transform_module, tmp_path):
    """SIGKILL (the OOM killer, a node's reboot) gives a write no chance to remove its temporary file; the
    next miss on this host removes it, and keeps a live writer's and another host's."""
    import os
    import signal
    import socket
    import subprocess

    from digits_mlp.kit.data.preprocessing_cache import cached_features

    _, module = transform_module
    raw = tmp_path / "raw.csv"
    raw.write_text("1\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    writing = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITE, str(example_package / "src"), str(cache / "double-feedface.pt")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writing.stdout.readline() == "writing\n"
    writing.send_signal(signal.SIGKILL)
    writing.wait()
    (left,) = cache.iterdir()
    assert left.name.startswith(f".double-feedface.pt.{socket.gethostname()}-{writing.pid}.") and left.name.endswith(
        ".partial"
    )
    live = cache / f".double-0123.pt.{socket.gethostname()}-{os.getpid()}.x1.partial"  # a write going on here
    elsewhere = cache / ".double-0123.pt.another-host-12345.x2.partial"  # whose process this host cannot see
    live.write_bytes(b"")
    elsewhere.write_bytes(b"")

    result = cached_features(module.double, [raw], {"factor": 2}, cache)
    assert not result.hit and not left.exists() and live.exists() and elsewhere.exists()


def test_interrupted_or_damaged_cache_entries_are_never_used(transform_module, tmp_path, monkeypatch) -> None:
    from digits_mlp.kit.data.preprocessing_cache import cached_features
    from digits_mlp.kit.runs import checkpoint_io

    _, module = transform_module
    raw = tmp_path / "raw.csv"
    raw.write_text("1\n")
    cache = tmp_path / "cache"
    real_save = checkpoint_io.torch.save

    def killed_mid_write(obj, stream):
        stream.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt  # as a Ctrl-C or a kill during the write

    monkeypatch.setattr(checkpoint_io.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        cached_features(module.double, [raw], {"factor": 1}, cache)
    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)
    assert not list(cache.glob("*.pt")) and not list(cache.glob("*.partial"))

    result = cached_features(module.double, [raw], {"factor": 1}, cache)
    assert not result.hit
    result.path.write_bytes(result.path.read_bytes()[:10])  # damaged on disk later
    recomputed = cached_features(module.double, [raw], {"factor": 1}, cache)
    assert not recomputed.hit and torch.equal(recomputed.value["x"], torch.ones(3))


def test_missing_raw_input_is_named(transform_module, tmp_path) -> None:
    from digits_mlp.kit.data.preprocessing_cache import cached_features

    with pytest.raises(FileNotFoundError, match="raw input file\\(s\\) missing: .*nowhere.csv"):
        cached_features(transform_module[1].double, [tmp_path / "nowhere.csv"], {"factor": 1}, tmp_path)


# -- reproduce, records and cards, in a project of their own ------------------------------------
@pytest.fixture(scope="module")
def artifact_project(template_repo, locked_example_install, tmp_path_factory):
    project = tmp_path_factory.mktemp("reproduce") / "digits-mlp"
    render(template_repo, project)
    commit_all(project)
    # The packages of the example's lock, as a researcher has them (the template's own venv also holds
    # transformers, which torchmetrics then imports in every command: 2 s more each).
    venv = make_project_venv(project, standalone=False, borrow_from=locked_example_install)

    def command(*args: str, check: bool = True):
        env = {**venv.env, "RUNS_DIR": str(project / "runs")}
        return run([str(venv.script(PACKAGE)), *args], cwd=project, env=env, check=check)

    return project, command


def rebuilt(output: str) -> set[str]:
    """Artifacts that doit ran (`.  name`), not those it found up to date (`-- name`)."""
    return set(re.findall(r"^\.  (\S+)$", output, flags=re.M))


def edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_reproduce_rebuilds_exactly_what_is_stale(artifact_project) -> None:
    project, command = artifact_project
    missing = command("reproduce", "--all", check=False)
    assert missing.returncode == 2
    assert "missing input file(s): data/raw/digits.csv.gz (needed by example-model)" in missing.stdout

    command("data", "fetch")
    assert rebuilt(command("reproduce", "--all").stdout) == ALL
    assert rebuilt(command("reproduce", "--all").stdout) == set()  # nothing changed: nothing rebuilt
    assert command("reproduce", "--list").stdout.count("up to date") == len(ALL)

    artifacts = project / "src" / PACKAGE / "artifacts.py"
    edit(artifacts, '"metrics": ["train/loss", "val/loss", "val/acc"]', '"metrics": ["val/loss", "val/acc"]')
    assert "learning-curves  figure      stale" in command("reproduce", "--list").stdout
    assert rebuilt(command("reproduce", "--all").stdout) == {"learning-curves"}  # a parameter changed

    edit(
        artifacts,
        '    shutil.copyfile(directory / "metrics.csv"',
        '    assert directory.is_dir()\n    shutil.copyfile(directory / "metrics.csv"',
    )
    assert rebuilt(command("reproduce", "--all").stdout) == {"final-metrics"}  # its build code changed

    # What does not change an artifact does not make it stale: comments in code or configs, another
    # experiment's config, the kit (a template update).
    model = project / "src" / PACKAGE / "model.py"
    model.write_text(model.read_text() + "\n# a comment\n")
    edit(artifacts, "    assert directory.is_dir()\n", "    assert directory.is_dir()  # a comment\n")
    for config in ("default.yaml", "experiments/wide.yaml"):
        path = project / "configs" / config
        path.write_text(path.read_text() + "# a comment\n")
    kit_module = project / "src" / PACKAGE / "kit" / "reporting" / "cards.py"
    kit_module.write_text(kit_module.read_text() + "\nprint_width = 100  # the kit changed\n")
    assert command("reproduce", "--list").stdout.count("up to date") == len(ALL)

    default = project / "configs" / "default.yaml"
    edit(default, "max_epochs: 30", "max_epochs: 31")  # the trained model's own config: stale
    assert "example-model    checkpoint  stale" in command("reproduce", "--list").stdout
    edit(default, "max_epochs: 31", "max_epochs: 30")
    assert command("reproduce", "--list").stdout.count("up to date") == len(ALL)

    model.write_text(model.read_text() + "\nSCALE = 1.0\n")  # a code change
    assert rebuilt(command("reproduce", "dataset-card").stdout) == {"dataset-card"}  # code is a dependency

    raw = project / "data" / "raw" / "digits.csv.gz"
    rows = gzip.decompress(raw.read_bytes()).decode().splitlines()
    raw.write_bytes(gzip.compress(("\n".join(rows[:-1]) + "\n").encode()))  # one example fewer
    assert "changed: data/raw/digits.csv.gz" in command("data", "verify", check=False).stdout
    refused = command("reproduce", "--all", check=False)  # fit does not train on unrecorded data
    assert refused.returncode != 0
    assert "the raw data differs from data/raw.sha256" in refused.stderr and "data record" in refused.stderr
    assert (project / "runs" / "example" / "checkpoints" / "final.ckpt").exists()  # the model in place stays
    command("data", "record")  # the change is intended: record it
    after_record = rebuilt(command("reproduce", "--all").stdout)
    assert "TaskFailed - taskid:example-model" in refused.stdout and "example-model" in after_record
    assert "example-model: fit exited with 2 (its message is above)" in refused.stdout
    assert rebuilt(refused.stdout) | after_record == ALL  # everything depends on the data (the card did not wait)
    assert len(list((project / "runs").glob("example.superseded-*"))) == 1  # the earlier model is kept

    # A builder that raises: one line naming the error and where in artifacts.py, not doit's traceback.
    raising = '    data.setup("fit")\n    raise ValueError("no source line for the card")\n'
    edit(artifacts, '    data.setup("fit")\n', raising)
    failed = command("reproduce", "dataset-card", check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stdout + failed.stderr, failed.stdout
    assert re.search(
        r"^dataset-card: ValueError in artifacts\.py line \d+, dataset_card: no source line for the card$",
        failed.stdout,
        flags=re.M,
    ), failed.stdout


def test_fit_refuses_raw_data_that_differs_from_the_record(example_project, example_command, tmp_path) -> None:
    """A truncated raw file (and any other change) is named; --allow_changed_data trains and says so in the record."""
    original, _ = example_project
    project = tmp_path / "copy"
    shutil.copytree(original, project, ignore=shutil.ignore_patterns(".venv", "runs", ".git", "raw"))
    env = {"RUNS_DIR": str(tmp_path / "runs")}
    run([*example_command, "data", "fetch"], cwd=project, env=env)
    raw = project / "data" / "raw" / "digits.csv.gz"
    recorded = raw.read_bytes()
    raw.write_bytes(recorded[:-500])  # truncated, as an interrupted download leaves it

    refused = run([*example_command, "fit", "--trainer.max_epochs=1"], cwd=project, env=env, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "error: the raw data differs from data/raw.sha256" in refused.stderr
    assert "changed: data/raw/digits.csv.gz" in refused.stderr
    assert not (tmp_path / "runs").exists()  # nothing that looks like a run was left

    rows = gzip.decompress(recorded).decode().splitlines()
    raw.write_bytes(gzip.compress(("\n".join(rows[:-1]) + "\n").encode()))  # one example fewer: still parses
    allowed = run(
        [*example_command, "fit", "--trainer.max_epochs=1", "--allow_changed_data=true", "--run_name", "on-changed"],
        cwd=project,
        env=env,
    )
    assert "Training on raw data that differs from data/raw.sha256" in allowed.stdout
    record = json.loads((tmp_path / "runs" / "on-changed" / "record.json").read_text())
    assert record["starts"][0]["raw_data_differs_from_record"][0].startswith("changed: data/raw/digits.csv.gz")


def test_run_record_and_cards_are_complete(artifact_project) -> None:
    project, _ = artifact_project
    record = json.loads((project / "runs" / "example" / "record.json").read_text())
    start = record["starts"][-1]
    for key in ("git_sha", "git_dirty", "python", "torch", "lightning", "cuda_available", "packages_sha256",
                "seed", "data_fingerprint", "slurm", "started"):  # fmt: skip
        assert key in start, key
    assert start["git_sha"] and start["git_dirty"] is True and start["seed"] == 42
    assert (project / "runs" / "example" / start["git_diff_file"]).read_text().startswith("diff --git")
    assert record["status"] == "finished" and record["final_metrics"]["val/acc"] > 0.9 and record["ended"]
    assert start["status"] == "finished" and start["ended"] == record["ended"]  # each start says how it ended
    # The manifest, the run's state, in the same words; each checkpoint's value is the one it carries itself.
    manifest = json.loads((project / "runs" / "example" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    best = [name for name in manifest["checkpoints"] if name.startswith("best")]
    assert best, manifest["checkpoints"]
    for name in best:
        carried = torch.load(project / "runs" / "example" / "checkpoints" / name, weights_only=False)["monitored_value"]
        assert manifest["checkpoints"][name]["value"] == pytest.approx(carried) and carried > 0.5
    assert "torch==" in (project / "runs" / "example" / "packages-1.txt").read_text()
    lock = project / "locks" / "cpu.txt"  # the lock's hash, so that the record names the environment meant
    assert start["lock_file_sha256"]["locks/cpu.txt"] == hashlib.sha256(lock.read_bytes()).hexdigest()

    dataset = (project / "artifacts" / "cards" / "dataset.md").read_text()
    assert "| train | 1258 |" in dataset and "UCI ML hand-written digits" in dataset
    assert len(re.findall(r"^- \d{4}-\d\d-\d\d: `", dataset, flags=re.M)) == 2  # the data changed once

    model = (project / "artifacts" / "cards" / "model-example.md").read_text()
    assert "digits_mlp.model.DigitsClassifier" in model and "hidden_sizes" in model and "Test evaluation" in model
    assert "**Training data since `example.superseded-" in model and "changed from `" in model
