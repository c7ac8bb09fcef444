"""A run whose loss or weights stop being finite stops, and never saves them. Managed by the copier-lightning template.

Without this, a diverged run (a learning rate far too high, a NaN in the data) trains every epoch
to the end, reports "finished" with a NaN loss, and its `last.ckpt`, `previous.ckpt` and
`final.ckpt` all hold NaN weights: the last finite state is gone. Two guards:

* **No checkpoint with non-finite weights is ever written.** `refuse_non_finite_weights` looks at
  the state dict of every checkpoint before it is written (every save passes through
  RunBookkeeping.on_save_checkpoint, in every process) and raises `TrainingDiverged` instead. Under
  DDP the weights are the same in every process, so every process decides the same, at the same
  save: no process is left waiting at a collective.
* **A non-finite loss stops the run within about half a second.** `NonFiniteLossWatch` counts, on
  the loss's own device and without waiting for it, how many steps in a row had a NaN or infinite
  loss. The count is read (which waits for the device) only where RollingCheckpoint already decides
  something: about every AGREE_EVERY_SECONDS of training and at each epoch's last batch, before
  validation. Reading it every step would make the CPU wait for the GPU at every step. Under DDP
  the processes agree on the longest streak (one small all-reduce they already make).

A mixed-precision loss scaler (`16-mixed`) skips steps whose gradients overflow on purpose, and
lowers its scale until they do not: up to TOLERATED_STEPS_WITH_SCALER non-finite losses in a row
are its business. Without a scaler a single non-finite loss is divergence (the optimizer step has
already made the weights non-finite).

The run then ends with one line (step, what to look at), is marked failed, and `fit` exits with
DIVERGED_EXIT_CODE; its checkpoints are the last finite ones, and a re-run resumes from them (and,
with the same config, diverges again at the same step: change the config first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# A loss scaler halves its scale at each overflowing step, from 2**16: twenty-odd skips reach 1.
TOLERATED_STEPS_WITH_SCALER = 25


class TrainingDiverged(RuntimeError):
    """The training loss or the weights stopped being finite."""


def non_finite_tensors(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in `state_dict` that hold a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def refuse_non_finite_weights(checkpoint: dict[str, Any], global_step: int) -> None:
    """Raise TrainingDiverged instead of letting a checkpoint with non-finite weights be written."""
    bad = non_finite_tensors(checkpoint.get("state_dict", {}))
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise TrainingDiverged(
            f"the weights are no longer finite at step {global_step} (NaN or inf in {shown}); the run stopped "
            f"without saving them (no checkpoint holds non-finite weights). {WHAT_TO_LOOK_AT}"
        )


WHAT_TO_LOOK_AT = (
    "Look at the learning rate (too high?), the batches just before that step (NaN or inf in the data?) "
    "and gradient clipping (trainer.gradient_clip_val). Re-running the same config replays the same steps: "
    "change it (a new run) to continue."
)


class NonFiniteLossWatch:
    """Steps in a row with a non-finite training loss, counted on the loss's device without a sync."""

    def __init__(self) -> None:
        self._streak: torch.Tensor | None = None
        self.tolerated_steps = 0

    def observe(self, outputs: Any) -> None:
        """Called with training_step's output at every step (a loss tensor, a dict with "loss", or None)."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return  # manual optimization may return nothing: the weight check at each save still holds
        bad = ~torch.isfinite(loss.detach())
        streak = self._streak if self._streak is not None and self._streak.device == loss.device else None
        self._streak = bad.to(torch.int64) if streak is None else (streak + 1) * bad

    def streak_beyond_tolerance(self) -> int:
        """The current streak of non-finite losses if it is longer than tolerated, else 0 (waits for the device)."""
        if self._streak is None:
            return 0
        streak = int(self._streak)
        return streak if streak > self.tolerated_steps else 0


def diverged_loss_message(first_step: int, stopped_at: int, epoch: int) -> str:
    return (
        f"the training loss is NaN or infinite since step {first_step} (epoch {epoch}); the run stopped at step "
        f"{stopped_at} without saving (no checkpoint holds non-finite weights). {WHAT_TO_LOOK_AT}"
    )
