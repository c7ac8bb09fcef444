"""`checkpointing.monitor: auto`: the metric that checkpoints and early stopping follow, chosen from
what validation logs. Managed by the copier-lightning template.

A classifier logs an accuracy, a regression its loss and an error, a dense model an IoU, a
generative model perhaps only a loss or nothing at all. With "auto" (the default) nobody has to
say which: at the run's first validation (Lightning's sanity check, before any training step) the
kit takes
  1. a validation metric whose name says higher is better (a score: accuracy, F1, IoU, ...), the
     first word of SCORE_WORDS it has deciding among several, then the name;
  2. else the validation loss, else another metric whose name says lower is better (an error);
  3. else none: rolling and final checkpoints only, no best ones and no early stopping.
The mode follows from the name (fit_policies.better_direction). Rank 0 chooses and every process
takes its choice; the run's manifest records it, and every later start of the run follows the
recorded metric from its first step, so that resumed best-k and early-stopping state belong to the
metric they were kept for. Naming checkpointing.monitor (and mode) in a config chooses by hand.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any

from ..runs.identity import AUTO
from .fit_policies import better_direction, refuse_a_mode_against_the_metric

# Which score a classifier's validation is ranked by when it logs several (the first word found).
SCORE_WORDS = ("acc", "accuracy", "f1", "iou", "dice", "map", "auroc", "auc", "ap", "r2", "precision", "recall")
VALIDATION_PREFIXES = ("val", "valid", "validation")


def is_validation_metric(name: str) -> bool:
    """Whether a logged name is a validation metric (val/acc, val_loss, validation/f1_epoch)."""
    return re.split(r"[/_.-]", name, maxsplit=1)[0].lower() in VALIDATION_PREFIXES


def choose_monitor(logged: Iterable[str]) -> str | None:
    """The metric "auto" follows among the `logged` names (see the module's docstring); None when none fits."""
    validation = sorted(name for name in logged if is_validation_metric(name))
    scores = [name for name in validation if better_direction(name) == "max"]
    if scores:
        return min(scores, key=lambda name: (_first_score_word(name), name))
    errors = [name for name in validation if better_direction(name) == "min"]
    if errors:
        return min(errors, key=lambda name: ("loss" not in _words(name), name))
    return None


def monitor_at_start(monitor: str | None, mode: str, chosen: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(metric, mode) a `fit` start follows: the config's, the run's earlier choice for "auto"
    (`chosen`, RunDirectory.chosen_monitor()), or (AUTO, None) while "auto" waits for the first validation.

    ValueError for a mode against the metric's name, or an "auto" mode for a name that does not say.
    """
    if monitor == AUTO:
        return (chosen["metric"], chosen["mode"]) if chosen else (AUTO, None)
    if monitor is None:
        return None, None
    if mode == AUTO:
        mode = better_direction(monitor)
        if mode is None:
            raise ValueError(
                f"mode is 'auto', and the name {monitor!r} does not say whether higher or lower is better: set "
                f"--checkpointing.mode=max or min (beside monitor in configs/default.yaml)"
            )
    refuse_a_mode_against_the_metric(monitor, mode)
    return monitor, mode


def described(metric: str, mode: str | None) -> str:
    """`metric` and which way is better, for messages: "val/loss (lower is better)"."""
    return f"{metric} ({'higher' if mode == 'max' else 'lower'} is better)"


def metrics_validation_logs(model: Any, datamodule: Any) -> list[str]:
    """The names one validation batch logs, with a scratch trainer (for a choice made before any run,
    such as a search's direction)."""
    from .scratch_trainer import scratch_trainer  # Lightning: imported only when a model is run

    trainer = scratch_trainer(limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=datamodule, verbose=False)
    return sorted(trainer.callback_metrics)


def _words(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower()))


def _first_score_word(name: str) -> int:
    words = _words(name)
    return next((rank for rank, word in enumerate(SCORE_WORDS) if word in words), len(SCORE_WORDS))
