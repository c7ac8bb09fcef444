"""`sweep FILE` with `strategy: optuna`: a search that resumes. Managed by the copier-lightning template.

The study lives in the sweep's directory, `runs/sweeps/<name>/study.journal` (Optuna's journal
file: no database server, safe for several processes on a shared filesystem), so an interrupted
search continues where it stopped:
- each trial is a normal run (`runs/sweep-<name>-NNN/`), and a trial that was training when the
  search was killed stays `RUNNING` in the study; the next `sweep FILE` trains it on from its last
  checkpoint (exactly, as any run) before asking the sampler for new trials;
- as a SLURM job array (`submit --sweep FILE`), every array task asks the study for the next trial,
  or, requeued, continues the trial it had;
- the study remembers the sweep file it was made from: a changed search space is refused with the
  difference shown, never mixed into the old study.

A sweep file:

    name: lr-search                 # default: the file name
    strategy: optuna
    trials: 20                      # how many trials the search ends with (finished or pruned)
    sampler: tpe                    # tpe (default) or random
    pruner: none                    # none (default), median or hyperband: stop trials that fall behind
    seed: 0                         # the sampler's seed
    options: [--trainer.max_epochs=10]   # given to every trial's `fit`
    parameters:
      model.init_args.learning_rate: {low: 1.0e-4, high: 1.0e-1, log: true}
      model.init_args.dropout: {low: 0.0, high: 0.5}
      data.init_args.batch_size: {choices: [64, 128, 256]}
      model.init_args.hidden_sizes: {choices: [[64], [128, 64]]}

The objective is each trial's best monitored value (`checkpointing.monitor`, maximised or minimised
as `checkpointing.mode` says in the configs the trials use). With `monitor: auto` the search chooses
the metric once, before its first trial, from what one validation batch logs
(kit/training/monitor_choice.py), and gives every trial that metric.

Pruning (off unless `pruner:` says otherwise): each trial reports its monitored value after every
validation, and a trial that falls behind stops early (kit/training/trial_pruning.py). `median`
stops a trial whose value is worse than the median of the earlier trials at the same epoch, once 3
trials have finished and from the second epoch on; `hyperband` is Optuna's Hyperband over epochs.
A pruned trial counts toward `trials`; `sweep-status` shows it as "stopped early (pruned)".
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..runs.atomic_files import atomic_write_text
from ..runs.identity import AUTO, experiment, monitors_no_metric
from ..runs.root import RunsRoot
from ..training.fit_policies import CheckpointPolicy, better_direction
from ..training.monitor_choice import choose_monitor, described, metrics_validation_logs, monitor_at_start
from .sweep_files import SweepFileError, decoded_params, search_distributions

UNOWNED_AFTER_SECONDS = 60


def run_search(
    spec: dict[str, Any], text: str, name: str, extra_options: list[str], fit: Callable[[list[str]], int],
    array_task: int | None = None,
) -> int:  # fmt: skip
    """Run trials until the study holds `trials` finished or pruned ones (an array task: one trial)."""
    import optuna

    from ..training.trial_pruning import pruning_trial

    distributions = search_distributions(spec, text)
    mode, ranking_options = _ranking(spec, extra_options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directory = RunsRoot.current().sweeps / name
    directory.mkdir(parents=True, exist_ok=True)
    study = _open_study(spec, name, directory, mode)
    worker = f"array-task-{array_task}" if array_task is not None else "local"
    running = optuna.trial.TrialState.RUNNING
    while True:
        trials = study.get_trials(deepcopy=False)
        own = [t for t in trials if t.state == running and t.user_attrs.get("worker") == worker]
        if not own:
            own = _claim_unowned_trial(study, trials, worker, local=array_task is None)
        done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
        others_running = sum(t.state == running for t in trials) - len(own)
        if own:
            trial = optuna.trial.Trial(study, own[0]._trial_id)  # the trial this worker had when it stopped
            _suggest_missing(trial, distributions)
            print(f"sweep {name}: trial {trial.number} continues {trial.params}", flush=True)
        elif done + others_running < spec["trials"]:
            trial = study.ask(distributions)
            trial.set_user_attr("worker", worker)
            print(f"sweep {name}: trial {trial.number} ({done + 1}/{spec['trials']}) {trial.params}", flush=True)
        else:
            break
        number = trial.number
        run_name = f"sweep-{name}-{number:03d}"
        options = [*spec.get("options", []), *_options(trial.params), *ranking_options, *extra_options]
        with pruning_trial(trial) if spec.get("pruner", "none") != "none" else contextlib.nullcontext() as pruning:
            code = fit([*options, "--run_name", run_name])
        if code != 0:
            # Left RUNNING: the next `sweep` (or the requeued array task) trains this trial on.
            print(f"sweep {name}: trial {number} stopped with exit code {code}; re-run the sweep to continue it")
            return code
        if pruning is not None and pruning.pruned:
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
            print(f"sweep {name}: trial {number} pruned (stopped early: behind the other trials)", flush=True)
        else:
            study.tell(number, RunsRoot.current().run(run_name).best_value())
        _write_record(study, spec, name)
        if array_task is not None:
            return 0  # one trial per array task
    best = study.best_trial  # pruned trials have no value: the best is a finished one
    values = decoded_params(best.params)
    if others_running:
        print(f"sweep {name}: {done} trials done, {others_running} still running elsewhere (array tasks)")
    else:
        print(f"sweep {name}: {spec['trials']} trials done", end="")
    print(f"; best trial {best.number}: {best.value:.4f} {values}")
    print(f"Gather them with `results {name}`.")
    return 0


def _suggest_missing(trial, distributions: dict[str, Any]) -> None:
    """Sample the parameters a trial lacks: `study.ask` writes one journal entry per parameter, so a
    search killed inside it leaves a trial with only some of them (it never trained: training starts
    after `ask`). Without them the trial would train on the config's defaults and record a row
    without those columns."""
    import optuna

    for name, distribution in distributions.items():
        if name in trial.params:
            continue
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            trial.suggest_categorical(name, distribution.choices)
        elif isinstance(distribution, optuna.distributions.IntDistribution):
            trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
        else:
            trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def _claim_unowned_trial(study, trials: list, worker: str, local: bool) -> list:
    """A RUNNING trial that no worker owns, now this one's ([] if none).

    `study.ask` and the `worker` attribute are two journal entries: a search killed between them
    leaves a trial that no worker continues, and the search would end with it RUNNING for ever. The
    local search (one at a time) takes it at once. An array task takes it only once it is
    UNOWNED_AFTER_SECONDS old (a live task writes the attribute within milliseconds of asking), then
    reads the study again and keeps it only if its own name is the one that stuck: of two tasks
    claiming it at the same moment, the later write wins and the other one moves on.
    """
    import optuna

    now = datetime.datetime.now()
    for trial in trials:
        if trial.state != optuna.trial.TrialState.RUNNING or "worker" in trial.user_attrs:
            continue
        started = trial.datetime_start or now
        if not local and (now - started).total_seconds() < UNOWNED_AFTER_SECONDS:
            continue
        optuna.trial.Trial(study, trial._trial_id).set_user_attr("worker", worker)
        claimed = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        if claimed.user_attrs.get("worker") == worker:
            return [claimed]
    return []


def _ranking(spec: dict[str, Any], extra_options: list[str]) -> tuple[str, list[str]]:
    """The trials' checkpointing.mode (the study's direction), and the options that give every trial the
    metric "auto" chose (none when the config names it); refused when the trials monitor no metric."""
    options = [*spec.get("options", []), *extra_options]
    if monitors_no_metric(options):
        raise SweepFileError(
            "a search ranks its trials by checkpointing.monitor, and the trials' config sets it to null: "
            "set it to a metric validation logs (in the sweep's options or configs/default.yaml)"
        )
    checkpointing = experiment(options).get("checkpointing", {})
    defaults = CheckpointPolicy()
    monitor, mode = checkpointing.get("monitor", defaults.monitor), checkpointing.get("mode", defaults.mode)
    if monitor != AUTO:
        try:  # refused before the first trial trains, as `fit` would refuse it
            return monitor_at_start(monitor, mode, None)[1], []
        except ValueError as wrong:
            raise SweepFileError(f"checkpointing: {wrong}") from None
    monitor = _metric_auto_chooses(options)
    mode = better_direction(monitor)
    print(f"The search ranks its trials by {described(monitor, mode)} (checkpointing.monitor: auto).", flush=True)
    return mode, [f"--checkpointing.monitor={monitor}", f"--checkpointing.mode={mode}"]


def _metric_auto_chooses(options: list[str]) -> str:
    """What `fit` with `options` would choose for "auto", from one validation batch of the model and data."""
    from ..training.project_loading import load_project

    project = load_project(options)
    chosen = choose_monitor(metrics_validation_logs(project.model, project.datamodule))
    if chosen is None:
        raise SweepFileError(
            "a search ranks its trials by checkpointing.monitor, and validation logs no metric to choose "
            "(checkpointing.monitor: auto): log one in validation_step, or name one in the sweep's options"
        )
    return chosen


def _open_study(spec: dict[str, Any], name: str, directory: Path, mode: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    search = {key: spec.get(key) for key in ("parameters", "sampler", "seed")} | {"direction": mode}
    storage = JournalStorage(JournalFileBackend(str(directory / "study.journal")))
    seed = spec.get("seed", 0)
    sampler = (
        optuna.samplers.RandomSampler(seed)
        if spec.get("sampler") == "random"
        else optuna.samplers.TPESampler(seed=seed)
    )
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner,
    }
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruners[spec.get("pruner", "none")](),
        direction="minimize" if mode == "min" else "maximize",
        load_if_exists=True,
    )
    recorded = study.user_attrs.get("search")
    if recorded is None:
        study.set_user_attr("search", search)
    elif recorded != json.loads(json.dumps(search)):
        difference = "".join(
            difflib.unified_diff(
                yaml.safe_dump(recorded).splitlines(keepends=True),
                yaml.safe_dump(json.loads(json.dumps(search))).splitlines(keepends=True),
                fromfile="the study's search", tofile="the sweep file now",
            )
        )  # fmt: skip
        raise SweepFileError(
            f"the study in {directory} was made from another search space; a study mixes no two. Give this "
            f"search its own `name:`, or move {directory} away to start over.\n{difference}"
        )
    return study


def _write_record(study, spec: dict[str, Any], name: str) -> None:
    """runs/sweeps/<name>.json, as grid sweeps write it: `results NAME` reads finished trials from it."""
    import optuna

    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    record = {
        "name": name,
        "spec": spec,
        "trials": [
            {
                "run_name": f"sweep-{name}-{t.number:03d}",
                "values": decoded_params(t.params),
                "options": _options(t.params),
            }
            for t in finished
        ],
    }
    # Array tasks write it as they finish: whole or not at all, so a reader never sees half of it.
    atomic_write_text(RunsRoot.current().sweeps / f"{name}.json", json.dumps(record, indent=2) + "\n")


def _options(params: dict[str, Any]) -> list[str]:
    return [f"--{key}={json.dumps(value)}" for key, value in decoded_params(params).items()]
