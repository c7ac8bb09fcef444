"""Checkpoint files that are either complete or absent. Managed by the copier-lightning template.

Lightning's own save stages the file in $TMPDIR and moves it; across filesystems (node-local /tmp
versus a shared checkpoint disk) that move is a plain copy, and a kill during it leaves a truncated
checkpoint. Here every checkpoint is written with `atomic_output` (kit/runs/atomic_files.py): a
temporary file in the target directory, flushed to disk, then renamed over the target. Its
checksum is computed on the way (kit/runs/checksums.py) and handed to `before_commit` before the
rename, so that a checkpoint never has its final name without its checksum recorded.

The plugin tells the run directory itself (a `CheckpointLedger`, which RunDirectory is) about each
file: the checksum before the rename, the entry after. What the entry holds beyond the file comes
from the checkpoint (its step, epoch and monitored value), so nothing else is asked on the way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from .atomic_files import atomic_output
from .checksums import ChecksummingWriter


def atomic_torch_save(obj: Any, path: str | os.PathLike, before_commit: Callable[[str], None] | None = None) -> str:
    """torch.save `obj` to `path` so that a crash at any moment leaves the old file or the new one.

    Returns the file's checksum; `before_commit(checksum)` runs once the bytes are on disk, right
    before the file takes its name.
    """
    writer: ChecksummingWriter | None = None

    def commit() -> None:
        if before_commit is not None:
            before_commit(writer.hexdigest())

    with atomic_output(path, before_replace=commit) as stream:
        writer = ChecksummingWriter(stream)
        torch.save(obj, writer)
    return writer.hexdigest()


class CheckpointLedger(Protocol):
    """Where the checkpoints a run writes are recorded (kit/runs/directory.py's RunDirectory)."""

    def remember_checksum(self, checksum: str, global_step: int) -> None:
        """Called once the bytes are on disk, before the file takes its name."""

    def record_checkpoint(self, path: Path, checkpoint: dict[str, Any], checksum: str) -> None:
        """Called once the file has its name."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO plugin that writes every checkpoint with `atomic_torch_save`.

    Each file is entered in `ledger` (if given): its checksum before it takes its name, its entry
    after. `keep_replaced_as` names where a replaced file goes (`{"last.ckpt": "previous.ckpt"}`): it
    is moved there only once the new file is complete, so a failed write (a full disk) loses neither.
    Lightning calls the plugin on rank 0 only, so each file is written and entered once.
    """

    def __init__(
        self,
        ledger: CheckpointLedger | None = None,
        keep_replaced_as: dict[str, str] | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        """before_write: runs before each write and may refuse it by raising (the run lease: kit/runs/lease.py)."""
        self.ledger = ledger
        self.keep_replaced_as = keep_replaced_as or {}
        self.before_write = before_write

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        path = Path(path)
        if self.before_write is not None:
            self.before_write()

        def commit(checksum: str) -> None:
            if self.ledger is not None:
                self.ledger.remember_checksum(checksum, int(checkpoint.get("global_step", 0)))
            keep_as = self.keep_replaced_as.get(path.name)
            if keep_as is not None and path.exists():
                os.replace(path, path.with_name(keep_as))

        checksum = atomic_torch_save(checkpoint, path, before_commit=commit)
        if self.ledger is not None:
            self.ledger.record_checkpoint(path, checkpoint, checksum)
