"""The `check` subcommand. Managed by the copier-lightning template."""

from __future__ import annotations

import argparse


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
    data.prepare_data()  # as `fit` would: data that is not there is one error, not one per check
    data.setup("fit")
    results = run_all_checks(model, data, monitor)
    for result in results:
        print(result.line())
    failed = [r for r in results if r.passed is False]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or did not apply.")
    return 1 if failed else 0
