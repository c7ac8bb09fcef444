"""The `runs` subcommand: the runs folder listed. Managed by the copier-lightning template."""

from __future__ import annotations

import argparse
import json

from .root import format_runs, list_runs, runs_root


def list_runs_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="runs", description="List runs and their checkpoints.")
    parser.add_argument("--json", action="store_true", help="print the manifests as JSON")
    args = parser.parse_args(argv)
    runs = list_runs(runs_root())
    print(json.dumps(runs, indent=2) if args.json else format_runs(runs))
    return 0
