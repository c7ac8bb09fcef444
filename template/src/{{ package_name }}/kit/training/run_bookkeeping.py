"""What `fit` tells its run directory besides the checkpoint files. Managed by the copier-lightning template.

- `StampMonitoredValue` writes the monitored metric's current value into every checkpoint, so that
  the checkpoint says how good it is (the manifest entry copies it; kit/runs/checkpoint_io.py).
- `MonitoredMetricCheck` stops `fit` at the first validation (the sanity check, before any
  training) when the model does not log the metric that checkpoints and early stopping follow,
  with the metrics it does log: a regression model under the classification default `val/acc`.
- `RunFailureRecorder` marks the run `failed` (manifest and record) when an error ends `fit`,
  instead of leaving `running`.
Both act on what every process has (the metric is synchronised by `self.log`), and only rank 0
writes: Lightning saves checkpoints on rank 0, and the failure is recorded there.
"""

from __future__ import annotations

import contextlib
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from ..runs.directory import MONITORED_VALUE_KEY, RunDirectory
from ..runs.record import finish_record


class StampMonitoredValue(Callback):
    """Puts `trainer.callback_metrics[monitor]` into each checkpoint under MONITORED_VALUE_KEY."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        checkpoint[MONITORED_VALUE_KEY] = float(value) if value is not None else None


class MissingMonitoredMetric(ValueError):
    """The model's validation does not log `checkpointing.monitor`."""


class MonitoredMetricCheck(Callback):
    """Refuses a monitored metric that validation does not log, at the first validation."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.checked = False

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)  # with num_sanity_val_steps=0, the first real validation

    def _check(self, trainer: Trainer) -> None:
        if self.checked:
            return
        self.checked = True
        logged = sorted(name for name in trainer.callback_metrics if not name.startswith("train"))
        if self.monitor not in trainer.callback_metrics:
            raise MissingMonitoredMetric(
                f"checkpointing.monitor is {self.monitor!r}, which validation does not log "
                f"(it logs: {', '.join(logged) or 'nothing'}). Checkpoints and early stopping follow that metric: "
                f"set checkpointing.monitor to one of these in configs/default.yaml, with checkpointing.mode "
                f"(min for a loss or an error, max for an accuracy)."
            )


class RunFailureRecorder(Callback):
    """Marks the run `failed` in its manifest when an error ends `fit` (rank 0)."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and self.run.manifest_path.exists():
            error = f"{type(exception).__name__}: {exception}".strip().splitlines()[0][:300]
            with contextlib.suppress(OSError):  # a full disk may refuse this write too
                self.run.set_status("failed", error=error, step=trainer.global_step)
                finish_record(self.run.path, {}, "failed", error=error)
