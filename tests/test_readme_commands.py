"""Every command in the generated README's code blocks runs, in order, in a fresh example project.

Commands that would change the machine are dry-run instead: `python -m venv` checks that the
interpreter exists, `pip install` runs with --dry-run (but the install from the lock, which
downloads every locked package to check its hash: the example_project fixture's venv is made by
that very command, template_dev.make_project_venv; here the lock file must exist), `copier update` runs
with --pretend, `serve` runs until it answers at the address the README gives (its page and /ready)
and is then stopped with SIGTERM (a clean stop exits 0 and says so); activating
the virtualenv is done by putting its bin/ first on PATH. A line that is one plain command of the
project's venv (`digits_mlp fit`, `python -m pytest`) starts from the tests' command server, as in
every other test (preloaded_commands.py: a process forked from one that has imported Lightning, with
the line's argv, environment and working directory: this file took 444 s of CPU with every line
fresh, 305 s so, docs/benchmarks.md); a console script started fresh is what scripts/try-example.sh
and the Slurm jobs run. The project's venv has exactly the
packages of a venv installed from its lock (locks/cpu.txt, as the README says: the example_project
fixture), so the project's own tests (`pytest`, in the Test section) pass in the locked environment.
Everything else runs as written. The one `sh` block, removing the example, is run by
tests/test_task_kinds.py, in a copy that then trains another task.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from servers import wait_until_ready

import preloaded_commands
from template_dev import EXAMPLE_ANSWERS, LOCK_INSTALL, ProjectVenv, commit_all, make_project_venv, render, run


def readme_commands(readme: str) -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


# Lines Lightning prints that say nothing about the run (kit/training/quiet_output.py leaves them out).
LIGHTNING_CHATTER = (
    "Seed set to",
    "GPU available:",
    "TPU available:",
    "💡 Tip",
    "is deprecated",
    "Be aware that",
    "srun` command",
)

DEV_TOOLS = {"pytest": "pytest", "ruff": "ruff", "pre-commit": "pre_commit", "copier": "copier"}


def as_run(command: str) -> str | None:
    """The command to run for a README line (None: nothing to run)."""
    for tool, module in DEV_TOOLS.items():
        command = re.sub(rf"(^|&& ){re.escape(tool)}\b", rf"\1python -m {module}", command)
    words = shlex.split(command)
    if words[:1] == ["."] and words[1].endswith("activate"):
        return None  # the venv's bin/ is first on PATH already
    if len(words) >= 3 and words[1:3] == ["-m", "venv"]:
        return f"{words[0]} --version"
    if words[:2] == ["pip", "install"] and "--require-hashes" in words:
        return f"test -s {words[-1]}"
    if words[:2] == ["pip", "install"]:
        return "pip install --dry-run " + shlex.join(words[2:])
    if words[:4] == ["python", "-m", "copier", "update"]:
        return command + " --pretend"
    return command


SHELL_SYNTAX = re.compile(r"[|&;<>()$`*?~]")  # a line with any of these runs under bash


def as_argv(command: str, venv: ProjectVenv) -> list[str] | None:
    """The argv of a line that is one plain command of the project's venv (its console script, or its
    `python`), with the program's path; None for anything else (bash runs it, from PATH)."""
    if SHELL_SYNTAX.search(command):
        return None
    program, *arguments = shlex.split(command)
    if program not in (EXAMPLE_ANSWERS["package_name"], "python") or not (venv.path / "bin" / program).is_file():
        return None
    return [str(venv.path / "bin" / program), *arguments]


def serve_until_it_answers(argv: list[str], url: str, project: Path, env: dict) -> subprocess.CompletedProcess:
    """`serve` as the README runs it, until `url` says ready and shows its page; then SIGTERM, as Ctrl-C would
    (a server that never becomes ready fails the test with its output after two minutes)."""
    server = preloaded_commands.start(
        argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_ready(server, url.rstrip("/"), seconds=120)
        with urllib.request.urlopen(url, timeout=5) as page:
            assert page.status == 200 and "<html" in page.read().decode().lower()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
    stdout, stderr = server.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, server.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def readme_project(template_repo, example_project, tmp_path_factory):
    project = tmp_path_factory.mktemp("readme") / "digits-mlp"
    render(template_repo, project)
    commit_all(project, "Start from copier-lightning")
    # The packages of example_project's venv, which was installed from locks/cpu.txt as the README says.
    return project, make_project_venv(project, standalone=False, borrow_from=example_project[1], with_pip=True)


def test_readme_has_the_future_self_sections(readme_project) -> None:
    readme = (readme_project[0] / "README.md").read_text()
    assert shlex.join(LOCK_INSTALL) in readme  # the command the example_project fixture runs for real
    for section in (
        "Quick start",
        "Your first day",
        "Your own model and data",
        "Data",
        "Train and evaluate",
        "Reproduce",
        "Sweeps and seeds",
        "Pitfalls",
        "Test",
        "Changelog",
        "Update from the template",
    ):
        assert f"\n## {section}\n" in readme
    assert "Python 3.11" in readme and "data/raw.sha256" in readme and "seed_everything" in readme


def test_every_readme_command_runs(readme_project) -> None:
    project, venv = readme_project
    readme = (project / "README.md").read_text()
    commands = readme_commands(readme)
    package = EXAMPLE_ANSWERS["package_name"]
    assert len([c for c in commands if c.startswith(package)]) >= 20
    env = {**venv.env, "VIRTUAL_ENV": str(venv.path), "WANDB_MODE": "disabled", "RUNS_DIR": str(project / "runs")}
    served_at = re.search(r"serve +# the model at (http://127\.0\.0\.1:\d+/)", readme)[1]
    ran = []
    for command in commands:
        if command.startswith("copier update"):  # "commit first", as the README says; the hooks run too
            run(["git", "add", "-A"], cwd=project)
            run(["git", "commit", "-q", "-m", "before updating"], cwd=project, env=env)
        to_run = as_run(command)
        if to_run is None or to_run in ran:
            continue  # run already, and nothing since changes its outcome (`copier update` is a --pretend here)
        argv = as_argv(to_run, venv)
        if to_run.startswith(f"{package} serve"):  # a server runs until stopped: at the README's address
            done = serve_until_it_answers(argv, served_at, project, {**os.environ, **env})
            assert "Stopped on SIGTERM after answering" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
        else:
            done = run(argv or ["bash", "-c", to_run], cwd=project, env=env, check=False, timeout=600)
        assert done.returncode == 0, f"README command failed: {to_run}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if to_run.startswith(package):  # the project's own commands leave Lightning's chatter out
            for chatter in LIGHTNING_CHATTER:
                assert chatter not in done.stdout + done.stderr, f"{to_run} printed {chatter!r}:\n{done.stderr[-3000:]}"
        ran.append(to_run)
    assert any(c.startswith(f"{package} reproduce --all") for c in ran)
    for produced in (
        "artifacts/figures/learning_curves.png",
        "artifacts/tables/final_metrics.md",
        "artifacts/cards/dataset.md",
        "artifacts/cards/model-example.md",
        "runs/sweeps/learning-rate-results.md",
    ):
        assert (Path(project) / produced).stat().st_size > 0, produced
