"""The crash-safety checkpoint policy. Managed by the copier-lightning template.

`last.ckpt` is rewritten every N optimizer steps and/or every T minutes, and at every epoch end
after validation; the one it replaces is kept as `previous.ckpt` until the new one is complete.
No step checkpoint is taken on an epoch's last batch: the epoch-end one follows right after
validation, and resuming from the step before means the validation of that epoch is not skipped.
An exception writes `on_exception.ckpt`; a finished run writes `final.ckpt`.
Best-k checkpoints by the monitored metric come from Lightning's ModelCheckpoint beside it.

On `stop_signal` (SIGUSR1 by default: SLURM sends it before a time limit or preemption), the
signal handler only sets a flag. At the next batch boundary (or, on an epoch's last batch, after
that epoch's validation) `last.ckpt` is written and training stops; `stopped_by_signal` tells the
command to exit with runs.REQUEUE_EXIT_CODE so that the job script requeues the job.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import lightning.pytorch as pl


class RollingCheckpoint(pl.Callback):
    """Keep `last.ckpt` fresh so that a crash costs at most N steps or T minutes of work."""

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int | None = None,
        every_n_minutes: float | None = None,
        stop_signal: int | None = signal.SIGUSR1,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive number of steps or null, got {every_n_steps}")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(f"every_n_minutes must be positive or null, got {every_n_minutes}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.every_n_minutes = every_n_minutes
        self._last_save_time = time.monotonic()
        self._last_saved_step = -1
        self.stop_signal = stop_signal
        self.signal_received = False
        self.stopped_by_signal = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.stop_signal is not None and stage == "fit" and threading.current_thread() is threading.main_thread():
            signal.signal(self.stop_signal, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # Only a flag: saving inside a signal handler could interrupt a half-done optimizer step.
        self.signal_received = True

    def _stop_for_signal(self, trainer: pl.Trainer) -> None:
        self.save_last(trainer)
        self.stopped_by_signal = True
        trainer.should_stop = True

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _saving_allowed(self, trainer: pl.Trainer) -> bool:
        return not (trainer.sanity_checking or trainer.fast_dev_run)

    def save_last(self, trainer: pl.Trainer) -> None:
        """Write `last.ckpt`, keeping the one it replaces as `previous.ckpt`."""
        if trainer.global_step == self._last_saved_step:
            return
        # Loggers buffer rows (CSV: 100 steps); flushing them here keeps the logs as complete as the
        # checkpoint, so a crash loses neither the metrics nor the state up to this point.
        for logger in trainer.loggers:
            logger.save()
        if trainer.is_global_zero and self.last_path.exists():
            os.replace(self.last_path, self.dirpath / "previous.ckpt")
        trainer.save_checkpoint(self.last_path, weights_only=False)
        self._last_saved_step = trainer.global_step
        self._last_save_time = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._saving_allowed(trainer) or batch_idx + 1 >= trainer.num_training_batches:
            return  # an epoch's last batch: the epoch-end save (or stop) follows its validation
        if self.signal_received:
            self._stop_for_signal(trainer)
            return
        step_due = self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0
        time_due = (
            self.every_n_minutes is not None and time.monotonic() - self._last_save_time >= 60 * self.every_n_minutes
        )
        if step_due or time_due:
            self.save_last(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._saving_allowed(trainer):
            return
        if self.signal_received and not self.stopped_by_signal:
            self._stop_for_signal(trainer)
        else:
            self.save_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._saving_allowed(trainer) and not trainer.interrupted and not self.stopped_by_signal:
            trainer.save_checkpoint(self.dirpath / "final.ckpt", weights_only=False)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._saving_allowed(trainer) and trainer.global_step > 0:
            trainer.save_checkpoint(self.dirpath / "on_exception.ckpt", weights_only=False)
