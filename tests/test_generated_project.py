"""The example project installs as its README says, passes its own checks and trains its example."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from task_shapes import SHAPES, SOURCE, make_it_the_projects_task, the_projects_tests_and_reproduce_pass

from template_dev import EXAMPLE_ANSWERS, TORCH_SPEC, commit_all, make_project_venv, render, run

PACKAGE = EXAMPLE_ANSWERS["package_name"]


def final_validation_accuracy(output: str) -> float:
    match = re.search(r"finished\. .*val/acc = ([0-9.]+)", output)
    assert match, f"no final accuracy in the output:\n{output[-3000:]}"
    return float(match.group(1))


def test_installs_without_re_resolving_torch(example_project) -> None:
    _, venv = example_project
    collected = re.findall(r"^Collecting (\S+)", venv.install_log, flags=re.MULTILINE)
    assert not [name for name in collected if name.lower().startswith("torch") and "torchmetrics" not in name.lower()]
    version = run([str(venv.python), "-c", "import torch; print(torch.__version__)"], cwd=example_project[0])
    assert version.stdout.strip().startswith(TORCH_SPEC.removeprefix("torch=="))


def test_help_lists_subcommands_without_importing_lightning(example_project) -> None:
    project, venv = example_project
    probe = (
        f"import sys; from {PACKAGE}.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'lightning', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    done = run([str(venv.python), "-c", probe], cwd=project)
    assert "HEAVY []" in done.stdout
    for subcommand in ("fit", "validate", "test", "predict", "runs", "supervise"):
        assert f"    {subcommand}" in done.stdout


def test_commands_freeze_what_they_import_and_collect_garbage_after(example_project, tmp_path) -> None:
    """kit/base/garbage_collection.py: Lightning's import-time objects are frozen (not walked by every
    collection and again at exit: about 1.9 s of CPU a command, bench/command_start.py), and the
    collector is back on for what the command creates (a training run's garbage is still collected)."""
    project, venv = example_project
    probe = (
        f"import gc, sys; from {PACKAGE}.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('FROZEN', gc.get_freeze_count(), 'ENABLED', gc.isenabled(), 'CODE', code)"
    )
    env = {"RUNS_DIR": str(tmp_path / "runs")}
    # fit imports Lightning with its module; evaluate imports it inside its function (only its exit is spared)
    for command, imported in (
        (["fit", "--trainer.max_epochs=1", "--run_name", "frozen"], 100_000),
        (["evaluate", "--run_name", "frozen"], 1_000),
    ):
        done = run([str(venv.python), "-c", probe, *command], cwd=project, env=env)
        frozen, enabled, code = re.search(r"FROZEN (\d+) ENABLED (\w+) CODE (\d+)", done.stdout).groups()
        assert int(frozen) > imported and enabled == "True" and code == "0", (command, done.stdout[-500:])
    # A second command in the same process (as the project's own tests run them) freezes nothing more:
    # garbage left by the first (here a reference cycle) is still collected.
    twice = (
        f"import gc, weakref; from {PACKAGE}.cli import main\n"
        "class Cycle: pass\n"
        "main(['fit', '--trainer.max_epochs=1', '--run_name', 'twice'])\n"
        "left = Cycle(); left.me = left; alive = weakref.ref(left); del left\n"
        "main(['runs'])\n"
        "gc.collect()\n"
        "print('LEFT COLLECTED', alive() is None)"
    )
    assert "LEFT COLLECTED True" in run([str(venv.python), "-c", twice], cwd=project, env=env).stdout


def test_is_ruff_clean_and_formatted_as_generated(example_project) -> None:
    project, venv = example_project
    ruff = str(venv.script("ruff"))
    run([ruff, "check", "."], cwd=project)
    run([ruff, "format", "--check", "."], cwd=project)


# Its own tests pass: the README's commands include `pytest` (test_readme_commands.py runs them all).


def test_example_trains_to_95_percent_validation_accuracy(example_project, example_command, tmp_path) -> None:
    project, _ = example_project
    env = {"RUNS_DIR": str(tmp_path / "runs")}  # its own runs directory: other tests train in this project too
    done = run([*example_command, "fit"], cwd=project, env=env)
    assert final_validation_accuracy(done.stdout) >= 0.95
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert (runs[0] / "checkpoints" / "final.ckpt").is_file()
    assert (runs[0] / "logs" / "metrics.csv").is_file()
    assert yaml.safe_load((runs[0] / "config.yaml").read_text())["seed_everything"] == 42
    listing = run([*example_command, "runs"], cwd=project, env=env).stdout
    assert runs[0].name in listing and "[finished]" in listing and "final.ckpt" in listing
    tested = run([*example_command, "test"], cwd=project, env=env)
    assert re.search(r"test/acc\s+0\.9[5-9]", tested.stdout), tested.stdout[-2000:]


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_other_loggers_write_into_the_run_directory(
    template_repo: Path, tmp_path: Path, logger: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # the tests' own quiet setting: the kit must set it
    project = tmp_path / logger
    package = f"digits_{logger}"
    render(template_repo, project, logger=logger, package_name=package)
    commit_all(project)
    venv = make_project_venv(project, standalone=False)
    done = run([str(venv.script(package)), "fit", "--trainer.max_epochs=2", "--run_name", "two-epochs"], cwd=project)
    assert "Run 'two-epochs' finished" in done.stdout
    run_dir = project / "runs" / "two-epochs"
    if logger == "tensorboard":
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    else:
        (offline,) = (run_dir / "wandb").glob("offline-run-*")
        # Quiet: wandb's banners (with colour codes, even into files) gone; one line says where the run is.
        assert f"W&B (offline): {offline}; `wandb sync {offline}` uploads it." in done.stdout
        assert "\x1b[" not in done.stdout + done.stderr and "wandb: Tracking run" not in done.stdout + done.stderr
        # Not even the warning about the `anonymous` setting that Lightning passes and wandb ignores.
        assert not [line for line in done.stderr.splitlines() if line.startswith("wandb:")], done.stderr
    # CSV beside it: reproduce's figures and the cards read it whatever logger was chosen.
    assert "val/acc" in (run_dir / "logs" / "metrics.csv").read_text()
    shape = {"tensorboard": "dense", "wandb": "multi-label"}[logger]
    a_task_of_another_shape_with_this_logger(project, package, venv.script(package), logger, shape, tmp_path)
    # ... and made the project's own task, the project's tests and `reproduce` pass with this logger too.
    logged = {"tensorboard": "runs/*/tensorboard/events.out.tfevents.*", "wandb": "runs/*/wandb/offline-run-*"}[logger]
    before = set(project.glob(logged))
    make_it_the_projects_task(project, package, [str(venv.script(package))], shape)
    the_projects_tests_and_reproduce_pass(project, [str(venv.script(package))], shape)
    assert set(project.glob(logged)) - before, f"reproduce's training wrote no {logger} files"


def a_task_of_another_shape_with_this_logger(
    project: Path, package: str, command: Path, logger: str, shape: str, tmp_path: Path
) -> None:
    """Another task shape (tests/task_shapes.py) with this logger: check, fit, Ctrl-C, re-run, test, evaluate."""
    model, data, _, metrics, _ = SHAPES[shape]
    (tmp_path / "task_shapes_module.py").write_text(SOURCE.replace("digits_mlp.", f"{package}."))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    classes = [f"--model=task_shapes_module.{model}", f"--data=task_shapes_module.{data}"]
    checked = run([str(command), "check", *classes], cwd=project, env=env, check=False)
    assert checked.returncode == 0 and "FAIL" not in checked.stdout, checked.stdout[-3000:] + checked.stderr[-2000:]
    ctrl_c = {"marker_file": str(tmp_path / "interrupted"), "epoch": 1, "batch_index": 2, "signal": "SIGINT"}
    interrupting = tmp_path / "ctrl-c.yaml"
    kill_at = {"class_path": f"{package}.kit.KillAt", "init_args": ctrl_c}
    interrupting.write_text(yaml.safe_dump({"trainer": {"callbacks": [kill_at]}}))
    fit = [str(command), "fit", *classes, "--trainer.max_epochs=3", "--run_name", shape, "--config", str(interrupting)]
    stopped = run(fit, cwd=project, env=env, check=False)
    assert stopped.returncode != 0 and f"Run '{shape}' stopped on SIGINT" in stopped.stdout, stopped.stdout[-2000:]
    resumed = run(fit, cwd=project, env=env)
    assert f"Run '{shape}': resuming from last.ckpt (epoch 2, step" in resumed.stdout and "finished" in resumed.stdout
    assert "Traceback" not in stopped.stderr + resumed.stderr
    if logger == "wandb":  # the same W&B run continues (its id is the run's name)
        assert len(list((project / "runs" / shape / "wandb").glob("offline-run-*"))) >= 1
        assert f"W&B (offline): {project / 'runs' / shape / 'wandb'}" in resumed.stdout
    else:
        assert len(list((project / "runs" / shape / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    tested = run([str(command), "test", *classes, "--run_name", shape], cwd=project, env=env)
    assert "test/loss" in tested.stdout
    evaluated = run([str(command), "evaluate", *classes, "--run_name", shape], cwd=project, env=env)
    assert f"| task_kind | {shape} |" in evaluated.stdout
    assert all(f"| {name} | " in evaluated.stdout for name in metrics), evaluated.stdout


def test_own_subcommands_from_commands_py_join_the_command(example_project, example_command) -> None:
    project, _ = example_project
    package = project / "src" / PACKAGE
    shipped = (package / "commands.py").read_text()
    try:
        (package / "greetings.py").write_text("def hello_main(argv):\n    print('hello', *argv)\n    return 0\n")
        own = 'SUBCOMMANDS = {"hello": ("say hello", ".greetings:hello_main")}\n'
        (package / "commands.py").write_text(shipped + own)
        assert "say hello" in run([*example_command, "--help"], cwd=project).stdout
        assert run([*example_command, "hello", "world"], cwd=project).stdout == "hello world\n"

        (package / "commands.py").write_text(shipped + 'SUBCOMMANDS = {"fit": ("mine", ".greetings:hello_main")}\n')
        clash = run([*example_command, "--help"], cwd=project, check=False)
        assert clash.returncode != 0 and "already has: fit" in clash.stderr
    finally:
        (package / "commands.py").write_text(shipped)
        (package / "greetings.py").unlink(missing_ok=True)


MISSING_DATA_MODULE = '''
from pathlib import Path

from digits_mlp.data import DigitsDataModule


class DataNotDownloaded(DigitsDataModule):
    """A researcher's data module whose raw file is not there and cannot be fetched."""

    def raw_files(self):
        return [Path("nowhere") / "table.csv"]

    def fetch_raw(self):
        raise FileNotFoundError("nowhere/table.csv is missing: copy it from the lab's share")
'''


def test_common_mistakes_end_in_one_clear_message(example_project, example_command, tmp_path) -> None:
    """Each mistake: exit code 2, a message that names the problem, no traceback, no usage dump, nothing left behind."""
    project, venv = example_project
    (tmp_path / "own" / "missing_data.py").parent.mkdir()
    (tmp_path / "own" / "missing_data.py").write_text(MISSING_DATA_MODULE)
    env = {"RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(tmp_path / "own")}
    mistakes = {
        "a missing checkpoint": (["test", "--ckpt_path", "nope.ckpt"], "--ckpt_path nope.ckpt: no such file"),
        "a value of the wrong type": (
            ["fit", "--model.init_args.dropout=lots"],
            "error: model.init_args.dropout: expected float, got 'lots' (every option:",
        ),
        "raw data that is not there": (
            ["fit", "--data.class_path=missing_data.DataNotDownloaded"],
            "the data is not there: nowhere/table.csv is missing: copy it from the lab's share",
        ),
        "raw data that is not there, checked": (
            ["check", "--data.class_path=missing_data.DataNotDownloaded"],
            "DataNotDownloaded refused its data (missing_data.py line 14, in fetch_raw): nowhere/table.csv is missing",
        ),
        "raw data that is not there, prepared": (
            ["data", "prepare", "--data.class_path=missing_data.DataNotDownloaded"],
            "DataNotDownloaded refused its data (missing_data.py line 14, in fetch_raw): nowhere/table.csv is missing",
        ),
        "a data module without raw files": (
            ["data", "record", "--data=lightning.pytorch.demos.boring_classes.BoringDataModule"],
            "error: `data record` calls the data module's raw_files(), which BoringDataModule does not define",
        ),
        "a mode against the monitored metric": (
            ["fit", "--checkpointing.monitor=val/loss", "--checkpointing.mode=max", "--run_name", "wrong-way"],
            "monitor is 'val/loss' with mode 'max', but a lower val/loss is better: the best checkpoints would be",
        ),
    }
    for mistake, (options, expected) in mistakes.items():
        done = run([*example_command, *options], cwd=project, env=env, check=False)
        assert done.returncode == 2, f"{mistake}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert expected in done.stderr, f"{mistake}:\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr and "usage:" not in done.stderr, f"{mistake}:\n{done.stderr[-2000:]}"
    # Nothing was started: no run that `runs` would list as running forever.
    assert "No runs yet" in run([*example_command, "runs"], cwd=project, env=env).stdout
    # A monitored metric that validation does not log (a regression's metric under the example classifier):
    # stopped at the sanity check, before any training, and the run is marked failed.
    options = ["fit", "--checkpointing.monitor=val/mse", "--checkpointing.mode=min", "--run_name", "regression"]
    done = run([*example_command, *options], cwd=project, env=env, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "monitor is 'val/mse', which validation does not log (it logs: val/acc, val/loss)" in done.stderr
    assert "epoch 1/" not in done.stdout  # no epoch trained
    assert "regression  [failed]" in run([*example_command, "runs"], cwd=project, env=env).stdout
    # A command typed below the project's root (src/): where to run it, in one line.
    done = run([*example_command, "fit"], cwd=project / "src", env=env, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"error: run digits_mlp from the project's root, {project} (configs/, data/ and runs/" in done.stderr
    # `submit` on a machine without SLURM (sbatch not on PATH).
    no_slurm = {**env, "PATH": str(Path(example_command[0]).parent)}
    done = run([*example_command, "submit", "--gpu", "mig:1g.10gb"], cwd=project, env=no_slurm, check=False)
    assert done.returncode == 2 and "`sbatch` is not installed here" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_fit_help_is_kept_by_the_hash_of_code_and_configs(example_project, tmp_path) -> None:
    """The second `fit --help` prints the same text without importing Lightning; a config edit makes it anew."""
    project, venv = example_project
    probe = (
        f"import sys; from {PACKAGE}.cli import main\n"
        "code = main(['fit', '--help'])\n"
        "print('LIGHTNING', 'lightning' in sys.modules, code)"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    first = run([str(venv.python), "-c", probe], cwd=project, env=env)
    second = run([str(venv.python), "-c", probe], cwd=project, env=env)
    assert first.stdout.endswith("LIGHTNING True 0\n") and second.stdout.endswith("LIGHTNING False 0\n")
    help_text = second.stdout.removesuffix("LIGHTNING False 0\n")
    assert first.stdout.removesuffix("LIGHTNING True 0\n") == help_text and "--trainer.max_epochs" in help_text
    assert len(list((tmp_path / "cache" / PACKAGE / "help").glob("*.txt"))) == 1

    other = project / "configs" / "experiments" / "help-probe.yaml"
    other.write_text("trainer:\n  max_epochs: 3\n")  # another config: the kept text no longer answers
    try:
        third = run([str(venv.python), "-c", probe], cwd=project, env=env)
    finally:
        other.unlink()
    assert third.stdout.endswith("LIGHTNING True 0\n")
