"""Training with several processes (DDP): one decision for all, bounded waits, a clear failure.

Managed by the copier-lightning template. Under DDP every process runs the same callbacks, and
every checkpoint save is a collective (all processes build it, rank 0 writes it, all wait at a
barrier). A decision that one process takes alone (save now: its own timer; stop now: a signal
that reached it alone) leaves the others at a different collective, waiting forever. So:

* `agree_max` combines per-process values with one small all-reduce: a flag is true everywhere if
  it is true anywhere (a signal seen by any process stops them all; rank 0's timer speaks for all,
  the others pass False). Lightning's ModelCheckpoint broadcasts its timed decision for the same reason.
* `apply_collective_timeout` bounds how long a process waits for the others at any collective
  (gradient sync, barrier, decision): `distributed.timeout_minutes` in the config, 10 by default
  where Lightning's is 30. A dead or stalled process then ends the job with an error instead of
  holding its allocation, and the requeue or `supervise` can act.
* `PeerGuard` remembers where training is, so that `lost_peer_message` can turn the error torch
  raises then into a few lines (which process, at which step, waiting for what); and when the
  first process fails, it ends the processes that it launched itself (Lightning's launcher does
  that on Ctrl-C only; a frozen process would otherwise outlive the job). A stop that every process
  raises from one agreed decision (the loss diverged, the run's lease was taken, a stop signal, an
  end without final.ckpt) is not a failure of the others: they end by themselves, with the same exit
  code, and the first process waits for them (bounded) instead of killing them. Either way the
  processes leave the list that Lightning's child-process observer polls first: its next 5 s poll
  would otherwise see a child that ended with a non-zero code (its own, or -9 from the kill) and kill
  the first process too (exit -9 instead of the command's own code, a refusal's 2 included).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import subprocess
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, StrategyRegistry
from typing_extensions import override

from ..runs.lease import RunTakenOver
from .divergence import TrainingDiverged

# Raised by every process together, from one agreed decision: each process ends by itself.
AGREED_STOPS = (TrainingDiverged, RunTakenOver)
# How long the first process waits for the others to end after an agreed stop (then SIGKILL: a frozen one).
AGREED_STOP_WAIT_SECONDS = 60.0


@dataclass
class DistributedPolicy:
    """Training with several processes (trainer.devices > 1 or trainer.num_nodes > 1).

    timeout_minutes: how long a process waits for the others at a collective operation before it
        gives up with an error (a dead or stalled process then ends the job instead of hanging it).
        Leave room for the slowest checkpoint write and validation pass.
    """

    timeout_minutes: float = 10.0


def apply_collective_timeout(minutes: float) -> None:
    """Make every DDP strategy that a trainer builds from a name wait `minutes` at a collective.

    Call it before the Trainer is built. Configs usually say `strategy: ddp`, `fsdp2` or `auto` (which
    Lightning resolves to `ddp` inside the Trainer), and Lightning builds those from its public
    strategy registry: the DDP and sharded names are registered again with `timeout` added to their settings.
    A strategy written out in the config (`class_path: ...DDPStrategy`) keeps its own `timeout`
    init argument.
    """
    if minutes <= 0:
        raise ValueError(f"timeout_minutes must be positive, got {minutes}")
    timeout = dt.timedelta(minutes=minutes)
    for name in StrategyRegistry.available_strategies():
        entry = StrategyRegistry[name]
        if isinstance(entry["strategy"], type) and issubclass(entry["strategy"], DDPStrategy | ModelParallelStrategy):
            settings = {**entry["init_params"], "timeout": timeout}
            StrategyRegistry.register(
                name, entry["strategy"], description=entry["description"], override=True, **settings
            )


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree_max(trainer: pl.Trainer, *values: int) -> list[int]:
    """Each value's maximum over all processes (one collective; all ranks must call it together).

    A flag is true everywhere if it is true anywhere; a number that only rank 0 sets (the others
    pass 0) reaches every process.
    """
    if not is_distributed():
        return list(values)
    tensor = torch.tensor([int(value) for value in values], device=trainer.strategy.root_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(value) for value in tensor.tolist()]


class PeerGuard(pl.Callback):
    """Remembers the stage of training; on failure, ends the processes this one launched.

    The stage is a constant set per hook and the step is read from the trainer only when a message
    is written: this runs at every step.
    """

    stage = "starting"
    trainer: pl.Trainer | None = None
    rank, world_size = 0, 1

    @override
    def setup(self, trainer, pl_module, stage) -> None:
        PeerGuard.trainer = trainer
        PeerGuard.rank, PeerGuard.world_size = trainer.global_rank, trainer.world_size

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        PeerGuard.stage = "training"

    @override
    def on_validation_start(self, trainer, pl_module) -> None:
        PeerGuard.stage = "validation"

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        PeerGuard.stage = "saving"

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        launcher = trainer.strategy.launcher  # None when srun or torchrun started the processes
        if trainer.world_size < 2 or launcher is None or not hasattr(launcher, "kill"):
            return
        # Any other failure may be this process's alone, the others waiting at a collective: SIGKILL
        # (only processes it started; it also ends a frozen one).
        let_the_launched_processes_end(trainer, kill=not isinstance(exception, AGREED_STOPS))

    @classmethod
    def where(cls) -> str:
        trainer = cls.trainer
        if trainer is None or cls.stage == "starting":
            return "starting up (joining the other processes)"
        step, epoch = trainer.global_step, trainer.current_epoch + 1  # counted from 1, as in progress lines
        return {
            "training": f"training step {step + 1} (epoch {epoch})",
            "validation": f"validation after step {step} (epoch {epoch})",
            "saving": f"a checkpoint save at step {step}",
        }[cls.stage]


def let_the_launched_processes_end(trainer: pl.Trainer, *, kill: bool = False) -> None:
    """After an outcome every process reached together (an agreed stop, a stop signal, an unfinished end):
    wait for the processes this one launched to end by themselves, with their own exit codes.

    kill: SIGKILL them first (this process failed, perhaps alone: the others may wait for it for ever).
    """
    launcher = trainer.strategy.launcher  # None when srun or torchrun started the processes
    if trainer.world_size > 1 and isinstance(getattr(launcher, "procs", None), list):
        _wait_for_the_others_to_end(launcher.procs, AGREED_STOP_WAIT_SECONDS, kill_first=kill)


def _wait_for_the_others_to_end(started: list[subprocess.Popen], seconds: float, kill_first: bool = False) -> None:
    """Wait up to `seconds` for the processes this one started, then SIGKILL those still there.

    They leave `started` first: it is the launcher's own list, which Lightning's child-process observer
    polls, and a child's non-zero exit there makes it SIGKILL this process as well.
    """
    children = list(started)
    started.clear()
    if kill_first:
        for child in children:
            with contextlib.suppress(ProcessLookupError):  # it has ended already
                child.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + seconds
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)


# Phrases in the errors torch raises when a peer process died or did not answer in time.
_LOST_PEER_SIGNS = ("timed out", "timeout", "connection closed by peer", "connection reset", "broken pipe")


def lost_peer_message(error: BaseException) -> str | None:
    """A short explanation if `error` means another training process died or stalled, else None."""
    rank, world_size = PeerGuard.rank, PeerGuard.world_size
    text = str(error)
    if world_size < 2 or not any(sign in text.lower() for sign in _LOST_PEER_SIGNS):
        return None
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return (
        f"Training process {rank} of {world_size} stopped during {PeerGuard.where()}: it waited for the "
        f"other processes and they did not answer ({first_line[:200]}). Another process died or stalled; "
        f"its own log says why. The checkpoints are intact: re-run the same command to resume "
        f"(distributed.timeout_minutes bounds the wait)."
    )
