"""A Trainer for a quick check or measurement, without a run's machinery. Managed by the copier-lightning template.

The sanity checks, the LR and batch-size finders and the memory profile each train a few steps to
learn one thing. None of them should write logs, checkpoints, a model summary or progress bars, or
become a run: this is the one place that says so.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from .quiet_output import quiet_lightning_chatter

SCRATCH_SETTINGS = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def scratch_trainer(**settings: Any) -> pl.Trainer:
    """`pl.Trainer` with SCRATCH_SETTINGS, updated by `settings` (e.g. `max_steps=20`, `accelerator="auto"`)."""
    quiet_lightning_chatter()
    return pl.Trainer(**{**SCRATCH_SETTINGS, **settings})
