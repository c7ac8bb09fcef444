"""Files that are either complete or absent. Managed by the copier-lightning template.

Bytes go to a temporary file in the target's directory, are flushed and fsynced, and only then
renamed over the target: POSIX makes the rename atomic on one filesystem, so a crash at any moment
leaves the old file or the new one, never a mix. (Staging in $TMPDIR instead, as Lightning's own
checkpoint save does, turns the final move into a plain copy whenever /tmp is another filesystem.)
No torch import here: the light subcommands use it too.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".partial"


@contextmanager
def atomic_output(path: str | os.PathLike, before_replace: Callable[[], None] | None = None) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces `path` only if the `with` block completes.

    before_replace: runs once the new content is on disk, right before it takes `path`'s name
    (e.g. to keep the file it replaces under another name: a failed write then loses nothing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=writer_mark(path), suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        # mkstemp makes the file private (0600); a plain open() would have honoured the umask, so
        # that teammates on a shared cluster can read runs, checkpoints and lock files.
        os.chmod(descriptor, 0o666 & ~current_umask())
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def writer_mark(target: Path) -> str:
    """How this process's temporary file or staging folder for `target` starts, beside it:
    `.<name>.<host>-<pid>.`; a random part follows."""
    return f".{target.name}.{socket.gethostname()}-{os.getpid()}."


def remove_leftovers_of_dead_writers(directory: Path) -> list[Path]:
    """Remove the temporary files and staging folders (named by `writer_mark`) in `directory` whose writer
    on this host is gone; returns them. Another host's are kept (whether its process lives cannot be told
    from here), and so is one whose process id is alive again (reused after a reboot)."""
    mark = re.compile(rf"^\..+\.{re.escape(socket.gethostname())}-(\d+)\.")
    removed = []
    for path in directory.iterdir() if directory.is_dir() else ():
        writer = mark.match(path.name)
        if writer and not _process_alive(int(writer[1])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as stream:
        stream.write(text.encode())


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; set it straight back
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk; some filesystems refuse this.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
