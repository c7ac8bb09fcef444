"""A model or data module refusing its settings or data, in one line. Managed by the copier-lightning template.

A data module's method (`prepare_data`, `setup`, `fetch_raw`, `prepare_features`, ...) or a model's
`setup` that raises ValueError (a column that is not there, a label it does not know, texts longer
than it accepts) or FileNotFoundError is telling the researcher about the data or its settings, not
about a bug in the kit: every command (`fit`, `test`, `check`, `evaluate`, `data ...`, ...) prints
its message, where it was raised (file, line, function) and exits 2, instead of fifty lines of
traceback. Any other exception keeps its traceback.

Likewise a ValueError or TypeError raised by a LightningModule's or LightningDataModule's own
`__init__` (a setting it does not accept), which jsonargparse reports wrapped in its Union errors,
seventy lines with the cause in the middle: every command that builds them prints the cause. And
optimizer settings that torch.optim refuses in the model's `configure_optimizers` (a negative learning
rate), and trainer settings that Lightning itself refuses (`devices=0`, a GPU accelerator where there is none).
"""

from __future__ import annotations

import traceback
from pathlib import Path

DATA_HOOKS = ("prepare_data", "setup")
REFUSED_TYPES = (ValueError, FileNotFoundError)


def refused_data_message(error: BaseException) -> str | None:
    """One line for a ValueError or FileNotFoundError raised inside a data module's method (prepare_data,
    setup, fetch_raw, prepare_features, ...) or a model's setup, where it checks the data it is given."""
    from lightning.pytorch import LightningDataModule, LightningModule

    if not isinstance(error, REFUSED_TYPES):
        return None
    frames = list(traceback.walk_tb(error.__traceback__))
    owner = next(
        (
            frame.f_locals["self"]
            for frame, _ in frames
            if isinstance(frame.f_locals.get("self"), LightningDataModule)
            or (frame.f_code.co_name in DATA_HOOKS and isinstance(frame.f_locals.get("self"), LightningModule))
        ),
        None,
    )
    if owner is None:
        return None
    return f"{type(owner).__name__} refused its data ({_where(frames)}): {error}"


def _where(frames: list) -> str:
    raised_at, line = frames[-1]
    return f"{Path(raised_at.f_code.co_filename).name} line {line}, in {raised_at.f_code.co_name}"


def refused_settings_message(error: BaseException) -> str | None:
    """One line for a ValueError or TypeError that a model's or data module's `__init__` raised, found in
    `error`'s chain of causes (jsonargparse wraps it)."""
    from lightning.pytorch import LightningDataModule, LightningModule

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ValueError | TypeError):
            frames = list(traceback.walk_tb(error.__traceback__))
            for frame, _ in frames:
                owner = frame.f_locals.get("self")
                if frame.f_code.co_name == "__init__" and isinstance(owner, LightningModule | LightningDataModule):
                    return f"{type(owner).__name__} refused its settings ({_where(frames)}): {error}"
        error = error.__cause__ or error.__context__
    return None


def refused_optimizer_message(error: BaseException) -> str | None:
    """One line for a ValueError raised while a model's `configure_optimizers` ran: torch.optim refusing a
    setting (a negative learning rate, betas outside [0, 1)) or the model's own check of its settings."""
    from lightning.pytorch import LightningModule

    if not isinstance(error, ValueError):
        return None
    frames = list(traceback.walk_tb(error.__traceback__))
    for frame, _ in frames:
        owner = frame.f_locals.get("self")
        if frame.f_code.co_name == "configure_optimizers" and isinstance(owner, LightningModule):
            return f"{type(owner).__name__} refused its optimizer settings ({_where(frames)}): {error}"
    return None


def refused_trainer_message(error: BaseException) -> str | None:
    """One line for trainer settings Lightning refuses: its MisconfigurationException (`devices=0`, a GPU
    accelerator on a machine without one, `max_steps=-5`, ...), or a ValueError raised in Lightning's own
    code (a `val_check_interval` beyond the epoch's batches). Lightning's message says what and why; the
    traceback in front of it is Lightning's, not the researcher's."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(error, MisconfigurationException):
        return f"the trainer's settings: {error}"
    frames = list(traceback.walk_tb(error.__traceback__))
    raised_in = Path(frames[-1][0].f_code.co_filename).parts if frames else ()
    if isinstance(error, ValueError) and "lightning" in raised_in and "pytorch" in raised_in:
        return f"the trainer's settings: {' '.join(str(error).split())}"
    return None


def checkpoint_mismatch_message(error: BaseException) -> str | None:
    """One line for a checkpoint whose weights do not fit the model built (another model class, or other
    layer sizes), found in `error`'s chain: torch lists every missing, unexpected and resized tensor."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, RuntimeError) and text.startswith("Error(s) in loading state_dict for "):
            model = text.removeprefix("Error(s) in loading state_dict for ").split(":", 1)[0]
            details = [line.strip().rstrip(".") for line in text.splitlines()[1:] if line.strip()]
            return (
                f"the checkpoint's weights do not fit {model} (another model class, or other settings): "
                f"{details[0] if details else text}{f' (and {len(details) - 1} more)' if len(details) > 1 else ''}. "
                "Build the model the checkpoint was trained with: --config runs/<run>/config.yaml holds its settings."
            )
        error = error.__cause__ or error.__context__
    return None
