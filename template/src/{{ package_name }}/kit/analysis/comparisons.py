"""Sweeps, seed repeats and honest comparisons. Managed by the copier-lightning template.

* `<package> sweep FILE` runs every trial of a sweep file (grid or random over config options), one
  after another; each trial is a normal run, so an interrupted sweep resumes where it stopped.
  `strategy: optuna` searches instead (kit/analysis/optuna_search.py), in a study that resumes too.
* `<package> results NAME` gathers a sweep's trials into one table (CSV and Markdown) and a plot.
* `<package> seeds --n 5 [config options]` runs the same config with seeds 0..n-1 and reports the
  mean and a 95 % confidence interval of the best monitored metric.
* `<package> compare LABEL_A LABEL_B` says whether two seed groups differ by more than seed noise:
  a paired t interval for the mean difference when both groups ran the same seeds (the usual case:
  `seeds` runs 0..n-1, and a seed fixes the initialisation and the batch order, so pairing removes
  that shared part of the noise), Welch's t interval for the difference of means otherwise.
The t intervals are scipy.stats' own (`ttest_1samp`, `ttest_rel`, `ttest_ind(equal_var=False)`
and their `confidence_interval()`); from BOOTSTRAP_MIN_SEEDS seeds per group a bootstrap interval
of the same difference is shown beside it.
Records go to runs/sweeps/ and runs/seeds/.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import yaml

from ..runs.identity import plain_name_part, sweep_name
from ..runs.root import RunsRoot

# Below this many seeds per group an interval is so wide (t at 1 degree of freedom is 12.7) that
# it tells little; the output says so.
FEW_SEEDS = 3
# A bootstrap interval needs a few values to resample from; below this it is not shown.
BOOTSTRAP_MIN_SEEDS = 5


def t_critical(degrees_of_freedom: float) -> float:
    """The two-sided 95 % critical value of Student's t (scipy.stats; any degrees of freedom)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, degrees_of_freedom))


def mean_and_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student's t, scipy.stats)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    if statistics.pvariance(values) == 0:
        return mean, 0.0  # scipy answers nan when there is no spread
    from scipy import stats

    interval = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    return mean, float(interval.high - interval.low) / 2


def welch_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Difference of means (b - a), the half-width of its 95 % interval, and Welch's degrees of freedom."""
    difference = statistics.fmean(b) - statistics.fmean(a)
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return difference, 0.0, float("inf")
    from scipy import stats

    result = stats.ttest_ind(b, a, equal_var=False)
    interval = result.confidence_interval(0.95)
    return difference, float(interval.high - interval.low) / 2, float(result.df)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the differences b_i - a_i (same seed i), the half-width of its 95 % interval, degrees of freedom."""
    differences = [y - x for x, y in zip(a, b, strict=True)]
    if statistics.pvariance(differences) == 0:
        return statistics.fmean(differences), 0.0, len(differences) - 1
    from scipy import stats

    interval = stats.ttest_rel(b, a).confidence_interval(0.95)
    return statistics.fmean(differences), float(interval.high - interval.low) / 2, len(differences) - 1


def _fit(args: list[str]) -> int:
    from ..training.lightning_cli import run_lightning_cli

    return run_lightning_cli(["fit", *args])


# -- sweeps --------------------------------------------------------------------------------------
def sweep_trials(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials a sweep file declares: every combination (grid) or `trials` random draws."""
    parameters: dict[str, list] = spec["parameters"]
    if not parameters or not all(isinstance(v, list) and v for v in parameters.values()):
        raise ValueError("a sweep's `parameters` maps each config option to a non-empty list of values")
    combinations = [dict(zip(parameters, values, strict=True)) for values in itertools.product(*parameters.values())]
    strategy = spec.get("strategy", "grid")
    if strategy == "grid":
        return combinations
    if strategy == "random":
        count = int(spec.get("trials", 10))
        return random.Random(spec.get("seed", 0)).sample(combinations, min(count, len(combinations)))
    raise ValueError(f"unknown sweep strategy {strategy!r}: use grid, random or optuna")


def sweep_size(spec: dict[str, Any]) -> int:
    """How many trials (array tasks) a sweep file asks for."""
    return int(spec["trials"]) if spec.get("strategy") == "optuna" else len(sweep_trials(spec))


