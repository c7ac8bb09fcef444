"""What `fit` tells its run directory besides the checkpoint files. Managed by the copier-lightning template.

- `StampMonitoredValue` writes the monitored metric's current value into every checkpoint, so that
  the checkpoint says how good it is (the manifest entry copies it; kit/runs/checkpoint_io.py).
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
