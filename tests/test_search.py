"""`sweep` with `strategy: optuna`: killed mid-search, it resumes in the same study; bad sweep files
and a changed search space are refused with the line or the difference named."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest

import preloaded_commands
from template_dev import run

SEARCH = """\
name: {name}
strategy: optuna
trials: 6
seed: 0
options: [--trainer.max_epochs=1]
parameters:
  model.init_args.learning_rate: {{low: 1.0e-4, high: 1.0e-1, log: true}}
  model.init_args.hidden_sizes: {{choices: [[32], [64, 32]]}}
"""


def finished_trials(runs: Path, name: str) -> list[dict]:
    record = runs / "sweeps" / f"{name}.json"
    return json.loads(record.read_text())["trials"] if record.exists() else []


def study_trials(runs: Path, name: str) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(runs / "sweeps" / name / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def study_states(runs: Path, name: str) -> list[tuple[int, str]]:
    return [(trial.number, trial.state.name) for trial in study_trials(runs, name)]


def test_a_killed_search_resumes_to_six_distinct_trials_in_one_study(example_project, example_command, tmp_path):
    project, _ = example_project
    runs = tmp_path / "runs"
    search = tmp_path / "search.yaml"
    search.write_text(SEARCH.format(name="killed"))
    command = [*example_command, "sweep", str(search)]
    env = {"RUNS_DIR": str(runs)}
    process = preloaded_commands.start(command, cwd=project, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(finished_trials(runs, "killed")) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # in the fourth trial (or between trials)
    process.wait()
    assert len(finished_trials(runs, "killed")) in (3, 4), "the kill came too late to test a resume"
    done = run(command, cwd=project, env=env)
    assert "6 trials done" in done.stdout
    # checkpointing.monitor: auto, chosen once for the study and given to every trial
    assert "The search ranks its trials by val/acc (higher is better) (checkpointing.monitor: auto)." in done.stdout
    states = study_states(runs, "killed")
    assert [state for _, state in states] == ["COMPLETE"] * 6, states  # no trial lost, none asked twice
    assert not any(trial.intermediate_values for trial in study_trials(runs, "killed"))  # no pruner: no reports
    trials = finished_trials(runs, "killed")
    assert sorted(t["run_name"] for t in trials) == [f"sweep-killed-{n:03d}" for n in range(6)]
    for trial in trials:  # each a real run, finished
        manifest = json.loads((runs / trial["run_name"] / "manifest.json").read_text())
        assert manifest["status"] == "finished" and manifest["monitor"] == {"metric": "val/acc", "mode": "max"}
    assert run([*example_command, "results", "killed"], cwd=project, env=env).stdout.count("sweep-killed-") == 6


PRUNED_SEARCH = """\
name: pruned
strategy: optuna
trials: 6
sampler: random
seed: 3
pruner: median
options: [--trainer.max_epochs=3]
parameters:
  model.init_args.learning_rate: {low: 1.0e-6, high: 1.0e-1, log: true}
