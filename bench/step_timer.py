"""A callback that times the training batches of each epoch (validation and epoch-end work excluded):
wall time, and this process's CPU time (all its threads), which does not count waiting for another process.

On a GPU the timer waits for the queued GPU work at the epoch's start and after its last batch (once
an epoch each, so the steps between run as they otherwise would)."""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

# Filled by StepTimer in this process: one (seconds, steps) pair per epoch, per timer label.
EPOCH_TIMES: dict[str, list[tuple[float, int]]] = {}
# The same epochs' CPU time of this process: one (cpu seconds, steps) pair per epoch, per timer label.
EPOCH_CPU: dict[str, list[tuple[float, int]]] = {}


class StepTimer(pl.Callback):
    def __init__(self, label: str) -> None:
        self.label = label
        self._epoch_started = 0.0
        self._last_batch_ended = 0.0
        self._cpu_started = self._cpu_last_batch_ended = 0.0
        self._steps = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _wait_for_gpu(pl_module)
        self._steps = 0
        self._epoch_started = time.perf_counter()
        self._cpu_started = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps += 1
        if batch_idx + 1 == trainer.num_training_batches:
            _wait_for_gpu(pl_module)
        self._last_batch_ended = time.perf_counter()
        self._cpu_last_batch_ended = time.process_time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        EPOCH_TIMES.setdefault(self.label, []).append((self._last_batch_ended - self._epoch_started, self._steps))
        EPOCH_CPU.setdefault(self.label, []).append((self._cpu_last_batch_ended - self._cpu_started, self._steps))


def _wait_for_gpu(pl_module) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)
