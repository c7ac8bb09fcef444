"""One writer per run, the code a run was started with, plain run names, workers that die with their parent.

Real processes throughout: two `fit` commands on one run, leases planted as a dead process or
another host would leave them, a project copy whose model.py is edited between starts, and a
DataLoader whose parent is SIGKILLed while its workers start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import copy_of_example_project
from training_runs import SHORT_RUN, resume_test_config, train

import preloaded_commands
from template_dev import EXAMPLE_ANSWERS, git, run

PACKAGE = EXAMPLE_ANSWERS["package_name"]
LONG_RUN = ["--trainer.max_epochs=300", "--early_stopping.patience=null"]


def lease_of(project: Path, run_name: str) -> dict:
    return json.loads((project / "runs" / run_name / "lease.json").read_text())


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- one writer ---------------------------------------------------------------------------------------
def test_a_second_start_of_a_live_run_is_refused_and_leaves_the_first_untouched(
    example_project, example_command, tmp_path
) -> None:
    project, _ = example_project
    run_dir = project / "runs" / "two-writers"
    first = preloaded_commands.start(
        [*example_command, "fit", "--run_name", "two-writers", *LONG_RUN],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), 120, "the first start's checkpoint")
        # What an interrupted write of the live writer looks like: the second start must not remove it.
        in_progress = run_dir / "checkpoints" / ".last.ckpt.l1v3.partial"
        in_progress.write_bytes(b"the live writer is writing this")

        second = run([*example_command, "fit", "--run_name", "two-writers", *LONG_RUN], cwd=project, check=False)

        assert second.returncode == 2
        assert f"is being trained by another process (host {os.uname().nodename}, process {first.pid}" in second.stderr
        assert len([line for line in second.stderr.splitlines() if line.startswith("error:")]) == 1
        assert "Traceback" not in second.stderr
        assert in_progress.exists() and lease_of(project, "two-writers")["pid"] == first.pid
        listing = run([*example_command, "runs"], cwd=project).stdout  # who trains it, for a person
        assert f"trained now by host {os.uname().nodename}, process {first.pid}" in listing
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 3, err[-3000:]  # it checkpointed and stopped as asked, undisturbed
    assert "Traceback" not in err and "FileNotFoundError" not in err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["starts"] == 1 and manifest["status"] == "stopped"
    assert not (run_dir / "lease.json").exists()  # given back


def test_a_dead_writer_is_taken_over_with_a_line_saying_so(example_project, example_command, tmp_path) -> None:
    project, _ = example_project
    config = resume_test_config(
        tmp_path / "c.json", tmp_path / "r.jsonl", {"hook": "train_batch_end", "global_step": 14}, tmp_path / "k"
    )
    killed = train(example_command, project, config, "dead-writer", *SHORT_RUN)
    assert killed.returncode == -9
    dead_pid = lease_of(project, "dead-writer")["pid"]  # SIGKILL gave nothing back
    listing = run([*example_command, "runs"], cwd=project).stdout
    assert "dead-writer  [running]" in listing and "no live process trains it" in listing

    resumed = train(example_command, project, config, "dead-writer", *SHORT_RUN)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        f"Run 'dead-writer': took over from a writer that is gone (host {os.uname().nodename}, process {dead_pid}"
        in (resumed.stdout)
    )
    assert "resuming from" in resumed.stdout and "Run 'dead-writer' finished" in resumed.stdout


def test_a_writer_on_another_host_holds_the_run_until_its_heartbeat_is_old(example_project, example_command) -> None:
    project, _ = example_project
    run_dir = project / "runs" / "other-host"
    run_dir.mkdir(parents=True)
    lease = run_dir / "lease.json"
    holder = {"host": "node-17", "pid": 4242, "pid_started": "1", "job": "9001", "since": "2026-01-01", "token": "x"}
    lease.write_text(json.dumps(holder))
    one_epoch = ["--trainer.max_epochs=1", "--run_name", "other-host"]

    refused = run([*example_command, "fit", *one_epoch], cwd=project, check=False)
    assert refused.returncode == 2
    assert "is being trained by another process (host node-17, process 4242, Slurm job 9001" in refused.stderr
    assert not (run_dir / "checkpoints").exists()

    stale = time.time() - 11 * 60  # eleven minutes without a heartbeat: that host's writer is gone
    os.utime(lease, (stale, stale))
    taken = run([*example_command, "fit", *one_epoch], cwd=project)
    assert "took over from a writer that is gone (host node-17, process 4242, Slurm job 9001" in taken.stdout
    assert "Run 'other-host' finished" in taken.stdout


LEASE_RACE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from {package}.kit.runs.lease import RunHeldError, RunLease, RunTakenOver

    lease = RunLease(Path(sys.argv[1]))
    while time.time() < float(sys.argv[2]):  # all start at the same instant
        pass
    try:
        lease.acquire()
    except RunHeldError:
        print("refused")
        sys.exit(0)
    print("holder")
    time.sleep(2)  # hold it while the others try
    Path(sys.argv[1], "lease.json").write_text('{{"host": "x", "pid": 1, "pid_started": null, "job": null, '
                                               '"since": "now", "token": "someone-else"}}')
    try:
        lease.confirm()  # what every checkpoint write does first
    except RunTakenOver as lost:
        print("lost:", lost)
    """
)


