"""Progress as plain lines. Managed by the copier-lightning template.

A redrawing progress bar fills SLURM log files with carriage returns and costs time on every
step. This one prints a line at the end of each epoch (metrics included) and, within long epochs,
at most every `every_n_seconds`; per step it only counts.
"""

from __future__ import annotations

import sys
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override


class ProgressLines(ProgressBar):
    def __init__(self, every_n_seconds: float = 30.0) -> None:
        super().__init__()
        self.every_n_seconds = every_n_seconds
        self._enabled = True
        self._epoch_started = self._last_line = 0.0
        self._steps_this_epoch = 0

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    def _line(self, text: str) -> None:
        if self._enabled:
            print(text, file=sys.stdout, flush=True)

    def _metrics_text(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return "  ".join(f"{name} {_short(value)}" for name, value in metrics.items())

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start for that epoch: time it from here.
        self.on_train_epoch_start(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_started = self._last_line = time.monotonic()
        self._steps_this_epoch = 0

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps_this_epoch += 1
        now = time.monotonic()
        if now - self._last_line >= self.every_n_seconds:
            self._last_line = now
            rate = self._steps_this_epoch / max(now - self._epoch_started, 1e-9)
            self._line(
                f"epoch {trainer.current_epoch + 1}  batch {batch_idx + 1}/{self.total_train_batches}  "
                f"{rate:.1f} steps/s  {self._metrics_text(trainer, pl_module)}"
            )

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.monotonic() - self._epoch_started
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        self._line(  # counted from 1, as a person counts: the last of 3 epochs is "epoch 3/3"
            f"epoch {trainer.current_epoch + 1}/{epochs}  step {trainer.global_step}  {seconds:.2f} s  "
            f"{self._metrics_text(trainer, pl_module)}"
        )

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # the `validate` subcommand, not a fit's validation
            self._line(f"validation  {self._metrics_text(trainer, pl_module)}")


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
