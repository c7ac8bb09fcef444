"""`copier update` from the last real release (git tag 0.2.0 of this repository) to this working tree.

0.3.0 moved kit/ into rooms and gave it a public API. A project made at 0.2.0, with a researcher's
edits in their own files, their own module importing kit internals by the old paths, an old class
path in an experiment config, an edit inside a kit module and a finished run, must update with the
migration (migrations/kit_rooms.py), keep every edit, and pass its own tests afterwards.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import LAST_RELEASE, LAST_RELEASE_COMMIT
from copier import run_update

from template_dev import EXAMPLE_ANSWERS, TOP, commit_all, git, make_project_venv, render, run

PACKAGE = EXAMPLE_ANSWERS["package_name"]
OWN_MODULE = f'''"""My own helpers, written against the 0.2.0 kit."""

from {PACKAGE}.kit.resumable_loader import ResumableDataLoader
from {PACKAGE}.kit.runs import RunDirectory, runs_root
from {PACKAGE}.kit.exact_resume import capture_rng_states

__all__ = ["ResumableDataLoader", "RunDirectory", "capture_rng_states", "runs_root"]
'''
OLD_CLASS_PATH = f"{PACKAGE}.kit.progress.ProgressLines"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_a_project_from_the_last_release_updates_keeps_its_edits_and_passes_its_tests(
    template_with_history: tuple[Path, str], tmp_path: Path
) -> None:
    template, _ = template_with_history
    project = tmp_path / "project"
    render(template, project, vcs_ref=LAST_RELEASE)
    src = project / "src" / PACKAGE
    assert (src / "kit" / "progress.py").is_file(), "the project should start with the 0.2.0 (flat) kit"
    commit_all(project, f"Start from copier-lightning {LAST_RELEASE}")

    # A finished run made at 0.2.0 (its config records the old kit class paths).
    venv = make_project_venv(project, standalone=False)
    console = str(venv.script(PACKAGE))
    runs = {"RUNS_DIR": str(tmp_path / "runs")}
    fit = [console, "fit", "--run_name", "before-update", "--trainer.max_epochs=1", "--trainer.limit_train_batches=5"]
    run(fit, cwd=project, env=runs)
    assert OLD_CLASS_PATH in (tmp_path / "runs" / "before-update" / "config.yaml").read_text()

    # The researcher's edits: their files, their own module and config, and one kit module.
    edit(src / "model.py", "dropout: float = 0.1", "dropout: float = 0.25")
    edit(src / "data.py", '"""Stratified train', '"""My split. Stratified train')
    (src / "my_helpers.py").write_text(OWN_MODULE)
    wide = project / "configs" / "experiments" / "wide.yaml"
    wide.write_text(wide.read_text() + f"trainer:\n  callbacks:\n    - class_path: {OLD_CLASS_PATH}\n")
    edit(src / "kit" / "progress.py", "Managed by the copier-lightning template.", "Managed by the template; mine.")
    commit_all(project, "my edits")

    run_update(str(project), overwrite=True, defaults=True, unsafe=True, quiet=True)

    kit = src / "kit"
    assert not (kit / "progress.py").exists() and not (kit / "runs.py").exists()
    assert "Managed by the template; mine." in (kit / "training" / "progress.py").read_text()
    assert "dropout: float = 0.25" in (src / "model.py").read_text()
    assert '"""My split. Stratified train' in (src / "data.py").read_text()
    own = (src / "my_helpers.py").read_text()
    assert f"from {PACKAGE}.kit import ResumableDataLoader" in own
    assert f"from {PACKAGE}.kit import RunDirectory, runs_root" in own
    assert f"from {PACKAGE}.kit.training.random_states import capture_rng_states" in own
    assert f"class_path: {PACKAGE}.kit.ProgressLines" in wide.read_text()
    assert "<<<<<<<" not in "".join(path.read_text() for path in src.rglob("*.py"))
    # The monitored metric the project kept (val/acc) becomes "auto", which chooses val/acc for this model.
    default = (project / "configs" / "default.yaml").read_text()
    assert "  monitor: auto\n  mode: auto\n" in default and "<<<<<<<" not in default
    # New template files arrive with the update: the cluster container, the project's CI, the locks.
    assert (project / "container" / "apptainer.def").is_file() and (project / ".github/workflows/tests.yml").is_file()
    assert "torch==" in (project / "locks" / "cpu.txt").read_text() and (project / "locks" / "cuda.txt").is_file()
    assert "ManyFilesDataModule" in (project / "configs" / "experiments" / "many-files.yaml").read_text()
    # The kit's own tests left the project for the template repository; the project's tests stay.
    assert not (project / "tests" / "test_checkpoint_files.py").exists()
    assert (project / "tests" / "test_config.py").is_file()
    commit_all(project, "update to the working tree")
    assert git(project, "ls-files", f"src/{PACKAGE}/kit/runs/directory.py").strip(), "kit/runs/ must be in git"

    # The run made before the update is the same run afterwards (not "a different config").
    again = run(fit, cwd=project, env=runs, check=False)
    assert "is complete" in again.stdout + again.stderr, again.stdout[-2000:] + again.stderr[-2000:]

    done = run([str(venv.python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, check=False)
    assert re.search(r"\d+ passed", done.stdout) and done.returncode == 0, done.stdout[-4000:]


REWRITES = {  # a 0.2.0 mention of the kit -> what the migration makes of it
    "from pkg.kit.runs import RunDirectory, runs_root": "from pkg.kit import RunDirectory, runs_root",
    "from .kit.runs import format_runs": "from .kit.runs.root import format_runs",
    "from .kit.resumable_loader import (\n    ResumableDataLoader,\n)": "from .kit import (\n    ResumableDataLoader,\n)",  # noqa: E501
    "from .kit.exact_resume import capture_rng_states": "from .kit.training.random_states import capture_rng_states",
    "class_path: pkg.kit.progress.ProgressLines": "class_path: pkg.kit.ProgressLines",
    "pkg.kit.runs.format_runs(root)": "pkg.kit.runs.root.format_runs(root)",
    # names that left the module's new home (the old module was split)
    "from pkg.kit.project_cli import CheckpointPolicy": "from pkg.kit.training.fit_policies import CheckpointPolicy",
    "    from pkg.kit.project_cli import ProjectCLI, best_checkpoint, load_model_and_data": (
        "    from pkg.kit import load_model_and_data\n"
        "    from pkg.kit.runs.checkpoint_files import best_checkpoint\n"
        "    from pkg.kit.training.lightning_cli import ProjectCLI"
    ),
    "x = pkg.kit.data_commands.raw_data_differences()": "x = pkg.kit.data.raw_data.raw_data_differences()",
    # already the new layout: left alone
    "from pkg.kit.runs import checkpoint_io": "from pkg.kit.runs import checkpoint_io",
    "from pkg.kit.runs.directory import RunDirectory": "from pkg.kit.runs.directory import RunDirectory",
}


def _load_kit_rooms() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kit_rooms", TOP / "migrations" / "kit_rooms.py")
    kit_rooms = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(TOP / "migrations"))  # it imports move_path beside it, as copier runs it
    try:
        spec.loader.exec_module(kit_rooms)
    finally:
        sys.path.remove(str(TOP / "migrations"))
    return kit_rooms


@pytest.mark.parametrize("before", REWRITES)
def test_the_migration_rewrites_each_old_kit_path_once(before: str) -> None:
    kit_rooms = _load_kit_rooms()
    public = {"RunDirectory", "runs_root", "ResumableDataLoader", "ProgressLines", "load_model_and_data"}
    after = kit_rooms.rewrite(before, public)
    assert after == REWRITES[before]
    assert kit_rooms.rewrite(after, public) == after


def test_a_metric_the_researcher_named_stays_after_the_update(
    template_with_history: tuple[Path, str], tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """0.2.0's val/acc became "auto"; a project that named its own metric keeps it, without conflict markers."""
    template, _ = template_with_history
    project = tmp_path / "project"
    render(template, project, vcs_ref=LAST_RELEASE)
    default = project / "configs" / "default.yaml"
    edit(default, "  monitor: val/acc\n  mode: max\n", "  monitor: val/loss\n  mode: min\n")
    commit_all(project, "a regression: val/loss")
    run_update(str(project), overwrite=True, defaults=True, unsafe=True, quiet=True)
    text = default.read_text()
    assert "  monitor: val/loss\n  mode: min\n" in text and "<<<<<<<" not in text, text
    assert "keep_named_monitor: configs/default.yaml keeps your monitor: val/loss, mode: min" in capfd.readouterr().out


STOP_AT_STEP_15 = """\
trainer:
  callbacks:
    - class_path: {package}.kit.resume_testing.KillAt
      init_args: {{marker_file: {marker}, hook: train_batch_end, global_step: 15, signal: SIGTERM}}
"""


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_a_run_stopped_before_the_update_finishes_after_it(template_with_history, tmp_path, logger) -> None:
    """The update adds a CSV logger beside the chosen one (and more display settings): not a different run."""
    template, _ = template_with_history
    project = tmp_path / "project"
    render(template, project, vcs_ref=LAST_RELEASE, logger=logger)
    stop = project / "configs" / "experiments" / "stop-at-step-15.yaml"  # the migration rewrites its class path
    stop.write_text(STOP_AT_STEP_15.format(package=PACKAGE, marker=tmp_path / "stopped"))
    commit_all(project, f"Start from copier-lightning {LAST_RELEASE}")
    venv = make_project_venv(project, standalone=False)
    env = {"RUNS_DIR": str(tmp_path / "runs"), "WANDB_MODE": "offline"}
    fit = [str(venv.script(PACKAGE)), "fit", "--config", str(stop), "--run_name", "old-run", "--trainer.max_epochs=3"]
    stopped = run(fit, cwd=project, env=env, check=False)
    assert stopped.returncode == 3, stopped.stdout[-2000:] + stopped.stderr[-2000:]

    run_update(str(project), overwrite=True, defaults=True, unsafe=True, quiet=True)
    commit_all(project, "update to the working tree")
    assert "CSVLogger" in (project / "configs" / "default.yaml").read_text()

    finished = run(fit, cwd=project, env=env, check=False)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    assert "Run 'old-run': resuming from last.ckpt (epoch 2, step 15)" in finished.stdout
    assert "Run 'old-run' finished" in finished.stdout


def _top_level_names(source: str) -> set[str]:
    """Names a module defines or imports at its top level (what `from module import name` finds)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def test_every_name_of_the_last_release_kit_has_a_home_the_migration_knows() -> None:
    """Each public-looking name of 0.2.0's kit modules is where the migration sends its imports, or retired."""
    kit_rooms = _load_kit_rooms()
    kit = TOP / "template" / "src" / "{{ package_name }}" / "kit"
    public = _public_names(kit / "__init__.py")  # imported from the kit itself after the migration
    lost = []
    for old in kit_rooms.KIT_ROOMS:
        source = git(TOP, "show", f"{LAST_RELEASE_COMMIT}:template/src/{{{{ package_name }}}}/kit/{old}.py")
        defined = {name for name in _top_level_names(source) if not name.startswith("_")}
        defined -= {name for name in _top_level_names(source) if _imported_only(source, name)}
        for name in sorted(defined):
            if f"{old}.{name}" in kit_rooms.NAMES_RETIRED or name in public:
                continue
            home = kit / (kit_rooms.new_module(old, name).replace(".", "/") + ".py")
            if not home.is_file() or name not in _top_level_names(home.read_text()):
                lost.append(f"{old}.{name} -> {kit_rooms.new_module(old, name)}")
    assert lost == [], "names the migration sends to a module that lacks them (add to NAMES_MOVED or NAMES_RETIRED)"
    for retired in kit_rooms.NAMES_RETIRED:  # a retired name that still exists at its old home is a wrong entry
        old, name = retired.split(".")
        home = kit / (kit_rooms.KIT_ROOMS[old].replace(".", "/") + ".py")
        assert name not in _top_level_names(home.read_text()), retired


def _public_names(kit_init: Path) -> set[str]:
    for node in ast.parse(kit_init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PUBLIC" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"no PUBLIC table in {kit_init}")


def _imported_only(source: str, name: str) -> bool:
    """`name` comes into the module by an import (it was never the module's own)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return False
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return False
    return True