"""


def final_checkpoint(runs: Path, number: int) -> dict:
    manifest = json.loads((runs / f"sweep-pruned-{number:03d}" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    return manifest["checkpoints"]["final.ckpt"]


def test_a_pruner_stops_a_trial_that_falls_behind(example_project, example_command, tmp_path):
    """`pruner: median`: a trial worse than the median of the earlier trials at the same epoch stops
    there (its run ends early, with a final checkpoint); the study marks it PRUNED."""
    project, _ = example_project
    runs = tmp_path / "runs"
    search = tmp_path / "pruned.yaml"
    search.write_text(PRUNED_SEARCH)
    env = {"RUNS_DIR": str(runs)}
    done = run([*example_command, "sweep", str(search)], cwd=project, env=env)
    assert "6 trials done" in done.stdout
    trials = study_trials(runs, "pruned")
    pruned = [trial for trial in trials if trial.state.name == "PRUNED"]
    assert pruned and len(trials) == 6 and {t.state.name for t in trials} == {"COMPLETE", "PRUNED"}, trials
    for trial in pruned:
        epoch = max(trial.intermediate_values)
        assert epoch >= 1  # no pruning in the warm-up epoch
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        earlier = [t.intermediate_values[epoch] for t in complete if t.number < trial.number]
        assert len(earlier) >= 3 and trial.intermediate_values[epoch] < statistics.median(earlier)
        final = final_checkpoint(runs, trial.number)
        assert final["step"] == final_checkpoint(runs, 0)["step"] * (epoch + 1) // 3  # ended after that epoch
        assert f"sweep pruned: trial {trial.number} pruned" in done.stdout
    status = run([*example_command, "sweep-status", str(search)], cwd=project, env=env).stdout
    assert status.count("stopped early (pruned)") == len(pruned)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("trials: 6\n", "line 3: `trials` must be a whole number of at least 1"),
        ("seed: 0\n", "line 4: unknown option 'sed'"),
        ("{low: 1.0e-4, high: 1.0e-1, log: true}", "line 7: model.init_args.learning_rate: the range needs numbers"),
        ("{choices: [[32], [64, 32]]}", "line 8: model.init_args.hidden_sizes: `choices` takes a non-empty list"),
        ("--trainer.max_epochs=1]", "a search ranks its trials by checkpointing.monitor, and the trials' config"),
        ("--trainer.max_epochs=1", "checkpointing: monitor is 'val/loss' with mode 'max', but a lower val/loss is"),
    ],
    ids=["trials", "unknown option", "empty range", "empty choices", "no monitored metric", "mode against metric"],
)
def test_a_bad_sweep_file_is_refused_naming_the_line(example_package, tmp_path, monkeypatch, change, message):
    from digits_mlp.kit.experiments.sweeps import sweep_main

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    broken = {
        "trials: 6\n": "trials: 0\n",
        "seed: 0\n": "sed: 0\n",
        "{low: 1.0e-4, high: 1.0e-1, log: true}": "{low: 0.1, high: 0.01}",
        "{choices: [[32], [64, 32]]}": "{choices: []}",
        "--trainer.max_epochs=1]": "--trainer.max_epochs=1, --checkpointing.monitor=null]",
        "--trainer.max_epochs=1": "--trainer.max_epochs=1, --checkpointing.monitor=val/loss, --checkpointing.mode=max",
    }[change]
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(SEARCH.format(name="bad").replace(change, broken))
    printed = _printed(sweep_main, [str(sweep)])
    assert printed[0] == 2 and message in printed[1], printed[1]
    assert not (tmp_path / "runs" / "sweeps" / "bad").exists()  # refused before a study was made


GRID = "options: [--trainer.max_epochs=1]\nparameters:\n  model.init_args.learning_rate: [0.001, 0.01]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no sweep file {file}"),
        (
            GRID.replace("  model", "\tmodel"),
            "{file} line 3, column 1: not valid YAML (found character '\\t' that cannot start any token)",
        ),
        ("- model.init_args.learning_rate\n", "{file}: a sweep file maps `strategy`, `options` and `parameters`"),
        ("parameters: 3\n", "{file}: line 1: a sweep's `parameters` maps each config option to a non-empty list"),
        (GRID.replace("[0.001, 0.01]", "[]"), "{file}: line 2: a sweep's `parameters` maps each config option"),
        ("strategy: bayes\n" + GRID, "{file}: line 1: unknown sweep strategy 'bayes': use grid, random, optuna"),
        ("strategy: random\ntrials: many\n" + GRID, "{file}: line 2: `trials` must be a whole number of at least 1"),
        (GRID.replace("[--trainer.max_epochs=1]", "--trainer.max_epochs=1"), "{file}: line 1: `options` is a list"),
        (GRID.replace("parameters", "paramters"), "{file}: line 2: unknown option 'paramters'; a sweep file has"),
    ],
    ids=["missing", "not YAML", "a list", "parameters 3", "no values", "strategy", "trials", "options", "misspelt"],
)
def test_a_sweep_file_that_declares_no_sweep_is_one_line_for_each_command(
    example_package, tmp_path, monkeypatch, capsys, text, message
):
    """`sweep`, `sweep-status` and `submit --sweep` read a sweep file the same way (kit/experiments/sweep_files.py):
    where it declares no sweep, one line on stderr, exit 2, nothing written; a traceback before."""
    from digits_mlp.cli import main

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    sweep = tmp_path / "sweep.yaml"
    if text is not None:
        sweep.write_text(text)
    for command in (["sweep"], ["sweep-status"], ["submit", "--write-only", "--sweep"]):
        assert main([*command, str(sweep)]) == 2, command
        printed = capsys.readouterr()
        assert printed.out == "", (command, printed.out)
        assert printed.err.startswith(f"error: {message.format(file=sweep)}"), (command, printed.err)
        assert printed.err.count("\n") == 1, (command, printed.err)
    assert not (tmp_path / "runs").exists()


def test_a_changed_search_space_is_refused_with_the_difference(example_package, tmp_path, monkeypatch):
    from digits_mlp.kit.experiments.sweeps import sweep_main

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    sweep = tmp_path / "search.yaml"
    sweep.write_text(SEARCH.format(name="space").replace("trials: 6", "trials: 1"))
    assert _printed(sweep_main, [str(sweep)])[0] == 0
    sweep.write_text(sweep.read_text().replace("high: 1.0e-1", "high: 0.5"))
    code, printed = _printed(sweep_main, [str(sweep)])
    assert code == 2 and "made from another search space" in printed
    changed = [line.strip() for line in printed.splitlines() if line[:1] in "-+" and "high:" in line]
    assert any(line.startswith("-") and line.endswith("high: 0.1") for line in changed), printed
    assert any(line.startswith("+") and line.endswith("high: 0.5") for line in changed), printed
    assert study_states(tmp_path / "runs", "space") == [(0, "COMPLETE")]  # the old study is untouched


def test_a_trial_left_without_its_worker_is_trained_not_lost(example_package, tmp_path, monkeypatch):
    """A search killed between asking the study for a trial and naming its worker (two journal entries)
    leaves that trial RUNNING and unowned: the next `sweep` trains it instead of ending without it."""
    from digits_mlp.kit.experiments.sweep_files import search_distributions
    from digits_mlp.kit.experiments.sweeps import sweep_main

    sweep, spec, text, study = _two_trial_study(example_package, tmp_path, monkeypatch, "unowned")
    study.ask(search_distributions(spec, text))  # ... and the search was killed here
    code, printed = _printed(sweep_main, [str(sweep)])
    assert code == 0 and "trial 0 continues" in printed and "2 trials done" in printed, printed
    assert study_states(tmp_path / "runs", "unowned") == [(0, "COMPLETE"), (1, "COMPLETE")]


def test_a_trial_killed_while_asked_gets_all_its_parameters(example_package, tmp_path, monkeypatch):
    """`study.ask` writes one journal entry per parameter: a search killed between them leaves a trial
    with only some (seen in CI: `results` then failed on the missing column). The next `sweep`
    samples the rest before the trial trains, so every trial has every parameter."""
    from digits_mlp.kit.experiments.sweep_files import search_distributions
    from digits_mlp.kit.experiments.sweeps import results_main, sweep_main

    sweep, spec, text, study = _two_trial_study(example_package, tmp_path, monkeypatch, "half-asked")
    rate = search_distributions(spec, text)["model.init_args.learning_rate"]
    study.ask().suggest_float("model.init_args.learning_rate", rate.low, rate.high, log=rate.log)  # killed here
    code, printed = _printed(sweep_main, [str(sweep)])
    assert code == 0 and "trial 0 continues" in printed and "2 trials done" in printed, printed
    trials = study_trials(tmp_path / "runs", "half-asked")
    assert [set(trial.params) for trial in trials] == [set(spec["parameters"])] * 2
    code, table = _printed(results_main, ["half-asked"])
    assert code == 0 and table.count("sweep-half-asked-") == 2, table


def _two_trial_study(example_package, tmp_path, monkeypatch, name: str):
    """A two-trial search file named `name` and its opened study, before any `sweep`: (file, spec, text, study)."""
    import yaml
    from digits_mlp.kit.experiments.optuna_search import _open_study

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    text = SEARCH.format(name=name).replace("trials: 6", "trials: 2")
    (sweep := tmp_path / "search.yaml").write_text(text)
    spec = yaml.safe_load(text)
    (directory := tmp_path / "runs" / "sweeps" / name).mkdir(parents=True)
    return sweep, spec, text, _open_study(spec, name, directory, "max")


def _printed(function, argv) -> tuple[int, str]:
    import contextlib
    import io

    out = io.StringIO()  # what it prints on stdout and stderr (a refusal), in order
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = function(argv)
    return code, out.getvalue()


def test_sweep_status_shows_planted_states(example_package, tmp_path, monkeypatch, capsys) -> None:
    from digits_mlp.kit.experiments.sweep_status import sweep_status_main
    from digits_mlp.kit.runs.directory import RunDirectory

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    sweep = tmp_path / "planted.yaml"
    sweep.write_text("parameters:\n  model.init_args.learning_rate: [0.001, 0.002, 0.003, 0.004, 0.005]\n")
    monitor = {"metric": "val/acc", "mode": "max"}
    for number, (status, values) in enumerate([("finished", [0.81, 0.86]), ("running", [0.7]), ("failed", [])]):
        run = RunDirectory(tmp_path / "runs" / f"sweep-planted-{number:03d}")
        run.start("config: planted\n", monitor)
        for step, value in enumerate(values, start=1):
            path = run.checkpoint_dir / f"best-{step}.ckpt"
            path.write_bytes(b"planted")
            run.record_checkpoint(path, {"global_step": 10 * step, "epoch": step, "monitored_value": value})
        run.set_status(status)
    damaged = RunDirectory(tmp_path / "runs" / "sweep-planted-004")
    damaged.start("config: planted\n", monitor)
    damaged.manifest_path.write_text(damaged.manifest_path.read_text()[:40])  # cut short: a full disk, a hand
    assert sweep_status_main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[1:6]}
    assert rows["0"][1:5] == ["finished", "20", "0.8600", "0.8600"]
    assert rows["1"][1:5] == ["running", "10", "0.7000", "0.7000"]
    assert rows["2"][1:5] == ["failed", "-", "-", "-"]
    assert rows["3"][1:5] == ["queued", "-", "-", "-"]
    assert rows["4"][1:5] == ["damaged", "-", "-", "-"]
    assert f"trial 4: {damaged.manifest_path} is damaged (not JSON at line" in printed
    assert "queued 1  running 1  failed 1  finished 1  damaged 1" in printed
    assert "trial 0: 0.8600" in printed.split("best so far")[1].splitlines()[1]
    assert (tmp_path / "runs" / "sweeps" / "planted-status.png").stat().st_size > 0


@pytest.mark.parametrize("squeue", ["fails", "hangs"])
def test_sweep_status_says_when_the_queue_cannot_be_read(example_package, tmp_path, monkeypatch, squeue) -> None:
    """squeue on a machine whose controller is down fails after seconds of retries (seen: 9 s, then
    "Unable to contact slurm controller"); a busy one may not answer. The table shows, without jobs,
    and one line says why. A stand-in squeue here: the real one's answer depends on whether another
    test process has the tests' Slurm up at that moment."""
    from digits_mlp.kit.experiments import sweep_status

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    fake = tmp_path / "bin" / "squeue"
    fake.parent.mkdir()
    body = {"fails": "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
            "hangs": "exec sleep 30"}[squeue]  # fmt: skip
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(sweep_status, "SQUEUE_SECONDS", 1)
    sweep = tmp_path / "two.yaml"
    sweep.write_text("parameters:\n  model.init_args.learning_rate: [0.001, 0.002]\n")
    code, printed = _printed(sweep_status.sweep_status_main, [str(sweep)])
    said = {
        "fails": "note: squeue failed (squeue: error: Unable to contact slurm controller (connect failure)): "
        "no jobs shown",
        "hangs": "note: squeue did not answer in 1 s: no jobs shown",
    }[squeue]
    assert code == 0 and said in printed.splitlines(), printed
    header = ["trial", "state", "step", "metric", "now", "best", "values"]  # no "job" column (and no run yet)
    assert header in [line.split() for line in printed.splitlines()], printed
