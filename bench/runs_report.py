"""`report` on 100 runs: seconds to build the page, and its size.

`.venv/bin/python bench/runs_report.py`. Renders the example and trains one run (5 epochs), then makes
99 more runs from it: each a copy of its records (manifest, record, config, metrics log; no
checkpoint files, which the report does not read) with another learning rate and seed in its config
and its metrics shifted, so that every run differs from the others as a real sweep's would. Then it
times `build_report` on the 100 runs (median of 3) in this process. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from example_project import use_rendered_example  # noqa: E402

RUNS, REPEATS = 100, 3


def copy_run(source: Path, target: Path, number: int) -> None:
    target.mkdir()
    for name in ("record.json", "config.yaml"):
        shutil.copy(source / name, target / name)
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["model"]["init_args"]["learning_rate"] = 0.0005 * (1 + number % 20)
    config["seed_everything"] = number
    (target / "config.yaml").write_text(yaml.safe_dump(config))
    shift = (number % 17) / 200
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["run_name"] = target.name
    for entry in manifest["checkpoints"].values():
        if entry.get("value") is not None:
            entry["value"] -= shift
    (target / "manifest.json").write_text(json.dumps(manifest))
    (target / "logs").mkdir()
    with open(source / "logs" / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    with open(target / "logs" / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            validation = [key for key, value in row.items() if value and key.startswith("val/")]
            shifted = {key: f"{float(row[key]) - shift:.6f}" for key in validation}
            writer.writerow({**row, **shifted})


def main() -> None:
    work, _ = use_rendered_example("bench-report-")
    runs = work / "runs"
    fit = [sys.executable, "-m", "digits_mlp", "fit", "--trainer.max_epochs=5", "--run_name", "run-000"]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd() / "src")}
    subprocess.run(fit, check=True, stdout=subprocess.DEVNULL, env=env)
    for number in range(1, RUNS):
        copy_run(runs / "run-000", runs / f"run-{number:03d}", number)
    from digits_mlp.kit.reporting.runs_report import build_report

    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        shown = build_report(runs, runs / "report.html")
        times.append(time.perf_counter() - started)
    size = (runs / "report.html").stat().st_size
    print(f"report on {shown} runs: {statistics.median(times):.2f} s (median of {REPEATS}: "
          f"{', '.join(f'{t:.2f}' for t in times)}), {size / 1024:.0f} KiB")  # fmt: skip


if __name__ == "__main__":
    main()
