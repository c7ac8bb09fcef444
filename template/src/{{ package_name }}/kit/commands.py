"""Small subcommands that need no Lightning. Managed by the copier-lightning template."""

from __future__ import annotations

import argparse
import json

from .runs import format_runs, list_runs, runs_root


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
        "optimizer state) on the model and data of a config. Options after the ones below go to the config "
        "parser, e.g. `check --config configs/experiments/wide.yaml`.",
    )
    _, config_args = parser.parse_known_args(argv)

    from .project_cli import load_model_and_data
    from .sanity_checks import run_all_checks

    model, data = load_model_and_data(config_args)
    results = run_all_checks(model, data)
    for result in results:
        print(result.line())
    failed = [r for r in results if r.passed is False]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or did not apply.")
    return 1 if failed else 0
