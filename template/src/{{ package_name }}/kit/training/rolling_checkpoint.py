"""The crash-safety checkpoint policy. Managed by the copier-lightning template.

`last.ckpt` is rewritten every N optimizer steps and/or every T minutes, and at every epoch end
after validation; the one it replaces is kept as `previous.ckpt` until the new one is complete.
No step checkpoint is taken on an epoch's last batch: the epoch-end one follows right after
validation, and resuming from the step before means the validation of that epoch is not skipped.
An exception writes `on_exception.ckpt`; a finished run writes `final.ckpt`.

A run restored at (or past) its end finishes too. A stop on the last batch, or a kill between the
last epoch's `last.ckpt` and `final.ckpt`, leaves a checkpoint whose loops say "done"; Lightning
then skips the whole fit loop on resume, `on_train_end` included, so nothing would ever write
`final.ckpt` and every re-run would end "stopped" again. `on_fit_end` (which Lightning still
calls) writes it then. Whether early stopping had ended training is saved in each checkpoint and
restored, so that a run killed right after early stopping decided finishes instead of training on.
For that the epoch-end save must come after early stopping's decision: the class is a Lightning
`Checkpoint`, which Lightning calls after EarlyStopping at an epoch's end (its "monitoring
callbacks" go last).
Best-k checkpoints by the monitored metric come from Lightning's ModelCheckpoint beside it.

On a stop signal (SIGUSR1: SLURM sends it before a time limit or preemption; SIGTERM: what
`kill`, a scheduler or a container runtime sends; SIGINT: Ctrl-C) the signal handler only sets a
flag. At the next batch that steps the optimizer (or, on an epoch's last batch, after that
epoch's validation) `last.ckpt` is written and training stops, without the validation Lightning
would add at a mid-epoch stop (see _stop_mid_epoch); `stopped_by_signal` tells the command to exit
with runs.REQUEUE_EXIT_CODE, so that a job script requeues the job and `supervise` restarts it, and
the same command continues exactly. No checkpoint is written between accumulated batches: their
summed gradients are in none. A second Ctrl-C stops at once, without a checkpoint.
The handlers replace Lightning's for SIGTERM once training starts (Lightning's ends the process
with exit status 0 at the next batch, which reads as success) and are restored when fit ends.

Under DDP the decisions are made together (kit/training/distributed.py): a signal that reached any process
stops all of them at the same batch, and rank 0's timer decides when a timed save is due. Without
that, one process would enter a save (a collective) that another skips, and both would wait forever.
The processes agree at every epoch's end and, within an epoch, at agreement steps about
AGREE_EVERY_SECONDS apart: at each one rank 0, which times the steps, says how many steps to the
next (1 to MAX_STEPS_BETWEEN_AGREEMENTS). A fast loop so pays the collective once in many steps, and
a signal still takes effect within about that many seconds.
An exception under DDP writes no `on_exception.ckpt`: the others would have to join that save.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from typing_extensions import override

from ..runs.directory import FINAL_CHECKPOINT, LAST_CHECKPOINT, ON_EXCEPTION_CHECKPOINT
from ..runs.lease import RunTakenOver
from ..runs.storage_errors import storage_error
from .distributed import agree_max, is_distributed
from .divergence import TOLERATED_STEPS_WITH_SCALER, NonFiniteLossWatch, TrainingDiverged, diverged_loss_message

AGREE_EVERY_SECONDS = 0.5
MAX_STEPS_BETWEEN_AGREEMENTS = 100
# The checkpoint's note that training had been told to stop (early stopping, a pruned trial) when it was written.
TRAINING_ENDED_KEY = "training_ended"


class RollingCheckpoint(Checkpoint):
    """Keep `last.ckpt` fresh so that a crash costs at most N steps or T minutes of work."""

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int | None = None,
        every_n_minutes: float | None = None,
        stop_signals: tuple[int, ...] = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT),
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
        self.stop_signals = stop_signals
        self.signal_received = False  # set by the signal handler, in this process
        self.stop_agreed = False  # what all processes agreed on at the last agreement
        self.signal_name: str | None = None
        self.stopped_by_signal = False
        self.wrote_final = False
        self.restored_at_end = False  # final.ckpt written by on_fit_end: the run had trained to its end before
        self.starts_another_run = False  # `fit --ckpt_path`: a new run going on from a checkpoint, even a final one
        self._handlers_before: dict[int, object] = {}
        self._next_agreement_step = 0
        self._step_at_last_batch_end = 0  # the global step after the previous batch: did this batch step?
        self._last_agreement = (time.monotonic(), 0)  # (time, global step), rank 0's
        self.loss_watch = NonFiniteLossWatch()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install_signal_handlers()  # early: a signal during restore or the sanity check counts too
            # A loss scaler skips overflowing steps on purpose (kit/training/divergence.py).
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            self.loss_watch.tolerated_steps = TOLERATED_STEPS_WITH_SCALER if scaler is not None else 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install_signal_handlers()  # again: Lightning installed its SIGTERM handler in between
        self._step_at_last_batch_end = trainer.global_step  # restored by now, on a resume

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._handlers_before.items():
            signal.signal(signum, handler)
        self._handlers_before = {}

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in self.stop_signals:
            before = signal.signal(signum, self._on_signal)
            self._handlers_before.setdefault(signum, before)

    def _on_signal(self, signum, frame) -> None:
        # Only a flag: saving inside a signal handler could interrupt a half-done optimizer step.
        if signum == signal.SIGINT and self.signal_received:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if signum == signal.SIGINT:
            print(
                "Ctrl-C: writing a checkpoint at the next batch and stopping; Ctrl-C again stops at once.",
                file=sys.stderr,
                flush=True,
            )
        self.signal_received = True
        self.signal_name = signal.Signals(signum).name

    def _stop_for_signal(self, trainer: pl.Trainer) -> None:
        self.save_last(trainer)
        self.stopped_by_signal = True
        trainer.should_stop = True

    def _stop_mid_epoch(self, trainer: pl.Trainer) -> None:
        """A stop between an epoch's batches: `last.ckpt`, and none of the epoch's ending.

        Told to stop mid-epoch, Lightning validates (its path for early stopping), and best-k checkpoints
        and early stopping then act at the epoch's end: at a step the same run uninterrupted never
        validates at. That left a best checkpoint nothing deletes and another best value for a search or
        `seeds` to rank by, and spent a whole validation of SLURM's grace time. The run goes on from
        `last.ckpt`, which holds their state as of this step, so this process skips them.
        """
        self._stop_for_signal(trainer)
        trainer.limit_val_batches = 0  # Trainer.enable_validation: no validation after this
        monitoring = (ModelCheckpoint, EarlyStopping)
        trainer.callbacks = [callback for callback in trainer.callbacks if not isinstance(callback, monitoring)]

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST_CHECKPOINT

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
        # The checkpoint IO (kit/runs/checkpoint_io.py) keeps the replaced last.ckpt as previous.ckpt,
        # once the new one is complete.
        trainer.save_checkpoint(self.last_path, weights_only=False)
        self._last_saved_step = trainer.global_step
        self._last_save_time = time.monotonic()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Runs at every step: the one-process case decides from its own flag and clock at once.
        self.loss_watch.observe(outputs)  # on the loss's device, no waiting (kit/training/divergence.py)
        if not self._saving_allowed(trainer):
            return
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if not last_batch and 0 <= trainer.max_steps <= trainer.global_step:
            # `max_steps` ends training mid-epoch. Lightning validates at an epoch's last batch, or when
            # told to stop: without this the run would end unvalidated, and best-k checkpoints and early
            # stopping would act at the epoch's end on the previous validation's values (early stopping
            # raises when there was none). Told to stop, Lightning validates here first; the same step in
            # every process, so nothing needs agreeing. The step is then an epoch's last one (below).
            trainer.should_stop = True
            last_batch = True
        stepped = trainer.global_step != self._step_at_last_batch_end
        self._step_at_last_batch_end = trainer.global_step
        agreement_due = trainer.global_step >= self._next_agreement_step
        if last_batch:
            # The epoch-end save (or stop) follows this epoch's validation; divergence is decided
            # before that validation, so that no best-k checkpoint is taken of non-finite weights.
            self._agree_on_divergence(trainer)
            return
        if not stepped:
            # Between accumulated batches (`trainer.accumulate_grad_batches`, or a manually optimized model
            # that steps less than once a batch): the gradients summed so far are in no checkpoint, so a
            # save or a stop here would lose them. Both wait for the batch that steps (the same batch in
            # every process: they count the same steps).
            return
        step_due = self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0
        if trainer.world_size == 1:
            if agreement_due:  # one process agrees with itself: only the divergence check and its timing
                self._agree_on_signal_and_time(trainer)
            if self.signal_received:
                self._stop_mid_epoch(trainer)
            elif step_due or self._minutes_passed(time.monotonic()):
                self.save_last(trainer)
            return
        # Between agreement steps a process acts on nothing only it knows: its own signal flag would
        # take it into a save that the others do not join.
        agreed = not is_distributed() or agreement_due
        time_due = self._agree_on_signal_and_time(trainer) if agreed else False
        if agreed and self.stop_agreed:
            self._stop_mid_epoch(trainer)
        elif step_due or time_due:
            self.save_last(trainer)

    def _minutes_passed(self, now: float) -> bool:
        return self.every_n_minutes is not None and now - self._last_save_time >= 60 * self.every_n_minutes

    def _agree_on_signal_and_time(self, trainer: pl.Trainer) -> bool:
        """Share the signal flag, rank 0's timer verdict and the loss watch; set the next agreement step.

        True: a timed save is due. Raises TrainingDiverged (in every process) when the loss diverged.
        """
        now, step = time.monotonic(), trainer.global_step
        time_due = trainer.is_global_zero and self._minutes_passed(now)  # rank 0's clock decides for all
        steps_until_next = 0
        if trainer.is_global_zero:
            since_time, since_step = self._last_agreement
            seconds_per_step = (now - since_time) / max(step - since_step, 1)
            steps_until_next = round(AGREE_EVERY_SECONDS / max(seconds_per_step, 1e-6))
            steps_until_next = min(max(steps_until_next, 1), MAX_STEPS_BETWEEN_AGREEMENTS)
        self._last_agreement = (now, step)
        signal_received, time_due, steps_until_next, diverged_steps = agree_max(
            trainer, self.signal_received, time_due, steps_until_next, self.loss_watch.streak_beyond_tolerance()
        )
        self._refuse_diverged_loss(trainer, diverged_steps)
        # Every process acts on the agreed value; its own flag is left as the handler set it, so a
        # signal that arrived during the collective counts at the next agreement, not never.
        self.stop_agreed = bool(signal_received)
        self._next_agreement_step = step + steps_until_next
        return bool(time_due)

    def _agree_on_divergence(self, trainer: pl.Trainer) -> None:
        (diverged_steps,) = agree_max(trainer, self.loss_watch.streak_beyond_tolerance())
        self._refuse_diverged_loss(trainer, diverged_steps)

    def _refuse_diverged_loss(self, trainer: pl.Trainer, diverged_steps: int) -> None:
        if diverged_steps:
            first_step = trainer.global_step - diverged_steps + 1
            raise TrainingDiverged(diverged_loss_message(first_step, trainer.global_step, trainer.current_epoch + 1))

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._saving_allowed(trainer):
            return
        (signal_received,) = agree_max(trainer, self.signal_received)
        self.stop_agreed = bool(signal_received)  # the agreed value; the own flag stays (see above)
        if self.stop_agreed and not self.stopped_by_signal:
            self._stop_for_signal(trainer)
        else:
            self.save_last(trainer)

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        if self._saving_allowed(trainer) and not trainer.interrupted and not self.stopped_by_signal:
            self._save_final(trainer)

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        # Restored at its end, the run skipped the fit loop and on_train_end (see the module's docstring).
        if self.wrote_final or self.stopped_by_signal or trainer.interrupted or not self._saving_allowed(trainer):
            return
        if trainer.fit_loop.done:
            self.restored_at_end = True
            self._save_final(trainer)

    def _save_final(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.dirpath / FINAL_CHECKPOINT, weights_only=False)
        self.wrote_final = True  # the run is finished (every rank: the save is collective)

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # The signal stop sets should_stop only after its own save: this notes early stopping and the like.
        checkpoint[TRAINING_ENDED_KEY] = bool(trainer.should_stop) and not self.stopped_by_signal

    @override
    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if checkpoint.get(TRAINING_ENDED_KEY) and not self.starts_another_run:
            trainer.should_stop = True  # the fit loop is then done: on_fit_end writes final.ckpt

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if is_distributed():
            return  # a save is a collective: the other processes are not there to join it
        if isinstance(exception, TrainingDiverged | RunTakenOver):
            return  # the weights are non-finite, or the run is another process's now
        if storage_error(exception) is not None:
            return  # the disk refused a write: another one would fail too and bury the message
        if self._saving_allowed(trainer) and trainer.global_step > 0:
            try:
                trainer.save_checkpoint(self.dirpath / ON_EXCEPTION_CHECKPOINT, weights_only=False)
            except Exception as failed:  # noqa: BLE001 - a post-mortem aid must not hide the error itself
                print(f"(no on_exception.ckpt: {type(failed).__name__}: {failed})", file=sys.stderr)
