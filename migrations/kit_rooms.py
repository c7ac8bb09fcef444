"""Migration for 0.3.0: kit/ went from one flat folder into rooms, and gained a public API.

Run by `copier update` when it crosses 0.3.0 (copier.yml, `_migrations`), in the project's root:

* `--stage before`: for every kit module the project has at its old path, save the researcher's
  version if they edited it (move_path.py), so that the edit is merged into the module's new home;
* `--stage after`: merge those edits (a clean merge, or copier-style conflict markers that
  pre-commit refuses), then move the researcher's own files onto the new names: an import of a
  kit name listed in `kit/__init__.py`'s PUBLIC becomes `from <package>.kit import NAME`, any
  other kit reference gets the module's new path. Each rewritten file is named in the output, and
  the change shows in `git diff` like every other part of the update.

Idempotent: a second run finds no old paths and changes nothing.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import move_path
import yaml

# Old module (kit/<old>.py) -> its room and new name (kit/<room>/<name>.py), release 0.3.0.
KIT_ROOMS = {
    "runs": "runs.directory",
    "run_record": "runs.record",
    "checkpoint_files": "runs.checkpoint_files",
    "atomic_checkpoint_io": "runs.checkpoint_io",
    "checksums": "runs.checksums",
    "atomic_files": "runs.atomic_files",
    "project_cli": "training.lightning_cli",
    "rolling_checkpoint": "training.rolling_checkpoint",
    "exact_resume": "training.random_states",
    "resumable_loader": "data.resumable_loader",
    "distributed": "training.distributed",
    "progress": "training.progress",
    "logging_interval": "training.logging_interval",
    "no_profiler": "training.no_profiler",
    "appending_csv_logger": "training.csv_logger",
    "resume_testing": "training.resume_testing",
    "slurm": "cluster.slurm",
    "supervise": "cluster.supervise",
    "memory_profile": "cluster.memory_profile",
    "sanity_checks": "diagnostics.sanity_checks",
    "tuning": "diagnostics.tuning",
    "evaluation": "evaluation.evaluation",
    "comparisons": "experiments.comparisons",
    "commands": "diagnostics.commands",
    "cards": "reporting.cards",
    "readme": "reporting.readme",
    "reproduce": "reporting.reproduce",
    "data_commands": "data.commands",
    "preprocessing_cache": "data.preprocessing_cache",
}
# Names that left their old module's new home (the old module was split): old module -> name -> module.
NAMES_MOVED = {
    "runs": {
        "PLACEMENT_KEYS": "runs.identity",
        "run_git": "runs.code_state",
        "list_runs": "runs.root",
        "format_runs": "runs.root",
        "STORAGE_ERRNOS": "runs.storage_errors",
        "storage_error": "runs.storage_errors",
        "storage_error_message": "runs.storage_errors",
    },
    "project_cli": {
        "best_checkpoint": "runs.checkpoint_files",
        "MissingTrainedRun": "runs.checkpoint_files",
        "CheckpointPolicy": "training.fit_policies",
        "EarlyStoppingPolicy": "training.fit_policies",
        "automatic_precision": "training.fit_policies",
    },
    "comparisons": dict.fromkeys(("sweep_trials", "sweep_size", "sweep_main", "results_main"), "experiments.sweeps"),
    "commands": {"list_runs_main": "runs.commands", "evaluate_main": "evaluation.commands"},
    "data_commands": {
        name: "data.raw_data"
        for name in ("HASH_MEMO", "RawDataChangedError", "raw_data_differences", "refuse_changed_raw_data")
    },
}
# Names of 0.2.0 that no longer exist (not public: any release may change them), and what took their place.
# An import of one of them fails by its name after the update; the replacement is not a drop-in.
NAMES_RETIRED = {
    "runs.derive_run_name": "runs.identity.run_name",
    "run_record.LOCK_FILES": "runs.record.OTHER_LOCK_FILES (with locks/*.txt)",
    "project_cli.RunFailureRecorder": "training.run_bookkeeping.RunBookkeeping",
    "project_cli.load_model_data_and_run": "training.project_loading.load_project(...).run",
    "comparisons.T_975": "scipy.stats' confidence intervals (experiments.comparisons)",
    "comparisons.best_metric": "runs.directory.RunDirectory.best_value",
    "reproduce.code_and_config_files": "runs.code_state.code_files",
    "run_record.finish_record": "runs.record.end_start (both ledgers at once)",
    "checkpoint_files.KIND_PREFERENCE": "runs.checkpoint_files.PREFERENCE_AT_EQUAL_STEPS (keyed by file name)",
    "checkpoint_files.checkpoint_kind": "runs.checkpoint_files.CheckpointInfo.preference",
    "sanity_checks.number_of_classes": "diagnostics.sanity_checks.expected_initial_loss (per task kind)",
    "evaluation.predict_probabilities": "evaluation.evaluation.predict (per task kind, kit/base/task_kinds.py)",
}


def new_module(old: str, name: str | None = None) -> str:
    """Where `name` of the 0.2.0 module kit/<old>.py lives now (the module itself when name is None)."""
    return NAMES_MOVED.get(old, {}).get(name, KIT_ROOMS[old])


# `kit.runs` was a module and is now a room: these names after it are already the new layout.
NEW_RUNS_MODULES = {
    new.split(".")[1]
    for new in [*KIT_ROOMS.values(), *(home for names in NAMES_MOVED.values() for home in names.values())]
    if new.startswith("runs.")
}
_OLD = "|".join(sorted(KIT_ROOMS, key=len, reverse=True))
FROM_IMPORT = re.compile(rf"from ([\w.]*?)kit\.({_OLD}) import (\([^)]*\)|[^\n]*)")
# Any other mention (class_path strings, `import x.kit.old`); a `from ... import` is FROM_IMPORT's.
DOTTED = re.compile(rf"\bkit\.({_OLD})(?:\.([A-Za-z_]\w*))?(?![\w])")


def package_name() -> str:
    return yaml.safe_load(Path(move_path.ANSWERS_FILE).read_text())["package_name"]


def kit_path(package: str, dotted: str) -> str:
    return f"src/{package}/kit/{dotted.replace('.', '/')}.py"


def moved_pairs(package: str) -> list[tuple[str, str]]:
    return [(kit_path(package, old), kit_path(package, new)) for old, new in KIT_ROOMS.items()]


def public_names(package: str) -> set[str]:
    """The keys of PUBLIC in the (updated) kit/__init__.py."""
    tree = ast.parse(Path(f"src/{package}/kit/__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PUBLIC" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise SystemExit(f"kit_rooms: no PUBLIC table in src/{package}/kit/__init__.py")


def imported_names(names: str) -> list[str]:
    parts = names.strip().removeprefix("(").removesuffix(")").split(",")
    return [part.split("#")[0].strip().split(" as ")[0].strip() for part in parts if part.split("#")[0].strip()]


def rewrite(text: str, public: set[str]) -> str:
    """The text with old kit paths replaced: public names from the kit itself, the rest by new path."""

    def from_import(match: re.Match) -> str:
        prefix, old, names = match.groups()
        if old == "runs" and set(imported_names(names)) <= NEW_RUNS_MODULES:
            return match.group(0)  # `from kit.runs import checkpoint_io`: modules of the new runs room
        if all(name in public for name in imported_names(names)):
            return f"from {prefix}kit import {names}"
        homes = {new_module(old, name) for name in imported_names(names) if name not in public}
        if len(homes) == 1 and not any(name in public for name in imported_names(names)):
            return f"from {prefix}kit.{homes.pop()} import {names}"
        # The names went to several homes: one import line per home, at the old line's indentation.
        indent = " " * (match.start() - match.string.rfind("\n", 0, match.start()) - 1)
        by_home: dict[str, list[str]] = {}
        for name in imported_names(names):
            by_home.setdefault("" if name in public else f".{new_module(old, name)}", []).append(name)
        lines = [f"from {prefix}kit{home} import {', '.join(sorted(group))}" for home, group in sorted(by_home.items())]
        return f"\n{indent}".join(lines)

    def dotted(match: re.Match) -> str:
        old, attribute = match.groups()
        if match.string.startswith(" import", match.end()):
            return match.group(0)  # a `from ... import` line: FROM_IMPORT has dealt with it
        if attribute is None:
            return f"kit.{new_module(old)}"
        if old == "runs" and attribute in NEW_RUNS_MODULES:
            return match.group(0)  # kit.runs.directory: already the new layout
        if attribute in public:
            return f"kit.{attribute}"
        return f"kit.{new_module(old, attribute)}.{attribute}"

    return DOTTED.sub(dotted, FROM_IMPORT.sub(from_import, text))


def researchers_files(package: str) -> list[Path]:
    """Files outside the kit that may name kit modules: the package's other modules, tests, configs."""
    kit = Path(f"src/{package}/kit")
    candidates = [*Path(f"src/{package}").rglob("*.py"), *Path("tests").rglob("*.py"), *Path("configs").rglob("*.yaml")]
    return sorted(path for path in candidates if kit not in path.parents)


def move_onto_new_names(package: str) -> list[Path]:
    public = public_names(package)
    rewritten = []
    for path in researchers_files(package):
        text = path.read_text()
        new_text = rewrite(text, public)
        if new_text != text:
            path.write_text(new_text)
            rewritten.append(path)
    for path in rewritten:
        print(f"kit_rooms: {path} now imports the kit's new names (see `git diff {path}`)")
    return rewritten


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["before", "after"], required=True)
    parser.add_argument("--template", help="the new template's path (before stage)")
    args = parser.parse_args()
    package = package_name()
    pairs = moved_pairs(package)
    if args.stage == "before":
        if not args.template:
            parser.error("--template is required in the before stage")
        move_path.before(args.template, pairs)
        return 0
    for old, new in pairs:
        move_path.after(old, new)
    move_onto_new_names(package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
