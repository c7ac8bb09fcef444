"""Callbacks that check that a run resumes exactly. Managed by the copier-lightning template.

Add them to a config (trainer.callbacks) to test resumption on your own model:
* `KillAt` kills the training process with SIGKILL at a chosen point, once: it leaves a marker
  file behind, so re-running the same command (same config) resumes instead of dying again. The
  points: a batch's start or end, validation's start, an epoch's end, a checkpoint save, and
  `train_end` (after the last epoch's `last.ckpt`, before `final.ckpt`); under sharded training
  also `shards_written` (this process's shard is on disk, the checkpoint not yet committed).
  Under DDP it kills every process at that point, or only the one of global rank `rank`. Other
  signals: SIGSTOP freezes the process (a stalled peer); SIGINT, SIGTERM and SIGUSR1 ask it to
  stop (a checkpoint at the next batch, then exit code 3); `whole_group` sends the signal to every
  process of the group, data-loading workers included, as a terminal's Ctrl-C does.
* `DistinctRankRandomness` gives each DDP process its own random stream (as per-rank augmentation
  does), so that a resume test notices a process that gets another's random states back.
* `LateExit` keeps one DDP process some seconds longer at the end of `fit`, as a slow GPU teardown
  does, so that a test sees whether a job script mistakes the order the processes end in for a failure.
* `RecordBatches` appends one JSON line per training batch: epoch, batch index, global step and a
  fingerprint of every example in the batch, so a test can check that each example is seen exactly
  once per epoch across a crash and a resume.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from typing_extensions import override


class KillAt(pl.Callback):
    """SIGKILL this process once, at `hook` of the batch reaching `global_step` (or at any `hook` in `epoch`).

    batch_index: the batch's position in its epoch (0 is the first), for the batch hooks: where a model
    steps several optimizers per batch (or accumulates), `global_step` does not count batches.
    """

    def __init__(
        self,
        marker_file: str,
        hook: Literal[
            "train_batch_start",
            "train_batch_end",
            "validation_start",
            "train_epoch_end",
            "save_checkpoint",
            "train_end",
            "shards_written",
        ] = "train_batch_end",
        global_step: int | None = None,
        epoch: int | None = None,
        batch_index: int | None = None,
        rank: int | None = None,
        signal: Literal["SIGKILL", "SIGSTOP", "SIGINT", "SIGTERM", "SIGUSR1"] = "SIGKILL",
        whole_group: bool = False,
    ) -> None:
        self.marker_file = Path(marker_file)
        self.hook = hook
        self.global_step = global_step
        self.epoch = epoch
        self.batch_index = batch_index
        self._current_batch_index: int | None = None
        self.rank = rank
        self.signal = signal
        self.whole_group = whole_group
        self.armed = False

    @override
    def setup(self, trainer, pl_module, stage) -> None:
        # Decided once per start: under DDP the first process to die writes the marker, and the
        # others, which reach the same point a moment later, must still die there.
        self.armed = stage == "fit" and not self.marker_file.exists()

    def _maybe_kill(self, trainer: pl.Trainer, hook: str) -> None:
        if not self.armed or hook != self.hook or trainer.sanity_checking:
            return
        if self.global_step is not None and trainer.global_step != self.global_step:
            return
        if self.epoch is not None and trainer.current_epoch != self.epoch:
            return
        if self.batch_index is not None and self._current_batch_index != self.batch_index:
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        self.marker_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.marker_file, "a") as marker:
            marker.write(
                f"{self.signal} at {hook}, epoch {trainer.current_epoch}, step {trainer.global_step}, "
                f"rank {trainer.global_rank}, pid {os.getpid()}\n"
            )
        signum = getattr(signal, self.signal)
        if self.whole_group:
            os.killpg(os.getpgid(0), signum)
        else:
            os.kill(os.getpid(), signum)

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._current_batch_index = batch_idx
        self._maybe_kill(trainer, "train_batch_start")

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._maybe_kill(trainer, "save_checkpoint")

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._current_batch_index = batch_idx
        self._maybe_kill(trainer, "train_batch_end")

    @override
    def on_validation_start(self, trainer, pl_module) -> None:
        self._maybe_kill(trainer, "validation_start")

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._current_batch_index = None  # a batch position means nothing outside the batch hooks
        self._maybe_kill(trainer, "train_epoch_end")

    def on_shards_written(self, trainer) -> None:
        """Called by sharded training (kit/training/sharded_training.py) mid-save."""
        self._maybe_kill(trainer, "shards_written")

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        # Before the kit's RollingCheckpoint (your callbacks come first): after the last epoch's
        # last.ckpt, before final.ckpt.
        self._maybe_kill(trainer, "train_end")


class LateExit(pl.Callback):
    """The process of global rank `rank` takes `seconds` longer to exit, once `fit` is over.

    The wait is at interpreter exit (atexit), where a GPU process tears down its CUDA context: past
    the training's signal handlers, so a SIGTERM then ends it as it would end a real one.
    """

    def __init__(self, rank: int = 1, seconds: float = 5.0) -> None:
        self.rank = rank
        self.seconds = seconds

    @override
    def teardown(self, trainer, pl_module, stage) -> None:
        if stage == "fit" and trainer.global_rank == self.rank:
            atexit.register(time.sleep, self.seconds)


class DistinctRankRandomness(pl.Callback):
    """Re-seed torch's generator per global rank when training starts (ranks otherwise share one seed)."""

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        # On a resume the saved states are restored after this, right before the first batch.
        torch.manual_seed(torch.initial_seed() + 1_000 * trainer.global_rank)


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

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The batch's tensors, whatever holds them: (inputs, labels), a dict of fields, or one tensor.
        fields = [batch]
        if isinstance(batch, dict | list | tuple):
            fields = list(batch.values()) if isinstance(batch, dict) else list(batch)
        columns = [field for field in fields if isinstance(field, torch.Tensor)]
        fingerprints = [example_fingerprint(*(column[i] for column in columns)) for i in range(len(columns[0]))]
        record = {
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "global_step": trainer.global_step,
            "pid": os.getpid(),
            "rank": trainer.global_rank,
            "examples": fingerprints,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record) + "\n")
