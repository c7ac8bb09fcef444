"""Sharded checkpoints on disk: how to tell one, read its counters, remove it, and make one file of it.

Managed by the copier-lightning template. A sharded checkpoint (written by
kit/training/sharded_training.py) is a directory named like a checkpoint file (`last.ckpt/`) holding
torch.distributed.checkpoint's shard files and `.metadata`, the loop and callback states in
`meta.pt` (Lightning's name, which its loader reads) and the checksum of every file
(kit/runs/checksums.py). Evaluation, export and cards need one file: `consolidated_checkpoint`
makes it when first asked and keeps it under `consolidated/`, named by the sharded checkpoint's
checksum (torch's own `dcp_to_torch_save` gathers the shards).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from .atomic_files import TEMPORARY_SUFFIX
from .checkpoint_io import atomic_torch_save
from .checksums import SHARD_CHECKSUMS_FILE

METADATA_FILE = "meta.pt"
DCP_METADATA_FILE = ".metadata"
CONSOLIDATED_DIRNAME = "consolidated"


def is_sharded_checkpoint(path: str | Path) -> bool:
    return Path(path).is_dir()


def read_sharded_states(path: Path) -> dict[str, Any]:
    """The non-tensor states of a sharded checkpoint; raises if the checkpoint is incomplete."""
    for required in (DCP_METADATA_FILE, METADATA_FILE, SHARD_CHECKSUMS_FILE):
        if not (path / required).is_file():
            raise FileNotFoundError(f"incomplete sharded checkpoint: no {required}")
    return torch.load(path / METADATA_FILE, map_location="cpu", weights_only=True)


_removals: list[threading.Thread] = []


def discard(path: Path) -> None:
    """Remove a checkpoint file or directory: renamed out of the way at once, then deleted in the background.

    The rename frees the name atomically, so a kill at any moment leaves a leftover the next start
    deletes (`.<name>.*.partial`), never half a checkpoint under its name. Deleting a sharded
    checkpoint's files takes milliseconds per gigabyte-sized shard (7 ms for 26 MB here), which
    training need not wait for; the deletions still running are waited for at the next discard
    and when the process exits.
    """
    if not path.exists():
        return
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent))
    os.replace(path, doomed / path.name)
    finish_removals()
    removal = threading.Thread(target=shutil.rmtree, args=(doomed,), kwargs={"ignore_errors": True}, daemon=True)
    removal.start()
    _removals.append(removal)


@atexit.register
def finish_removals() -> None:
    """Wait for the background deletions `discard` started."""
    while _removals:
        _removals.pop().join()


def consolidated_checkpoint(sharded: Path, checksum: str) -> Path:
    """One file with the full weights and states of a sharded checkpoint (made once, then kept).

    Optimizer states are left out: the file is for evaluation, export and cards, not for resuming.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    stem = sharded.name.removesuffix(".ckpt")
    target = sharded.parent / CONSOLIDATED_DIRNAME / f"{stem}-{checksum}.ckpt"
    if target.is_file():
        return target
    target.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".", suffix=TEMPORARY_SUFFIX) as scratch:
        full = Path(scratch) / "full.pt"
        dcp_to_torch_save(sharded, full)
        tensors = torch.load(full, map_location="cpu", weights_only=True)
    checkpoint = read_sharded_states(sharded)
    checkpoint["state_dict"] = tensors["state_dict"]
    for stale in target.parent.glob(f"{stem}-*.ckpt"):
        stale.unlink()
    atomic_torch_save(checkpoint, target)
    return target
