"""What `fit` tells its run directory besides the checkpoint files. Managed by the copier-lightning template.

One callback, `RunBookkeeping`, does four small jobs:
- it writes the monitored metric's current value into every checkpoint, so that the checkpoint
  says how good it is (the manifest entry copies it; kit/runs/checkpoint_io.py);
- it refuses to let a checkpoint with NaN or infinite weights be written (kit/training/divergence.py):
  every save passes here, in every process, before anything is written;
- at the first validation (the sanity check, before any training) it stops `fit` when the model
  does not log the metric that checkpoints and early stopping follow, naming the metrics it does
  log (a regression model told to follow `val/acc`); for `checkpointing.monitor: auto` it chooses
  that metric there instead (kit/training/monitor_choice.py), rank 0's choice for every process,
  and when training starts without any validation to come, it chooses none;
- it marks the run `failed` (manifest and record) when an error ends `fit`, instead of leaving
  `running`.
One callback rather than three because Lightning calls every hook of every callback at every
step (about seven per step, each with a profiler context and a name built from the callback's
state key): each callback costs per step whether it has work to do or not. For the same reason,
when training starts it removes the callbacks that have nothing left to do: Lightning's
ModelSummary (the summary is printed by then) and, in a single process, PeerGuard (it serves DDP).
All of it acts on what every process has (the metric is synchronised by `self.log`), and only
rank 0 writes: Lightning saves checkpoints on rank 0, and the failure is recorded there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelSummary
from typing_extensions import override

from ..runs.directory import MONITORED_VALUE_KEY, RunDirectory
from ..runs.identity import AUTO
from ..runs.lease import RunTakenOver
from ..runs.record import end_start
from .distributed import PeerGuard
from .divergence import refuse_non_finite_weights
from .monitor_choice import choose_monitor


class MissingMonitoredMetric(ValueError):
    """The model's validation does not log `checkpointing.monitor`."""


class RunBookkeeping(Callback):
    def __init__(
        self,
        run: RunDirectory,
        monitor: str | None,
        on_chosen: Callable[[Trainer, str | None], None] | None = None,
    ) -> None:
        """monitor: the metric to check, AUTO to choose one; on_chosen(trainer, metric): told the choice."""
        self.run = run
        self.monitor = monitor
        self.on_chosen = on_chosen
        self.monitor_checked = False

    # -- callbacks with nothing left to do would still be called at every step -----------------
    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        idle = (ModelSummary, PeerGuard) if trainer.world_size == 1 else (ModelSummary,)
        trainer.callbacks = [callback for callback in trainer.callbacks if not isinstance(callback, idle)]
        if self.monitor == AUTO and not trainer.enable_validation:
            self._choose(trainer, None)  # no validation_step, no validation data or limit_val_batches=0: none to follow

    # -- the checkpoint's own note of how good it is -------------------------------------------
    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        refuse_non_finite_weights(checkpoint, trainer.global_step)
        value = trainer.callback_metrics.get(self.monitor) if self.monitor is not None else None
        checkpoint[MONITORED_VALUE_KEY] = float(value) if value is not None else None

    # -- the monitored metric exists -------------------------------------------------------------
    @override
    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_monitored_metric(trainer)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_monitored_metric(trainer)  # with num_sanity_val_steps=0, the first real validation

    def _check_monitored_metric(self, trainer: Trainer) -> None:
        if self.monitor_checked or self.monitor is None:
            return
        self.monitor_checked = True
        if self.monitor == AUTO:
            chosen = choose_monitor(trainer.callback_metrics) if trainer.is_global_zero else None
            self._choose(trainer, trainer.strategy.broadcast(chosen))  # one choice: the metrics one process logs
            return
        if self.monitor not in trainer.callback_metrics:
            logged = sorted(name for name in trainer.callback_metrics if not name.startswith("train"))
            raise MissingMonitoredMetric(
                f"checkpointing.monitor is {self.monitor!r}, which validation does not log "
                f"(it logs: {', '.join(logged) or 'nothing'}). Checkpoints and early stopping follow that metric: "
                f"set checkpointing.monitor to one of these in configs/default.yaml, with checkpointing.mode "
                f"(min for a loss or an error, max for an accuracy), or to auto (chosen from what validation logs), "
                f"or to null for a model without a validation metric (no best checkpoints, no early stopping)."
            )

    def _choose(self, trainer: Trainer, metric: str | None) -> None:
        self.monitor, self.monitor_checked = metric, True
        if self.on_chosen is not None:
            self.on_chosen(trainer, metric)

    # -- a failed run says so --------------------------------------------------------------------
    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, RunTakenOver):
            return  # another process holds the run now: its ledgers are not this one's to write
        if trainer.is_global_zero and self.run.manifest_path.exists():
            error = f"{type(exception).__name__}: {exception}".strip().splitlines()[0][:300]
            with contextlib.suppress(OSError):  # a full disk may refuse this write too
                end_start(self.run, "failed", trainer.global_step, error=error)