def _quiet_fit(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return _fit(args)


def sweep_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sweep", description="Run every trial of a sweep file, one after another.")
    parser.add_argument("file", type=Path, help="a sweep file, e.g. configs/sweeps/learning-rate.yaml")
    parser.add_argument("--trial", type=int, help="run only this trial (0-based): one task of a SLURM job array")
    args, extra_options = parser.parse_known_args(argv)
    text = args.file.read_text()
    spec = yaml.safe_load(text)
    name = sweep_name(spec, args.file)
    if spec.get("strategy") == "optuna":
        from .optuna_search import SweepFileError, run_search

        try:
            return run_search(
                spec, text, name, extra_options, _fit if args.trial is not None else _quiet_fit, array_task=args.trial
            )
        except SweepFileError as bad:
            print(f"error: {args.file}: {bad}")
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
                code = _fit([*options, "--run_name", run_name])  # an array task: its output goes to its log
                if code != 0:
                    return code
            continue
        print(f"sweep {name}: trial {number + 1}/{len(trials)} {values}", flush=True)
        code = _quiet_fit([*options, "--run_name", run_name])
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
    directory = RunsRoot.current().sweeps
    record_path = directory / f"{args.name}.json"
    if not record_path.exists():
        print(f"error: no sweep named {args.name!r} in {directory}; run `sweep FILE` first")
        return 2
    record = json.loads(record_path.read_text())
    rows = []
    for trial in record["trials"]:
        run = RunsRoot.current().run(trial["run_name"])
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


# -- seeds and comparisons -----------------------------------------------------------------------
def seeds_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="seeds", description="Run one config with seeds 0..n-1; report the mean and 95 % interval."
    )
    parser.add_argument("--n", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--label", default=None, help="name of this group of runs (default: from the config)")
    args, options = parser.parse_known_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2 to estimate seed noise")
    config_name = next((Path(o).stem for o in reversed(options) if o.endswith(".yaml")), "default")
    label = plain_name_part(args.label or config_name)
    values = {}
    for seed in range(args.n):
        run_name = f"seeds-{label}-{seed}"
        print(f"seeds {label}: seed {seed} ({seed + 1}/{args.n})", flush=True)
        with contextlib.redirect_stdout(io.StringIO()):
            code = _fit([*options, f"--seed_everything={seed}", "--run_name", run_name])
        if code != 0:
            return code
        values[seed] = RunsRoot.current().run(run_name).best_value()
    mean, half_width = mean_and_interval(list(values.values()))
    directory = RunsRoot.current().seeds
    directory.mkdir(parents=True, exist_ok=True)
    record = {"label": label, "options": options, "values": values, "mean": mean, "ci95_half_width": half_width}
    (directory / f"{label}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{label}: {mean:.4f} +- {half_width:.4f} (95 % interval, {args.n} seeds: {list(values.values())})")
    if args.n < FEW_SEEDS:
        print(f"Note: with fewer than {FEW_SEEDS} seeds the interval tells little; run more (--n 5).")
    return 0


def compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="compare", description="Does group B differ from group A by more than seed noise? (runs of `seeds`)"
    )
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args(argv)
    groups = []
    for label in (args.a, args.b):
        path = RunsRoot.current().seeds / f"{label}.json"
        if not path.exists():
            print(f"error: no seed group {label!r} in {path.parent}; run `seeds --label {label} ...` first")
            return 2
        groups.append({str(seed): float(value) for seed, value in json.loads(path.read_text())["values"].items()})
    comparison = compare_groups(args.a, groups[0], args.b, groups[1])
    record = RunsRoot.current().seeds / f"compare-{args.a}-vs-{args.b}.json"
    record.write_text(json.dumps(comparison, indent=2) + "\n")
    print(comparison["summary"])
    return 0


def compare_groups(label_a: str, a: dict[str, float], label_b: str, b: dict[str, float]) -> dict[str, Any]:
    """The difference b - a with its 95 % interval and a verdict: paired when both groups ran the same seeds."""
    paired = set(a) == set(b) and len(a) >= 2
    if paired:
        seeds = sorted(a, key=_seed_order)
        difference, half_width, freedom = paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
        method = f"paired by seed ({len(seeds)} seeds run by both groups)"
    else:
        difference, half_width, freedom = welch_difference(list(a.values()), list(b.values()))
        method = f"Welch, unpaired ({len(a)} and {len(b)} seeds, not the same ones)"
    low, high = difference - half_width, difference + half_width
    if low > 0 or high < 0:
        verdict = "the difference exceeds seed noise"
    else:
        verdict = "the difference is within seed noise: do not call it a gain"
    summary = f"{label_b} - {label_a} = {difference:+.4f}, 95 % interval [{low:+.4f}, {high:+.4f}], {method}: {verdict}"
    bootstrap = bootstrap_interval(a, b, paired)
    if bootstrap is not None:
        summary += (
            f"\nBootstrap 95 % interval (no normal model assumed): [{bootstrap[0]:+.4f}, {bootstrap[1]:+.4f}]"
            + ("" if (bootstrap[0] > 0 or bootstrap[1] < 0) == (low > 0 or high < 0) else "; it disagrees with t")
        )
    if min(len(a), len(b)) < FEW_SEEDS:
        summary += f"\nNote: with fewer than {FEW_SEEDS} seeds per group the interval tells little; run more (--n 5)."
    return {
        "a": label_a,
        "b": label_b,
        "method": "paired" if paired else "welch",
        "difference": difference,
        "ci95": [low, high],
        "degrees_of_freedom": freedom,
        "verdict": verdict,
        "bootstrap_ci95": list(bootstrap) if bootstrap is not None else None,
        "summary": summary,
    }


def bootstrap_interval(a: dict[str, float], b: dict[str, float], paired: bool) -> tuple[float, float] | None:
    """A 95 % bootstrap interval of the same difference (scipy.stats.bootstrap, seeded): a check on
    the t interval where the normal model is doubtful. None below BOOTSTRAP_MIN_SEEDS per group."""
    if min(len(a), len(b)) < BOOTSTRAP_MIN_SEEDS:
        return None
    import numpy as np
    from scipy import stats

    if paired:
        seeds = sorted(a, key=_seed_order)
        samples = (np.array([b[s] - a[s] for s in seeds]),)
        statistic, method = np.mean, "BCa"
    else:
        samples = (np.array(list(b.values())), np.array(list(a.values())))
        statistic, method = (lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis)), "percentile"
    if all(np.ptp(sample) == 0 for sample in samples):
        return None  # no spread to resample
    result = stats.bootstrap(samples, statistic, confidence_level=0.95, method=method, rng=np.random.default_rng(0))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return None if math.isnan(low) or math.isnan(high) else (low, high)


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), seed) if seed.lstrip("-").isdigit() else (0, seed)
