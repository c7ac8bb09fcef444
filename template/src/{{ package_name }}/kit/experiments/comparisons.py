"""Seed repeats and honest comparisons. Managed by the copier-lightning template.

(Sweeps, `sweep` and `results`, are sweeps.py's.)
* `<package> seeds --n 5 [config options]` runs the same config with seeds 0..n-1 and reports the
  mean and a 95 % confidence interval of the best monitored metric.
* `<package> compare LABEL_A LABEL_B` says whether two seed groups differ by more than seed noise:
  a paired t interval for the mean difference when both groups ran the same seeds (the usual case:
  `seeds` runs 0..n-1, and a seed fixes the initialisation and the batch order, so pairing removes
  that shared part of the noise), Welch's t interval for the difference of means otherwise.
The t intervals are scipy.stats' own (`ttest_1samp`, `ttest_rel`, `ttest_ind(equal_var=False)`
and their `confidence_interval()`); from BOOTSTRAP_MIN_SEEDS seeds per group a bootstrap interval
of the same difference is shown beside it.
Records go to runs/seeds/.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from ..runs.identity import RunNameError, monitors_no_metric, plain_name_part
from ..runs.root import RunsRoot
from .sweeps import run_fit_quietly

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

    return mean, _half_width(stats.ttest_1samp(values, 0.0))


def _half_width(result) -> float:
    """Half the width of a scipy.stats t-test result's 95 % confidence interval."""
    interval = result.confidence_interval(0.95)
    return float(interval.high - interval.low) / 2


def welch_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Difference of means (b - a), the half-width of its 95 % interval, and Welch's degrees of freedom."""
    difference = statistics.fmean(b) - statistics.fmean(a)
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return difference, 0.0, float("inf")
    from scipy import stats

    result = stats.ttest_ind(b, a, equal_var=False)
    return difference, _half_width(result), float(result.df)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of the differences b_i - a_i (same seed i), the half-width of its 95 % interval, degrees of freedom."""
    differences = [y - x for x, y in zip(a, b, strict=True)]
    if statistics.pvariance(differences) == 0:
        return statistics.fmean(differences), 0.0, len(differences) - 1
    from scipy import stats

    return statistics.fmean(differences), _half_width(stats.ttest_rel(b, a)), len(differences) - 1


def seeds_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="seeds", description="Run one config with seeds 0..n-1; report the mean and 95 % interval."
    )
    parser.add_argument("--n", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--label", default=None, help="name of this group of runs (default: from the config)")
    args, options = parser.parse_known_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2 to estimate seed noise")
    try:
        no_metric = monitors_no_metric(options)
    except RunNameError as bad:  # a config that is missing or not YAML: before any seed trains
        print(f"error: {bad}", file=sys.stderr)
        return 2
    if no_metric:
        print("error: seeds compares runs by checkpointing.monitor, and this config sets it to null", file=sys.stderr)
        return 2
    config_name = next((Path(o).stem for o in reversed(options) if o.endswith(".yaml")), "default")
    label = plain_name_part(args.label or config_name)
    root = RunsRoot.current()
    values = {}
    for seed in range(args.n):
        run_name = f"seeds-{label}-{seed}"
        print(f"seeds {label}: seed {seed} ({seed + 1}/{args.n})", flush=True)
        code = run_fit_quietly([*options, f"--seed_everything={seed}", "--run_name", run_name])
        if code != 0:
            return code
        values[seed] = root.run(run_name).best_value()
        if values[seed] is None:
            print(
                f"error: run '{run_name}' recorded no value of checkpointing.monitor (it never validated): "
                "seeds compares runs by it",
                file=sys.stderr,
            )
            return 2
    mean, half_width = mean_and_interval(list(values.values()))
    directory = root.seeds
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
    seeds = RunsRoot.current().seeds
    groups = []
    for label in (args.a, args.b):
        path = seeds / f"{label}.json"
        if not path.exists():
            print(f"error: no seed group {label!r} in {path.parent}; run `seeds --label {label} ...` first")
            return 2
        groups.append({str(seed): float(value) for seed, value in json.loads(path.read_text())["values"].items()})
    comparison = compare_groups(args.a, groups[0], args.b, groups[1])
    record = seeds / f"compare-{args.a}-vs-{args.b}.json"
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
