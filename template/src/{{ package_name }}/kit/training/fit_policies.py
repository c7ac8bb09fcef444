"""`fit`'s own options beside the Trainer's, and automatic precision. Managed by the copier-lightning template.

Automatic precision is chosen for the machine of a run's first start and then kept by the run
(lightning_cli.py): a job requeued onto another kind of GPU, or a run resumed on a CPU, does not
change its arithmetic half-way.

`checkpointing.*` and `early_stopping.*` in a config or on the command line fill these dataclasses
(LightningCLI reads their fields and docstrings for `--help`); lightning_cli.py turns them into
callbacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..runs.identity import AUTO


@dataclass
class CheckpointPolicy:
    """When checkpoints are written during `fit`.

    every_n_steps: rewrite runs/<run>/checkpoints/last.ckpt every this many optimizer steps (null: never by steps).
    every_n_minutes: ... and whenever this many minutes passed since the last write (null: never by time).
    save_top_k: keep this many best checkpoints by `monitor`.
    monitor: the validation metric that ranks checkpoints; auto: chosen at the first validation from what it
        logs (a score such as val/acc, else val/loss; kit/training/monitor_choice.py); null, for a model whose
        validation logs no metric: no best checkpoints and no early stopping; evaluation and export use final.ckpt.
    mode: "max" if a higher `monitor` is better, "min" if lower is better; auto: from the metric's name.
    """

    every_n_steps: int | None = None
    every_n_minutes: float | None = 5.0
    save_top_k: int = 2
    monitor: str | None = AUTO
    mode: Literal["min", "max", "auto"] = AUTO


# Words in a metric's name that say which way is better; a mode against them would keep the worst
# checkpoints and stop at the first improvement, silently. A negating word turns the direction
# (val/neg_loss: higher is better). A name with none of them, or with words of both kinds, is taken as given.
_HIGHER_IS_BETTER = {"acc", "accuracy", "f1", "auc", "auroc", "ap", "iou", "dice", "r2", "precision", "recall", "map"}
_LOWER_IS_BETTER = {"loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "ece"}
_NEGATING = {"neg", "negative", "minus", "inv", "inverse"}


def better_direction(monitor: str | None) -> str | None:
    """Which mode the metric's name asks for ("max" or "min"); None when the name does not say."""
    words = set(re.split(r"[^a-z0-9]+", (monitor or "").lower()))
    higher, lower = bool(words & _HIGHER_IS_BETTER), bool(words & _LOWER_IS_BETTER)
    if higher == lower:
        return None
    if words & _NEGATING:
        higher = not higher
    return "max" if higher else "min"


def refuse_a_mode_against_the_metric(monitor: str | None, mode: str) -> None:
    """ValueError when `mode` contradicts the monitored metric's name (val/acc with min, val/loss with max)."""
    if AUTO in (monitor, mode):
        return  # chosen from the name (kit/training/monitor_choice.py)
    expected = better_direction(monitor) or mode
    if mode != expected:
        better = "higher" if expected == "max" else "lower"
        raise ValueError(
            f"monitor is {monitor!r} with mode {mode!r}, but a {better} {monitor} is better: the best checkpoints "
            f"would be the worst ones. Set --checkpointing.mode={expected} (beside monitor in configs/default.yaml)."
        )


@dataclass
class EarlyStoppingPolicy:
    """Stop a run whose monitored metric (checkpointing.monitor) stopped improving.

    patience: validations without an improvement of at least min_delta before stopping (null: never stop early).
    min_delta: the smallest change that counts as an improvement.
    """

    patience: int | None = 10
    min_delta: float = 0.0


def automatic_precision(accelerator: str | None) -> str:
    """Mixed precision where it pays: bf16 on GPUs that support it, else fp16 (with a loss scaler); fp32 on CPU."""
    import torch

    if not _uses_gpu(accelerator):
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


class PrecisionUnavailable(RuntimeError):
    """A run resumes where the precision it started in cannot run."""


def refuse_a_precision_this_machine_lacks(run_name: str, precision: str, accelerator: str | None) -> None:
    """A run keeps the precision it started in (lightning_cli.py); where this machine cannot run that one
    (fp16 needs a CUDA GPU: on a CPU Lightning trains `16-mixed` in bf16 with a warning, a silent change of
    arithmetic half-way; bf16 needs a GPU that has it), the resume is refused before anything changes,
    instead of going on in other arithmetic or failing in Lightning or torch with a traceback."""
    import torch

    if precision.startswith("16") and not _uses_gpu(accelerator):
        lacks = "fp16 mixed precision needs a CUDA GPU"
    elif precision.startswith("bf16") and _uses_gpu(accelerator) and not torch.cuda.is_bf16_supported():
        lacks = f"this GPU ({torch.cuda.get_device_name()}) has no bf16"
    else:
        return
    raise PrecisionUnavailable(
        f"Run '{run_name}' trains in {precision}, the precision it started in, and {lacks}: resume it on a "
        f"machine that runs {precision} (a requeued job: a partition of such GPUs), or train a new run "
        f"here (--run_name NEW_NAME)."
    )


class NothingToTrain(ValueError):
    """`fit` settings under which no optimizer step is ever taken."""


def refuse_a_fit_that_trains_nothing(trainer) -> None:
    """Refuse trainer settings that train no step: such a run could never finish (re-running its command
    would end the same way every time), and Lightning ends it without a word, or (accumulating over
    0 batches) in a ZeroDivisionError. `trainer`: the trainer's settings (a mapping with `get`)."""
    for key, nothing in (("max_epochs", 0), ("max_steps", 0), ("limit_train_batches", 0)):
        if trainer.get(key) == nothing:  # 0 and 0.0 alike; the defaults (None, -1, 1.0) train
            raise NothingToTrain(
                f"trainer.{key}=0 trains nothing, so the run could never finish: give it more "
                "(to measure a trained run without training it: `validate` or `test`)."
            )
    accumulate = trainer.get("accumulate_grad_batches")
    if isinstance(accumulate, int) and accumulate < 1:
        raise NothingToTrain(
            f"trainer.accumulate_grad_batches={accumulate}: the optimizer steps once every that many batches, "
            "so it must be at least 1."
        )


class CheckpointsRequired(ValueError):
    """`fit` told not to write checkpoints."""


def refuse_a_fit_without_checkpoints(trainer) -> None:
    """Refuse `trainer.enable_checkpointing=false`: Lightning refuses it beside the best-k ModelCheckpoint
    that `fit` adds, naming a callback the researcher never added; and without checkpoints a run
    could neither resume nor be marked finished. Says what keeps fewer instead."""
    if trainer.get("enable_checkpointing") is False:
        raise CheckpointsRequired(
            "trainer.enable_checkpointing=false: `fit` checkpoints every run (last.ckpt to resume after a crash "
            "or a requeue, final.ckpt to mark it finished). Fewer files: checkpointing.save_top_k=0 (no best "
            "checkpoints), checkpointing.every_n_minutes=null (last.ckpt at epoch ends only)."
        )


def _uses_gpu(accelerator: str | None) -> bool:
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
