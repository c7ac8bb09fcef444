"""Checkpoint files that are either complete or absent. Managed by the copier-lightning template.

Lightning's own save stages the file in $TMPDIR and moves it; across filesystems (node-local /tmp
versus a shared checkpoint disk) that move is a plain copy, and a kill during it leaves a truncated
checkpoint. Here every checkpoint is written with `atomic_output` (kit/atomic_files.py): a
temporary file in the target directory, flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .atomic_files import atomic_output


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` so that a crash at any moment leaves the old file or the new one."""
    with atomic_output(path) as stream:
        torch.save(obj, stream)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin that writes every checkpoint with `atomic_torch_save`.

    `on_saved(path, checkpoint)` is called after each complete write (the run manifest uses it).
    """

    def __init__(self, on_saved: Callable[[Path, dict], None] | None = None) -> None:
        self.on_saved = on_saved

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)
        if self.on_saved is not None:
            self.on_saved(Path(path), checkpoint)
