"""Sweeps: every trial of a sweep file, and their results in one table. Managed by the copier-lightning template.

* `<package> sweep FILE` runs every trial of a sweep file (grid or random over config options), one
  after another; each trial is a normal run, so an interrupted sweep resumes where it stopped.
  `strategy: optuna` searches instead (kit/experiments/optuna_search.py), in a study that resumes too.
  `--trial N` runs one trial: a task of the SLURM job array `submit --sweep FILE` writes.
* `<package> results NAME` gathers a sweep's trials into one table (CSV and Markdown) and a plot.
Records go to runs/sweeps/ (RunsRoot.sweeps).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from ..runs.root import RunsRoot
from .sweep_files import SweepFileError, read_sweep_file, sweep_trials


def run_fit(args: list[str]) -> int:
    """`fit` with these options, in this process (Lightning is imported only now); its exit code."""
    from ..training.lightning_cli import run_lightning_cli

    return run_lightning_cli(["fit", *args])


def run_fit_quietly(args: list[str]) -> int:
    """run_fit without its printed lines (a sweep or seed loop prints one line per run instead)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return run_fit(args)


def sweep_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sweep", description="Run every trial of a sweep file, one after another.")
    parser.add_argument("file", type=Path, help="a sweep file, e.g. configs/sweeps/learning-rate.yaml")
    parser.add_argument("--trial", type=int, help="run only this trial (0-based): one task of a SLURM job array")
    args, extra_options = parser.parse_known_args(argv)
    try:
        sweep = read_sweep_file(args.file)
    except SweepFileError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    spec, name = sweep.spec, sweep.name
    if sweep.strategy == "optuna":
        from .optuna_search import run_search

        try:
            return run_search(
                spec,
                sweep.text,
                name,
                extra_options,
                run_fit if args.trial is not None else run_fit_quietly,
                array_task=args.trial,
            )
        except SweepFileError as bad:
            print(f"error: {args.file}: {bad}", file=sys.stderr)
            return 2
    trials = sweep_trials(spec)
    if args.trial is not None and not 0 <= args.trial < len(trials):
        parser.error(f"--trial {args.trial}: the sweep has trials 0 to {len(trials) - 1}")
    record = {"name": name, "file": str(args.file), "spec": spec, "trials": []}
    for number, values in enumerate(trials):
        run_name = f"sweep-{name}-{number:03d}"
        options = [*spec.get("options", []), *(f"--{key}={json.dumps(value)}" for key, value in values.items())]
        options += extra_options
        record["trials"].append({"run_name": run_name, "values": values, "options": options})
        if args.trial is not None:
            if number == args.trial:
                code = run_fit([*options, "--run_name", run_name])  # an array task: its output goes to its log
                if code != 0:
                    return code
            continue
        print(f"sweep {name}: trial {number + 1}/{len(trials)} {values}", flush=True)
        code = run_fit_quietly([*options, "--run_name", run_name])
        if code != 0:
            print(f"sweep {name}: trial {run_name} stopped with exit code {code}")
            return code
    directory = RunsRoot.current().sweeps
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"sweep {name}: {len(trials)} trials done; gather them with `results {name}`")
    return 0


def results_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="results", description="Gather a sweep's trials into one table and a plot.")
    parser.add_argument("name", help="the sweep's name (its file name without .yaml)")
    args = parser.parse_args(argv)
    root = RunsRoot.current()
    directory = root.sweeps
    record_path = directory / f"{args.name}.json"
    if not record_path.exists():
        print(f"error: no sweep named {args.name!r} in {directory}; run `sweep FILE` first")
        return 2
    record = json.loads(record_path.read_text())
    rows = []
    for trial in record["trials"]:
        run = root.run(trial["run_name"])
        metric = run.read_manifest().get("monitor", {}).get("metric", "metric")
        rows.append({"run": trial["run_name"], **trial["values"], f"best {metric}": run.best_value()})
    columns = list(rows[0])
    with open(directory / f"{args.name}-results.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    (directory / f"{args.name}-results.md").write_text("\n".join(table) + "\n")
    _plot_sweep(rows, columns, directory / f"{args.name}-results.png")
    print("\n".join(table))
    print(f"Written: {directory / (args.name + '-results.csv')}, .md and .png")
    return 0


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plot_sweep(rows: list[dict], columns: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, parameters = columns[-1], columns[1:-1]
    figure, axes = plt.subplots(1, len(parameters), figsize=(4 * len(parameters), 3.5), squeeze=False)
    for axis, parameter in zip(axes[0], parameters, strict=True):
        axis.scatter([str(row[parameter]) for row in rows], [row[metric] for row in rows])
        axis.set(xlabel=parameter, ylabel=metric)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
