"""`<package> sweep-status FILE`: where every trial of a sweep stands. Managed by the copier-lightning template.

One line per trial: its state, step, the monitored metric now and at its best, and its SLURM job
when it runs as a job array; then the best trials so far, and a plot of the metric over trials
(runs/sweeps/<name>-status.png). Read from the run directories (each trial is a run), the Optuna
study for `strategy: optuna`, and `squeue` when SLURM is installed. Safe to run while the sweep
runs: it only reads.

States: queued (no run yet; PENDING in the queue), running, stopped (on a signal: continues when
the job is requeued or the sweep re-run), failed, finished; damaged: its manifest.json does not
parse (said below the table, with what to do). A run whose process was killed without a word still
reads `running` unless the queue shows its job is gone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..runs.directory import DamagedRunFile
from ..runs.root import RunsRoot
from .sweep_files import SweepFileError, read_sweep_file, sweep_trials


@dataclass
class TrialStatus:
    number: int
    run_name: str
    state: str
    step: int | None = None
    latest: float | None = None
    best: float | None = None
    job: str = ""
    values: str = ""
    damage: str = ""  # why a damaged trial's run cannot be read (DamagedRunFile's line)


def sweep_trial_names(spec: dict, name: str) -> list[tuple[int, str, str, str, str]]:
    """(number, run name, the trial's values as text, its array task, its state in the Optuna study or "")
    for every trial the sweep has or will have.

    A grid or random sweep's array task N runs trial N; an Optuna study's trials note the task that asked them.
    """
    if spec.get("strategy") == "optuna":
        asked = _optuna_trials(name)
        count = max(spec["trials"], len(asked))
        return [(n, f"sweep-{name}-{n:03d}", *asked.get(n, ("", "", ""))) for n in range(count)]
    return [(n, f"sweep-{name}-{n:03d}", _short(values), str(n), "") for n, values in enumerate(sweep_trials(spec))]


def trial_status(
    number: int, run_name: str, values: str, task: str, queue: dict[str, tuple[str, str]], study_state: str = ""
) -> TrialStatus:
    run = RunsRoot.current().run(run_name)
    job_id, job_state = queue.get(task, ("", ""))
    try:
        manifest = run.read_manifest()
    except DamagedRunFile as damaged:
        return TrialStatus(number, run_name, "damaged", job=job_id, values=values, damage=str(damaged))
    if not manifest:
        return TrialStatus(number, run_name, "queued", job=job_id, values=values)
    checkpoints = sorted(manifest.get("checkpoints", {}).values(), key=lambda entry: entry["step"])
    latest = checkpoints[-1] if checkpoints else {}
    state = manifest.get("status", "?")
    if study_state == "PRUNED":
        state = "stopped early (pruned)"
    elif state == "running" and queue and not job_state:
        state = "running (no job in the queue: killed?)"
    return TrialStatus(
        number, run_name, state, latest.get("step"), latest.get("value"), run.best_value(), job_id, values
    )


SQUEUE_SECONDS = 30  # a busy controller can take seconds to answer; longer than this, the table goes without


def slurm_queue(job_name: str) -> dict[str, tuple[str, str]]:
    """Array task id -> (job id, state) of this sweep's jobs in the queue; {} without SLURM, and {} with
    a line on stderr when squeue fails or does not answer (a controller down: the table still shows)."""
    if shutil.which("squeue") is None:
        return {}
    command = ["squeue", "--noheader", "--name", job_name, "--array", "--format", "%i %K %T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"note: squeue did not answer in {SQUEUE_SECONDS} s: no jobs shown", file=sys.stderr)
        return {}
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        print(f"note: squeue failed ({said}): no jobs shown", file=sys.stderr)
        return {}
    tasks = {}
    for line in done.stdout.splitlines():
        job_id, task, state = (line.split() + ["", "", ""])[:3]
        tasks[task] = (job_id, state)
    return tasks


def sweep_status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sweep-status", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="the sweep file, e.g. configs/sweeps/learning-rate.yaml")
    parser.add_argument("--top", type=int, default=3, help="how many best trials to list (default 3)")
    args = parser.parse_args(argv)
    try:
        sweep = read_sweep_file(args.file)
    except SweepFileError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    spec, name = sweep.spec, sweep.name
    queue = slurm_queue(f"sweep-{name}")
    rows = [
        trial_status(number, run_name, values, task, queue, study_state)
        for number, run_name, values, task, study_state in sweep_trial_names(spec, name)
    ]
    metric, mode = _monitor(rows)
    print(format_table(rows, metric, bool(queue)))
    for row in rows:
        if row.damage:
            print(f"trial {row.number}: {row.damage}")
    scored = sorted((row for row in rows if row.best is not None), key=lambda r: r.best, reverse=mode != "min")
    counts = {state: sum(row.state.startswith(state) for row in rows) for state in _STATES}
    print("  ".join(f"{state} {count}" for state, count in counts.items() if count))
    if scored:
        print(f"best so far ({metric}, {mode}):")
        for row in scored[: args.top]:
            print(f"  trial {row.number}: {row.best:.4f}  {row.values}")
        _plot(rows, metric, RunsRoot.current().sweeps / f"{name}-status.png")
    return 0


_STATES = (
    "queued",
    "running",
    "stopped",
    "failed",
    "finished",
    "damaged",
)  # "stopped early (pruned)" counts as stopped


def format_table(rows: list[TrialStatus], metric: str, with_jobs: bool) -> str:
    header = ["trial", "state", "step", f"{metric} now", "best", *(["job"] if with_jobs else []), "values"]
    lines = [header]
    for row in rows:
        cells = [str(row.number), row.state, _text(row.step), _text(row.latest), _text(row.best)]
        lines.append([*cells, *([row.job] if with_jobs else []), row.values])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _monitor(rows: list[TrialStatus]) -> tuple[str, str]:
    root = RunsRoot.current()
    for row in rows:
        if row.damage:
            continue
        monitor = root.run(row.run_name).read_manifest().get("monitor")
        if monitor:
            return monitor.get("metric", "metric"), monitor.get("mode", "max")
    return "metric", "max"


def _optuna_trials(name: str) -> dict[int, tuple[str, str]]:
    journal = RunsRoot.current().sweeps / name / "study.journal"
    if not journal.exists():
        return {}
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))
    return {
        trial.number: (
            _short(trial.params),
            trial.user_attrs.get("worker", "").removeprefix("array-task-"),
            trial.state.name,
        )
        for trial in study.get_trials(deepcopy=False)
    }


def _short(values: dict) -> str:
    """`learning_rate=0.004431, hidden_sizes=[64]`: the option's last name and a short value."""
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={_value(value)}" for key, value in values.items())


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def _text(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plot(rows: list[TrialStatus], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if row.best is not None]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([row.number for row in shown], [row.best for row in shown], "o")
    axis.set(xlabel="trial", ylabel=f"best {metric}", title="sweep status")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
