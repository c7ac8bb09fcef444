"""Log per-step values only when they will be written. Managed by the copier-lightning template.

Each `self.log(name, tensor)` costs about 0.7 ms of Python on a CPU (Lightning re-homes its result
record on every call), more than a small model's whole training step. Lightning writes step values
to the logger only every `Trainer(log_every_n_steps)` steps, so logging on the other steps is
wasted work: guard per-step logs with `if at_log_interval(self): self.log(...)`.

Lightning decides with a counter of its training loop that has no public name: the batches after
which an optimizer stepped (once per batch, however many optimizers). It equals `global_step`
under automatic optimization (one optimizer; accumulated batches count once) and the batch index
across epochs under manual optimization, where `global_step` counts every optimizer's step and
would skip the logs of a model with two optimizers. While gradients accumulate Lightning writes
no step values at all. tests/test_logging_interval.py holds this against Lightning's own decision.
"""

from __future__ import annotations

import lightning.pytorch as pl


def at_log_interval(module: pl.LightningModule) -> bool:
    """True on the training steps whose logged values Lightning writes to the logger."""
    try:
        trainer = module.trainer
    except RuntimeError:  # a module used without a Trainer (e.g. in a test): log as asked
        return True
    if trainer is None or not trainer.training:
        return True
    if trainer.accumulate_grad_batches > 1 and not _optimizer_steps_now(trainer):
        return False  # Lightning writes no step values while gradients accumulate
    interval = max(int(trainer.log_every_n_steps), 1)
    stepped = trainer.global_step if module.automatic_optimization else trainer.fit_loop.total_batch_idx
    # Lightning writes when (batches that stepped + 1) is a multiple of the interval.
    return (stepped + 1) % interval == 0


def _optimizer_steps_now(trainer: pl.Trainer) -> bool:
    """Whether this batch ends an accumulation: every k-th batch of an epoch, and its last one."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    ready = progress.current.ready  # this batch's number in the epoch, from 1
    last = progress.is_last_batch or ready == trainer.num_training_batches
    return last or ready % trainer.accumulate_grad_batches == 0
