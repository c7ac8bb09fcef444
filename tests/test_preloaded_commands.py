"""The tests' command server (preloaded_commands.py) gives a command what a fresh process would.

The same probe runs as a fresh process and as a child of the example project's command server,
and reports what a command can see of itself; everything but the pids must be the same. Then the
ways a test ends a command: its own exit code, an unhandled exception, SIGKILL and SIGTERM sent by
the test to the pid it was given, and a wait with a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_of_example_project

import preloaded_commands
from template_dev import make_project_venv, render

PROBE = """
import sys
lightning_preloaded = "lightning.pytorch" in sys.modules  # before anything here imports: a forked command
import gc, importlib.util, json, os, subprocess, time
import __main__
report = {
    "lightning_preloaded": lightning_preloaded,
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "path": sys.path,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "package": importlib.util.find_spec("digits_mlp").origin,
    "main_spec": getattr(__main__.__spec__, "name", None),
    "group_is_own": os.getpgid(0) == os.getpid(),
    "session_apart": os.getsid(0) != int(os.environ["PROBE_TESTS_SESSION"]),
    "group": os.getpgid(0),
    "stdin": sys.stdin.read(),
    "variable": os.environ.get("PROBE_VARIABLE"),
    "gc_enabled": gc.isenabled(),
}
if os.environ.get("PROBE_SETTINGS_READ_AT_LOAD"):  # as the libraries that read them when loaded saw them
    import huggingface_hub.constants
    import torch
    report["torch_threads"] = torch.get_num_threads()  # libgomp read OMP_NUM_THREADS
    report["hub_offline"] = huggingface_hub.constants.HF_HUB_OFFLINE
print(json.dumps(report))
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "exit-code":
    sys.exit(3)
if how == "raise":
    raise RuntimeError("the probe fails")
if how == "wait":
    print(f"PID {os.getpid()}", flush=True)
    time.sleep(120)
if how == "start-another":  # a command of the same venv, as Lightning's launcher starts a DDP rank
    another = subprocess.Popen([sys.executable, "-m", "probe_module", "wait"], stdout=subprocess.PIPE, text=True)
    print(json.dumps({"pid": another.pid, "report": json.loads(another.stdout.readline())}), flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def probe(example_project, tmp_path_factory) -> tuple[list[str], dict]:
    """`python -m probe_module` in the example project's venv (a project venv: the server starts it)."""
    project, venv = example_project
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe_module.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(folder), "PROBE_VARIABLE": "seen", "PROBE_TESTS_SESSION": str(os.getsid(0))}
    command = [str(venv.python), "-m", "probe_module"]
    assert preloaded_commands.can_start(command, env=env)
    return command, {"cwd": project, "env": env}