def test_of_starts_at_the_same_instant_one_holds_the_run_and_a_taken_lease_stops_writing(
    example_project, tmp_path
) -> None:
    project, venv = example_project
    script = tmp_path / "race.py"
    script.write_text(LEASE_RACE.format(package=PACKAGE))
    start_at = time.time() + 3
    racers = [
        subprocess.Popen(
            [str(venv.python), str(script), str(tmp_path / "run"), str(start_at)],
            cwd=project,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [racer.communicate(timeout=60)[0] for racer in racers]
    assert sorted(output.splitlines()[0] for output in outputs) == ["holder", "refused", "refused", "refused"]
    holder = next(output for output in outputs if output.startswith("holder"))
    assert "lost: Run 'run': this process lost its lease to host x, process 1" in holder


# -- plain run names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden"])
def test_a_run_name_that_is_not_a_plain_name_is_refused(example_project, example_command, name) -> None:
    project, _ = example_project
    refused = run([*example_command, "fit", "--run_name", name, "--trainer.max_epochs=1"], cwd=project, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"run name {name!r} is not a plain name" in refused.stderr
    assert not (project / "escape").exists() and not (project / "runs" / name).exists()


def test_a_sweep_name_with_a_path_in_it_names_its_trials_safely(example_project, example_command, tmp_path) -> None:
    project, _ = example_project
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "name: ../../outside\noptions: [--trainer.max_epochs=1]\nparameters: {model.init_args.dropout: [0.1]}"
    )
    run([*example_command, "sweep", str(sweep)], cwd=project)
    trials = list((project / "runs").glob("sweep-*outside-000"))
    assert len(trials) == 1 and ".." not in trials[0].name, trials
    assert (trials[0] / "checkpoints" / "final.ckpt").exists()
    assert not list(project.parent.glob("*outside*")) and not list(project.parent.parent.glob("*outside*"))


# -- the code a run was started with ------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_project(example_project, tmp_path_factory):
    """A copy of the example project, with its own git history, whose code the tests may edit."""
    return copy_of_example_project(example_project, tmp_path_factory.mktemp("own") / "project")


def test_a_rerun_with_changed_code_is_refused_naming_the_files_unless_allowed(own_project, tmp_path) -> None:
    project, command = own_project
    config = resume_test_config(
        tmp_path / "c.json", tmp_path / "r.jsonl", {"hook": "train_batch_end", "global_step": 14}, tmp_path / "k"
    )
    assert train(command, project, config, "code-changed", *SHORT_RUN).returncode == -9
    model = project / "src" / PACKAGE / "model.py"
    original = model.read_text()
    model.write_text(original + "\nSCALE = 2.0  # an edit after the run started\n")
    (project / "src" / PACKAGE / "augment.py").write_text("FLIP = True\n")  # a new file is code too
    kit_file = project / "src" / PACKAGE / "kit" / "training" / "progress.py"
    kit_file.write_text(kit_file.read_text() + "\n# the template's code (copier update) does not count\n")
    try:
        refused = train(command, project, config, "code-changed", *SHORT_RUN)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "Run 'code-changed' was started with other code than the code here now" in refused.stderr
        assert f"changed: src/{PACKAGE}/model.py" in refused.stderr
        assert f"added: src/{PACKAGE}/augment.py" in refused.stderr and "progress.py" not in refused.stderr

        allowed = train(command, project, config, "code-changed", *SHORT_RUN, "--allow_changed_code=true")
        assert allowed.returncode == 0, allowed.stderr[-3000:]
        assert "continuing with changed code" in allowed.stdout and "resuming from" in allowed.stdout
        record = json.loads((project / "runs" / "code-changed" / "record.json").read_text())
        assert record["starts"][-1]["code_differs_from_earlier_starts"] == [
            f"changed: src/{PACKAGE}/model.py",
            f"added: src/{PACKAGE}/augment.py",
        ]
    finally:
        model.write_text(original)
        (project / "src" / PACKAGE / "augment.py").unlink()
        git(project, "checkout", "-q", "--", str(kit_file.relative_to(project)))


def test_submit_freezes_the_code_and_refuses_what_cannot_be_frozen(own_project, tmp_path) -> None:
    project, command = own_project
    runs = tmp_path / "runs"
    env = {"RUNS_DIR": str(runs)}
    submit = [*command, "submit", "--write-only", "--gpu", "full:1", "--run_name", "frozen"]
    done = run(submit, cwd=project, env=env)
    snapshot = runs / "frozen" / "code"
    assert f"Code frozen for the job: {snapshot}" in done.stdout
    record = json.loads((snapshot / "code-snapshot.json").read_text())
    assert record["git_sha"] == git(project, "rev-parse", "HEAD").strip() and record["git_dirty"] is False
    assert (snapshot / "src" / PACKAGE / "model.py").read_text() == (project / "src" / PACKAGE / "model.py").read_text()
    assert (snapshot / "data" / "raw").resolve() == (project / "data" / "raw").resolve()  # data: linked, not copied
    script = (runs / "frozen" / "slurm" / "full.sbatch").read_text()
    assert f"cd {snapshot}\n" in script and f"export PYTHONPATH={snapshot / 'src'}" in script
    assert "kept" in run(submit, cwd=project, env=env).stdout  # nothing changed: the same snapshot stays

    big = project / "weights.bin"
    big.write_bytes(b"\0" * (21 * 1024**2))  # a file git would commit, too large to be code
    try:
        refused = run(submit, cwd=project, env=env, check=False)
        assert refused.returncode == 2 and "weights.bin is 21 MB" in refused.stderr
    finally:
        big.unlink()
    plain_copy = tmp_path / "not-a-repository"
    run(["cp", "-r", str(project), str(plain_copy)], cwd=tmp_path)
    run(["rm", "-rf", str(plain_copy / ".git")], cwd=tmp_path)
    refused = run(submit, cwd=plain_copy, env=env, check=False)
    assert refused.returncode == 2 and "is not a git repository with a commit" in refused.stderr


# -- data-loading workers end with their parent ---------------------------------------------------------
ORPHANS = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from pathlib import Path
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from {package}.kit import ResumableDataLoader, end_with_parent

    def slow_start(worker_id):  # the worker is still starting when its parent is killed
        time.sleep(3)

    def workers():
        me = str(os.getpid())
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                    found.append(stat.parent.name)
            except (OSError, IndexError):
                pass
        return found

    def kill_me_once_they_exist():
        while len(workers()) < 2:
            time.sleep(0.02)
        Path(sys.argv[2]).write_text(" ".join(workers()))
        os.kill(os.getpid(), signal.SIGKILL)

    data = TensorDataset(torch.arange(100.0))
    loaders = {{
        "kit": lambda: ResumableDataLoader(data, batch_size=10, seed=0, num_workers=2, worker_init_fn=slow_start),
        "helper": lambda: DataLoader(data, batch_size=10, num_workers=2, worker_init_fn=end_with_parent(slow_start)),
        "plain": lambda: DataLoader(data, batch_size=10, num_workers=2, worker_init_fn=slow_start),
    }}
    loader = loaders[sys.argv[1]]()
    threading.Thread(target=kill_me_once_they_exist, daemon=True).start()
    next(iter(loader))
    """
)


def test_workers_of_a_parent_killed_while_they_start_do_not_live_on(example_project, tmp_path) -> None:
    """The kit's loaders and end_with_parent() leave no process; a plain DataLoader (the control) does."""
    project, venv = example_project
    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS.format(package=PACKAGE))
    pids = {}
    for kind in ("kit", "helper", "plain"):
        done = subprocess.run([str(venv.python), str(script), kind, str(tmp_path / kind)], cwd=project, timeout=60)
        assert done.returncode == -signal.SIGKILL
        pids[kind] = (tmp_path / kind).read_text().split()
    time.sleep(5)  # past the workers' 3 s start: an orphan would be waiting for work by now
    alive = {kind: [pid for pid in found if Path(f"/proc/{pid}").exists()] for kind, found in pids.items()}
    for pid in alive["plain"]:
        os.kill(int(pid), signal.SIGKILL)  # the control's orphans, which nothing else ends
    assert alive["kit"] == [] and alive["helper"] == []
    assert len(alive["plain"]) == 2, "the control should leave its two workers orphaned (else this test proves nothing)"
    assert sys.platform.startswith("linux")
