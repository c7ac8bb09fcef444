"""SHA-256 of raw data files, remembered by size and modification time. Managed by the copier-lightning template.

No torch import: `data verify`, `doctor` and the preprocessing cache all use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path, memo: dict[str, dict] | None = None) -> str:
    stat = path.stat()
    remembered = (memo or {}).get(str(path.resolve()))
    if remembered and remembered["size"] == stat.st_size and remembered["mtime_ns"] == stat.st_mtime_ns:
        return remembered["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    if memo is not None:
        memo[str(path.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    return digest.hexdigest()
