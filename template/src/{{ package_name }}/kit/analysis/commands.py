"""Small subcommands that need no Lightning. Managed by the copier-lightning template."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runs.root import format_runs, list_runs, runs_root


def list_runs_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="runs", description="List runs and their checkpoints.")
    parser.add_argument("--json", action="store_true", help="print the manifests as JSON")
    args = parser.parse_args(argv)
    runs = list_runs(runs_root())
    print(json.dumps(runs, indent=2) if args.json else format_runs(runs))
    return 0


def check_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="check",
        description="Run the sanity checks (overfit one batch, initial loss, gradients, modes, graph leaks, "
        "optimizer state, the monitored metric) on the model and data of a config. Options after the ones below "
        "go to the config parser, e.g. `check --config configs/experiments/wide.yaml`.",
    )
    _, config_args = parser.parse_known_args(argv)

    from ..training.project_loading import load_project
    from .sanity_checks import run_all_checks

    project = load_project(config_args)
    model, data, monitor = project.model, project.datamodule, project.monitor
    results = run_all_checks(model, data, monitor)
    for result in results:
        print(result.line())
    failed = [r for r in results if r.passed is False]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or did not apply.")
    return 1 if failed else 0


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="evaluate",
        description="The full evaluation of a run's best checkpoint on a split: predictions once, saved, every "
        "metric derived from them. Other options go to the config parser (--config, --run_name, ...).",
    )
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--ckpt_path", default=None, help="evaluate this checkpoint instead of the run's best")
    args, config_args = parser.parse_known_args(argv)

    from ..runs.checkpoint_files import MissingTrainedRun, checkpoint_to_use
    from ..training.project_loading import load_project
    from .evaluation import NotAClassifier, evaluate_checkpoint

    project = load_project(config_args)
    model, data, run = project.model, project.datamodule, project.run
    try:
        checkpoint = checkpoint_to_use(run, args.ckpt_path, "evaluate")
    except MissingTrainedRun as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    data.setup("fit" if args.split == "val" else "test")
    loader = data.val_dataloader() if args.split == "val" else data.test_dataloader()
    directory = run.evaluation_dir(args.split)
    try:
        metrics = evaluate_checkpoint(type(model), Path(checkpoint), loader, directory)
    except NotAClassifier as not_classifier:
        print(f"error: {not_classifier}", file=sys.stderr)
        return 2
    print(f"Evaluated {checkpoint} on the {args.split} split ({metrics['examples']} examples):")
    print((directory / "metrics.md").read_text().rstrip())
    print(f"Predictions, tables and plot: {directory}")
    return 0
