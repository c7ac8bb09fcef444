"""Per-batch callback hooks sent only to the callbacks that implement them. Managed by the copier-lightning template.

Lightning sends every callback hook to every callback, whether the callback implements it or not:
for each of the ten per-batch hooks below and each callback it reads the callback's state key
(ModelCheckpoint and EarlyStopping build it from their settings each time), opens a profiler
context and calls Callback's empty method. With six callbacks that is 36 calls a training step of
which 3 do something, about a fifth of what the default `fit` adds to a step over a bare Trainer
(bench/kit_calls.py). Lightning skips a hook whose attribute is not callable
(`lightning.pytorch.trainer.call._call_callback_hooks`), so a hook a callback leaves as Callback's
empty method is set to None on that instance. Nothing else changes: the callbacks, their order,
their state keys and the checkpoints they write stay as they were. Hand-written because no
library does this; tests/test_kit_calls (template repository) checks it against a real `fit`.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightning.pytorch import Callback

# The callback hooks Lightning calls once per batch (training, validation, test, predict).
PER_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def skip_idle_batch_hooks(callbacks: Iterable[Callback]) -> None:
    """Set each per-batch hook that a callback does not implement to None on that callback."""
    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook, None) is getattr(Callback, hook):
                setattr(callback, hook, None)
