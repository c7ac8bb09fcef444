"""Pruning for `sweep` with `strategy: optuna` and a `pruner:`. Managed by the copier-lightning template.

A search trains its trials in its own process (kit/experiments/optuna_search.py). While a trial with
pruning trains, `pruning_trial(...)` makes it the active trial, and `fit` adds `TrialPruning` to
the trainer's callbacks: after every validation it reports the monitored value to the study (one
value per epoch) and stops the run when the study's pruner says the trial is worse than its peers
were at the same epoch. The run then ends as a run stopped by early stopping does (a final
checkpoint, status "finished"); the study marks the trial PRUNED.

Rank-safe: global rank 0 alone talks to the study; every process stops on the agreed answer.
Written here rather than taken from optuna-integration's PyTorchLightningPruningCallback because
that one asks the study on every rank and raises TrialPruned out of `fit`, which would skip the
run's final checkpoint and mark the run failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from .distributed import agree_max

_active: dict[str, Any] = {}


@contextmanager
def pruning_trial(trial: Any) -> Iterator[TrialPruning]:
    """Make `trial` (an optuna Trial) the one `fit` reports to while the block runs; yields the callback."""
    callback = TrialPruning(trial)
    _active["callback"] = callback
    try:
        yield callback
    finally:
        _active.clear()


def active_trial_pruning(monitor: str | None) -> TrialPruning | None:
    """The callback for the trial training in this process now (None outside a pruned search)."""
    callback = _active.get("callback")
    if callback is not None:
        callback.monitor = monitor
    return callback


class TrialPruning(pl.Callback):
    def __init__(self, trial: Any, monitor: str = "val/acc") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned = False

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = 0
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self.trial.report(float(value), step=trainer.current_epoch)
                prune = int(self.trial.should_prune())
        (prune,) = agree_max(trainer, prune)
        if prune:
            self.pruned = True
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"Trial {self.trial.number} pruned after epoch {trainer.current_epoch}: {self.monitor} "
                      "is behind the other trials' at this epoch.", flush=True)  # fmt: skip
