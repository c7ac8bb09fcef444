"""Callbacks that check that a run resumes exactly. Managed by the copier-lightning template.

Add them to a config (trainer.callbacks) to test resumption on your own model:
* `KillAt` kills the training process with SIGKILL at a chosen point, once: it leaves a marker
  file behind, so re-running the same command (same config) resumes instead of dying again.
* `RecordBatches` appends one JSON line per training batch: epoch, batch index, global step and a
  fingerprint of every example in the batch, so a test can check that each example is seen exactly
  once per epoch across a crash and a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch


class KillAt(pl.Callback):
    """SIGKILL this process once, at `hook` of the batch reaching `global_step` (or at any `hook` in `epoch`)."""

    def __init__(
        self,
        marker_file: str,
        hook: Literal["train_batch_end", "validation_start", "train_epoch_end"] = "train_batch_end",
        global_step: int | None = None,
        epoch: int | None = None,
    ) -> None:
        self.marker_file = Path(marker_file)
        self.hook = hook
        self.global_step = global_step
        self.epoch = epoch

    def _maybe_kill(self, trainer: pl.Trainer, hook: str) -> None:
        if hook != self.hook or trainer.sanity_checking or self.marker_file.exists():
            return
        if self.global_step is not None and trainer.global_step != self.global_step:
            return
        if self.epoch is not None and trainer.current_epoch != self.epoch:
            return
        self.marker_file.parent.mkdir(parents=True, exist_ok=True)
        self.marker_file.write_text(f"killed at {hook}, epoch {trainer.current_epoch}, step {trainer.global_step}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_kill(trainer, "train_batch_end")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._maybe_kill(trainer, "validation_start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._maybe_kill(trainer, "train_epoch_end")


def example_fingerprint(*tensors: torch.Tensor) -> str:
    """A short hash of one example's tensors (e.g. image and label)."""
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class RecordBatches(pl.Callback):
    """Append every training batch's position and example fingerprints to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        columns = batch if isinstance(batch, list | tuple) else [batch]
        fingerprints = [example_fingerprint(*(column[i] for column in columns)) for i in range(len(columns[0]))]
        record = {
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "global_step": trainer.global_step,
            "pid": os.getpid(),
            "examples": fingerprints,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record) + "\n")
