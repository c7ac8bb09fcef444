"""Log per-step values only when they will be written. Managed by the copier-lightning template.

Each `self.log(name, tensor)` costs about 0.7 ms of Python on a CPU (Lightning re-homes its result
record on every call), more than a small model's whole training step. Lightning writes step values
to the logger only every `Trainer(log_every_n_steps)` steps, so logging on the other steps is
wasted work: guard per-step logs with `if at_log_interval(self): self.log(...)`.

It asks the training loop's own counter (`_batches_that_stepped`, private: Lightning has no public
name for it) because that is the one Lightning's logger connector decides with; `global_step`
differs from it under manual optimization with several optimizers, and the logs would be skipped.
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
    interval = max(int(trainer.log_every_n_steps), 1)
    # Lightning writes when (batches that stepped + 1) is a multiple of the interval.
    return (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % interval == 0
