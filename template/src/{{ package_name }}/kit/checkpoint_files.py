"""Find the checkpoint to resume from. Managed by the copier-lightning template.

The newest checkpoint is the one with the highest stored global step, not the newest file time
(copies and restores change file times). A file that cannot be read is moved aside, not deleted,
with a warning naming it, and the next one is tried.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKPOINT_SUFFIX = ".ckpt"
QUARANTINE_DIRNAME = "unreadable"
# At equal global steps prefer the rolling checkpoint: it is written at a batch or epoch boundary,
# while an on-exception checkpoint may hold a half-finished step.
KIND_PREFERENCE = {"last": 3, "final": 3, "previous": 2, "best": 1, "on_exception": 0}


class UnreadableCheckpointWarning(UserWarning):
    """A checkpoint file could not be read and was moved aside."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    global_step: int
    epoch: int

    @property
    def kind(self) -> str:
        return checkpoint_kind(self.path)


def checkpoint_kind(path: Path) -> str:
    """Classify a checkpoint by its file name: last, previous, best, final or on_exception."""
    stem = path.name.removesuffix(CHECKPOINT_SUFFIX)
    if stem in KIND_PREFERENCE:
        return stem
    return "best"


def read_checkpoint_info(path: Path) -> CheckpointInfo:
    """Read the step counters of a checkpoint; raises if the file is truncated or corrupt."""
    # mmap reads the archive index and the small entries, not every tensor: cheap on big files,
    # and a truncated zip archive still fails here because its index sits at the end.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return CheckpointInfo(path=path, global_step=int(checkpoint["global_step"]), epoch=int(checkpoint["epoch"]))


def move_aside(path: Path) -> Path:
    """Move an unreadable checkpoint into `<dir>/unreadable/` and return its new path."""
    quarantine = path.parent / QUARANTINE_DIRNAME
    quarantine.mkdir(exist_ok=True)
    target = quarantine / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    path.replace(target)
    return target


def readable_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """All readable checkpoints in `directory`; unreadable ones are moved aside with a warning."""
    found = []
    for path in sorted(directory.glob(f"*{CHECKPOINT_SUFFIX}")):
        try:
            found.append(read_checkpoint_info(path))
        except Exception as error:  # noqa: BLE001 - any failure to read means "do not resume from it"
            moved_to = move_aside(path)
            warnings.warn(
                f"Checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                f"moved it to {moved_to} and resuming from the previous checkpoint instead.",
                UnreadableCheckpointWarning,
                stacklevel=2,
            )
    return found


def newest_checkpoint(directory: Path) -> CheckpointInfo | None:
    """The checkpoint to resume from: highest global step, then the preferred kind; None if none."""
    if not directory.is_dir():
        return None
    candidates = readable_checkpoints(directory)
    if not candidates:
        return None
    return max(candidates, key=lambda info: (info.global_step, KIND_PREFERENCE[info.kind]))
