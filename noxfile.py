"""Sessions for the template repository: `nox` runs lint and tests; `nox -s bench` the benchmarks.

Each session installs torch first and pinned (TORCH_SPEC, default: torch-pin.txt): a bare `torch`
requirement resolved first would pull a multi-GB CUDA build.
"""

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
TORCH_SPEC = os.environ.get("TORCH_SPEC", Path("torch-pin.txt").read_text().strip())


def install_requirements(session: nox.Session) -> None:
    session.install(TORCH_SPEC)
    session.install("-r", "requirements-test.txt")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def tests(session: nox.Session) -> None:
    install_requirements(session)
    session.run("pytest", "tests", "-n", "2", "--dist", "loadfile", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    install_requirements(session)
    session.run("python", "bench/run_all.py", *session.posargs)
