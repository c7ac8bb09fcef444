"""`<package> reproduce NAME | --all | --list`: one command per artifact, rebuilding only what is stale.

Managed by the copier-lightning template. Artifacts are declared once, in `<package>/artifacts.py`
(yours). The engine is doit: each artifact is a doit task whose targets are its outputs and whose
dependencies are what decides its content:
- its declared input files (contents, not times);
- its parameters, and its own build function's code;
- for a trained checkpoint, the experiment its `fit` options describe: configs/default.yaml and
  the `--config` files it names, parsed (kit/runs/identity.py), so a comment, or an edit to
  another experiment's config, does not make it stale;
- your code: every module of the package outside kit/ (artifacts.py aside: editing one
  declaration rebuilds that artifact only), by its syntax tree, so comments, docstrings and
  formatting do not count.
The kit is not a dependency: a template update does not make your trained models stale (its
CHANGELOG says when results change; `reproduce NAME --force` rebuilds regardless).
doit keeps the dependency state in .reproduce/doit.json. After every build the page of every run
(`report`, kit/reporting/runs_report.py) is written again. A sharded checkpoint (a directory of shards,
`--trainer.strategy=fsdp2`) counts as one input: by its list of shard checksums (`CheckpointAwareChecker`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.project_package import PACKAGE
from ..base.your_code import one_line
from ..runs.identity import RunNameError

if TYPE_CHECKING:
    from doit.exceptions import TaskFailed

STATE_FILE = Path(".reproduce") / "doit.json"


@dataclass
class Artifact:
    """A figure, table or checkpoint, how to build it, and what it depends on.

    name: what you type after `reproduce`.
    kind: "figure", "table", "checkpoint" or anything that describes it.
    outputs: the files it makes.
    build: a function `build(artifact)` that makes the outputs; or
    fit_options: for a checkpoint, the options of `fit` that train it (a fresh run each rebuild; the
        previous run directory is kept, renamed with a time stamp).
    inputs: files it reads (data, a run's metrics file, ...), besides the package code and configs.
    after: names of artifacts it needs built first.
    params: values that shape it; a change rebuilds it.
    """

    name: str
    kind: str
    outputs: list[str]
    build: Callable[[Artifact], None] | None = None
    fit_options: list[str] | None = None
    inputs: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def command(self) -> str:
        return f"reproduce {self.name}"


def your_code(package_dir: Path) -> dict[str, str]:
    """A fingerprint of each of your modules: the package outside kit/, artifacts.py aside."""
    modules = sorted(
        path
        for path in package_dir.rglob("*.py")
        if "__pycache__" not in path.parts
        and path.name != "artifacts.py"
        and "kit" not in path.relative_to(package_dir).parts
    )
    return {str(path.relative_to(package_dir)): code_fingerprint(path.read_text()) for path in modules}


def code_fingerprint(source: str) -> str:
    """A hash of the code's syntax tree without docstrings: comments and formatting do not change it."""
    import ast
    import hashlib

    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return hashlib.sha256(source.encode()).hexdigest()  # broken code: its text is all there is
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def _is_docstring(statement) -> bool:
    import ast

    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _train(artifact: Artifact) -> None:
    """`fit` with the artifact's options, as its own command: with several processes (DDP, sharded)
    Lightning starts the others by re-running the command that started it, which must be this `fit`,
    not `reproduce` (each would run the whole plan, writing every artifact twice)."""
    checkpoint = Path(artifact.outputs[0])
    run_dir = checkpoint.parent.parent
    superseded = run_dir.with_name(f"{run_dir.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}")
    if checkpoint.exists():  # stale: keep the old model version, train afresh
        run_dir.rename(superseded)
    code = subprocess.run([sys.executable, "-m", PACKAGE, "fit", *(artifact.fit_options or [])]).returncode
    if code != 0:
        if superseded.exists() and not run_dir.exists():  # refused before training: the old version stays current
            superseded.rename(run_dir)
        raise TrainingFailed(f"fit exited with {code} (its message is above)")


class TrainingFailed(RuntimeError):
    """The artifact's `fit` failed; it has said why itself."""


def _action(artifact: Artifact) -> bool | TaskFailed:
    """Build one artifact; a failure is doit's TaskFailed with one line (cause first, where in your code),
    not doit's traceback of its own action runner around yours."""
    from doit.exceptions import TaskFailed

    for output in artifact.outputs:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
    try:
        (artifact.build or _train)(artifact)
    except TrainingFailed as failed:
        return TaskFailed(f"{artifact.name}: {failed}")
    except Exception as error:  # noqa: BLE001 - the researcher's builder: its failure is this artifact's result
        return TaskFailed(f"{artifact.name}: {one_line(error)}")
    missing = [output for output in artifact.outputs if not Path(output).exists()]
    if missing:
        return TaskFailed(f"{artifact.name} did not write {', '.join(missing)}; its build function must")
    return True


def doit_tasks(artifacts: list[Artifact], package_dir: Path) -> dict[str, Callable]:
    from doit.tools import config_changed

    code = your_code(package_dir)
    # Built here, not while doit iterates: a config that cannot be read is reported before doit starts.
    tasks = [
        {
            "basename": artifact.name,
            "doc": artifact.description or artifact.kind,
            "actions": [(_action, [artifact])],
            "file_dep": artifact.inputs,
            "targets": artifact.outputs,
            "task_dep": artifact.after,
            "uptodate": [config_changed({**_declaration(artifact), "your code": code})],
            "verbosity": 2,
        }
        for artifact in artifacts
    ]

    def task_artifacts():
        yield from tasks

    doit_config = {"dep_file": str(STATE_FILE), "backend": "json", "check_file_uptodate": checkpoint_aware_checker()}
    return {"task_artifacts": task_artifacts, "DOIT_CONFIG": doit_config}


def checkpoint_aware_checker():
    """doit's content checker, which reads files only, taught that a sharded checkpoint is one input."""
    import os

    from doit.dependency import MD5Checker

    from ..base.file_hashes import file_sha256
    from ..runs.checksums import SHARD_CHECKSUMS_FILE

    def listing_hash(directory: str) -> str | None:
        listing = Path(directory, SHARD_CHECKSUMS_FILE)  # every shard's checksum, written at its commit
        return file_sha256(listing) if listing.is_file() else None

    class CheckpointAwareChecker(MD5Checker):
        def check_modified(self, file_path, file_stat, state):
            if os.path.isdir(file_path):
                current = listing_hash(file_path)
                return current is None or state[2] != current
            return super().check_modified(file_path, file_stat, state)

        def get_state(self, dep, current_state):
            if os.path.isdir(dep):
                return None, None, listing_hash(dep)
            return super().get_state(dep, current_state)

    return CheckpointAwareChecker


def _declaration(artifact: Artifact) -> dict[str, Any]:
    """What, besides files, decides an artifact's content: a change to any of it rebuilds it."""
    import inspect

    from ..runs.identity import experiment

    build = code_fingerprint(inspect.getsource(artifact.build)) if artifact.build else None
    trained = experiment(["fit", *artifact.fit_options]) if artifact.fit_options is not None else None
    return {
        "params": artifact.params,
        "fit": artifact.fit_options,
        "experiment": trained,
        "build": build,
        "outputs": artifact.outputs,
    }


def missing_inputs(artifacts: list[Artifact]) -> list[str]:
    produced = {output for artifact in artifacts for output in artifact.outputs}
    return [
        f"{path} (needed by {artifact.name})"
        for artifact in artifacts
        for path in artifact.inputs
        if path not in produced and not Path(path).exists()
    ]


def status(artifacts: list[Artifact], package_dir: Path) -> dict[str, str]:
    """'up to date', 'stale' or 'missing' per artifact, from doit's own dependency check."""
    import contextlib
    import io

    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        DoitMain(ModuleTaskLoader(doit_tasks(artifacts, package_dir))).run(["list", "--all", "--status", "-q"])
    stale = {line.split()[1] for line in listing.getvalue().splitlines() if line.startswith("R ")}
    result = {}
    for artifact in artifacts:
        if not all(Path(output).exists() for output in artifact.outputs):
            result[artifact.name] = "missing"
        else:
            result[artifact.name] = "stale" if artifact.name in stale else "up to date"
    return result


def reproduce_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reproduce", description=__doc__)
    parser.add_argument("names", nargs="*", help="artifacts to rebuild (if stale)")
    parser.add_argument("--all", action="store_true", help="every artifact")
    parser.add_argument("--list", action="store_true", help="every artifact, its command and whether it is current")
    parser.add_argument("--force", action="store_true", help="rebuild the named artifacts even if they are current")
    args = parser.parse_args(argv)
    artifacts: list[Artifact] = __import__(f"{PACKAGE}.artifacts", fromlist=["ARTIFACTS"]).ARTIFACTS
    package_dir = Path(sys.modules[PACKAGE].__file__).parent
    known = {artifact.name for artifact in artifacts}
    if args.list:
        try:
            states = status(artifacts, package_dir)
        except RunNameError as bad:
            print(f"error: {bad}")
            return 2
        width = max(len(name) for name in known)
        for artifact in artifacts:
            state = states[artifact.name]
            print(f"{artifact.name:<{width}}  {artifact.kind:<10}  {state:<10}  {PACKAGE} {artifact.command}")
        return 0
    names = sorted(known) if args.all else args.names
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        problem = f"unknown artifact(s): {', '.join(unknown)}" if unknown else "name an artifact or --all"
        print(f"error: {problem}; artifacts: {', '.join(sorted(known))}")
        return 2
    missing = missing_inputs(artifacts)
    if missing:
        print(f"error: missing input file(s): {'; '.join(missing)}")
        return 2
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    STATE_FILE.parent.mkdir(exist_ok=True)
    try:
        loader = ModuleTaskLoader(doit_tasks(artifacts, package_dir))
    except RunNameError as bad:
        print(f"error: {bad}")
        return 2
    code = DoitMain(loader).run(["run", *(["--always-execute"] if args.force else []), *names])
    _write_runs_report()
    return code


def _write_runs_report() -> None:
    """The page of every run (`report`), written again after every build, whether it succeeded or not."""
    from ..runs.root import runs_root
    from .runs_report import REPORT_NAME, build_report

    root = runs_root()
    if root.is_dir():
        shown = build_report(root, root / REPORT_NAME)
        print(f"Report of {shown} run(s): {root / REPORT_NAME}")
