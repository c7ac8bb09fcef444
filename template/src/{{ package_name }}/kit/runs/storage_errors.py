"""What a full, over-quota or read-only disk means for a run, in one line. Managed by the copier-lightning template.

Checkpoint writes are atomic (atomic_files.py), so a storage error never damages what was written
before; the message says so, names the cause first, and says how to continue.
"""

from __future__ import annotations

import errno

from .root import runs_root

# What a runs directory can say when it cannot take a file: full, over quota, read-only, not a directory.
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a path on the way is a file, not a directory",
    errno.EEXIST: "a file is in the way of a directory",
}


def storage_error(error: BaseException) -> OSError | None:
    """The OSError about storage behind `error` (torch wraps it in its own errors), or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def storage_error_message(error: BaseException) -> str | None:
    """A short explanation, cause first, if `error` comes from the runs directory's storage."""
    cause = storage_error(error)
    if cause is None:
        return None
    where = f" ({cause.filename})" if cause.filename else ""
    return (
        f"cannot write the run's files: {STORAGE_ERRNOS[cause.errno]}{where}. Checkpoints written before "
        f"are intact (each write is complete or absent). Free space or fix the path (runs go to "
        f"{runs_root()}; set RUNS_DIR to move them), then re-run the same command to resume."
    )