def test_a_preloaded_command_sees_what_a_fresh_process_sees(probe) -> None:
    command, options = probe
    reports = {}
    for name, start in (("fresh", subprocess.Popen), ("preloaded", preloaded_commands.Popen)):
        process = start(
            [*command, "exit-code", "an argument"], **options, start_new_session=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, err = process.communicate("what the test wrote", timeout=120)
        assert process.returncode == 3 and err == "to stderr\n", (name, process.returncode, err)
        reports[name] = json.loads(out)
        assert reports[name].pop("lightning_preloaded") == (name == "preloaded")
        assert reports[name].pop("group") != os.getpgid(0)
    assert reports["preloaded"] == reports["fresh"]
    assert reports["fresh"]["main_spec"] == "probe_module" and reports["fresh"]["group_is_own"]
    assert reports["fresh"]["session_apart"]


def test_a_commands_own_command_is_preloaded_in_its_process_group(probe) -> None:
    """What Lightning's launcher and `reproduce` start: from the server, in the starting command's group,
    so that signalling the group (as a terminal, Slurm or a test does) reaches both, as it would fresh."""
    command, options = probe
    for name, start in (("fresh", subprocess.Popen), ("preloaded", preloaded_commands.Popen)):
        process = start([*command, "start-another"], **options, start_new_session=True,
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert json.loads(process.stdout.readline())["group_is_own"]
        another = json.loads(process.stdout.readline())
        assert another["report"]["lightning_preloaded"] == (name == "preloaded"), name
        assert another["report"]["group"] == process.pid, name  # in the group the first one leads
        assert another["report"]["argv"][1:] == ["wait"] and another["report"]["variable"] == "seen"
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _running(another["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(another["pid"]), f"{name}: the group's other command outlived the group's SIGKILL"
        process.stdout.close()


def test_a_venv_that_borrows_the_same_packages_shares_the_server_and_sees_itself(
    example_project, probe, tmp_path
) -> None:
    """A copy of the example project with a venv of its own that borrows the example's packages: its command
    is forked by the server that forks the example's, and sees its own venv as a fresh start of it does."""
    command, options = probe
    copy, _ = copy_of_example_project(example_project, tmp_path / "copy")
    copys = [str(copy / ".venv" / "bin" / "python"), *command[1:], "exit-code"]
    settings = preloaded_commands._settings_read_at_load(options["env"])
    example_server = preloaded_commands._server_for(Path(command[0]), settings)
    assert preloaded_commands._server_for(Path(copys[0]), settings) is example_server
    reports = {}
    for name, run in (("fresh", subprocess.run), ("preloaded", preloaded_commands.run)):
        done = run(copys, **{**options, "cwd": copy}, input="", start_new_session=True, capture_output=True, text=True)
        assert done.returncode == 3, done.stderr[-2000:]
        reports[name] = json.loads(done.stdout)
        reports[name].pop("group")
    assert reports["preloaded"].pop("lightning_preloaded") and not reports["fresh"].pop("lightning_preloaded")
    assert reports["preloaded"] == reports["fresh"]
    assert reports["fresh"]["prefix"] == str(copy / ".venv") and reports["fresh"]["package"].startswith(str(copy))


def _running(pid: int) -> bool:
    """Alive and not a zombie (its parent may not have reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_preloaded_command_ends_as_a_fresh_one_would(probe) -> None:
    command, options = probe
    fresh = subprocess.run([*command, "raise"], **options, capture_output=True, text=True)
    failed = preloaded_commands.run([*command, "raise"], **options, capture_output=True, text=True)
    assert failed.returncode == fresh.returncode == 1
    assert "RuntimeError: the probe fails" in failed.stderr and "Traceback" in failed.stderr
    for sent in (signal.SIGKILL, signal.SIGTERM):
        process = preloaded_commands.Popen([*command, "wait"], **options, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline()  # the report
        pid = int(process.stdout.readline().split()[1])
        assert pid == process.pid and process.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)
        started = time.monotonic()
        os.kill(process.pid, sent)
        assert process.wait(timeout=30) == -sent and time.monotonic() - started < 10
        process.stdout.close()


def test_only_a_project_venvs_commands_are_preloaded(example_project) -> None:
    _, venv = example_project
    assert preloaded_commands.can_start([str(venv.script("digits_mlp")), "fit"])
    assert not preloaded_commands.can_start([sys.executable, "-m", "pip", "list"])  # not a project's venv
    assert not preloaded_commands.can_start(["git", "status"])


def test_settings_that_libraries_read_when_loaded_are_the_commands_own(template_repo, tmp_path) -> None:
    """OMP_NUM_THREADS (read by libgomp when torch loads) and HF_HUB_OFFLINE (by huggingface_hub when
    Lightning loads transformers) as a fresh process sees them: the server was loaded with them."""
    project = tmp_path / "project"
    render(template_repo, project)
    venv = make_project_venv(project, standalone=False)  # the tests' own packages: transformers among them
    (tmp_path / "probe_module.py").write_text(PROBE)
    env = {
        **{name: value for name, value in os.environ.items() if name not in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE")},
        **{"PYTHONPATH": str(tmp_path), "PROBE_TESTS_SESSION": str(os.getsid(0)), "PROBE_SETTINGS_READ_AT_LOAD": "1"},
        **{"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    }
    command = [str(venv.python), "-m", "probe_module", "exit-code"]
    reports = {}
    for name, run in (("fresh", subprocess.run), ("preloaded", preloaded_commands.run)):
        done = run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 3, done.stderr[-2000:]
        reports[name] = json.loads(done.stdout)
    assert reports["preloaded"]["lightning_preloaded"] and not reports["fresh"]["lightning_preloaded"]
    seen = {name: (report["torch_threads"], report["hub_offline"]) for name, report in reports.items()}
    assert seen == {"fresh": (1, True), "preloaded": (1, True)}


def test_a_command_whose_server_has_ended_starts_its_own_commands_fresh(example_project, monkeypatch) -> None:
    """A DDP rank can outlive the command (and its session's server) that started it."""
    project, venv = example_project
    gone = ("/nonexistent/command-server-socket", os.getsid(0))
    monkeypatch.setattr(preloaded_commands, "_forked_by", gone)  # as inside a command of that server
    loaded_with = preloaded_commands._settings_read_at_load(os.environ, hugging_face=False)  # none in that venv
    monkeypatch.setattr(preloaded_commands, "_settings_when_loaded", loaded_with)
    monkeypatch.setattr(sys, "prefix", str(venv.path))  # ... of the example project's venv
    command = [str(venv.python), "-m", "digits_mlp", "--help"]
    assert preloaded_commands.can_start(command)
    process = preloaded_commands.Popen(command, cwd=project, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=120)
    assert not process._routed and process.returncode == 0 and "fit" in out
