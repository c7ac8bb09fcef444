"""Compute preprocessed features once; reuse them until an input changes.

Managed by the copier-lightning template. `cached_features(transform, raw_files, params, cache_dir)`
returns `transform(raw_files, **params)`, stored in `cache_dir/<transform>-<key>.pt` where the key
hashes the raw files' bytes, the source code of the transform's module and the parameters: change
any of them and the key changes (a miss, recomputed); change none and the stored result is loaded
(a hit). Results are written atomically, so an interrupted write never leaves an entry that a later
run would load; the temporary file of a write killed outright is removed by the next miss on this
host (kit/runs/atomic_files.py, `remove_leftovers_of_dead_writers`). File hashes are remembered by
(size, modification time) so that an unchanged large raw file is not read again.

`cached_directory(build, raw_files, params, cache_dir)` is the same for a result too large to hold
in memory (packed shards, kit/data/shards.py): `build(raw_files, directory, **params)` writes the
directory `cache_dir/<build>-<key>/` (atomically: staged beside it and renamed, as `pack_shards`
does), and a later call with the same inputs returns its path without building it again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..base.file_hashes import file_sha256
from ..runs.atomic_files import atomic_write_text, remove_leftovers_of_dead_writers
from ..runs.checkpoint_io import atomic_torch_save

HASH_MEMO = ".file-hashes.json"


@dataclass
class CacheResult:
    value: Any
    key: str
    hit: bool
    path: Path


def cache_key(
    transform: Callable, raw_files: list[Path], params: dict[str, Any], memo: dict[str, dict] | None = None
) -> str:
    """Hash of the raw files' contents, the transform's module source and the parameters."""
    missing = [str(path) for path in raw_files if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"raw input file(s) missing: {', '.join(missing)}")
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in raw_files):
        digest.update(f"{path.name}:{file_sha256(path, memo)}\n".encode())
    digest.update(inspect.getsource(inspect.getmodule(transform)).encode())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


@contextmanager
def remembered_hashes(memo_path: Path) -> Iterator[dict[str, dict]]:
    """The file-hash memo kept in `memo_path` (for file_sha256), written back when the block ends."""
    memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
    yield memo
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(memo_path, json.dumps(memo, indent=1))


def remembered_cache_key(
    transform: Callable[..., Any], raw_files: list[Path], params: dict[str, Any], cache_dir: Path
) -> str:
    """cache_key, with the raw files' hashes remembered in cache_dir between calls and runs."""
    with remembered_hashes(cache_dir / HASH_MEMO) as memo:
        return cache_key(transform, raw_files, params, memo)


def cached_features(
    transform: Callable[..., Any], raw_files: list[Path], params: dict[str, Any], cache_dir: Path
) -> CacheResult:
    key = remembered_cache_key(transform, raw_files, params, cache_dir)
    path = cache_dir / f"{transform.__name__}-{key}.pt"
    if path.exists():
        try:
            return CacheResult(torch.load(path, weights_only=True), key, True, path)
        except Exception:  # noqa: BLE001 - an unreadable entry is recomputed, never used
            path.unlink()
    value = transform(raw_files, **params)
    remove_leftovers_of_dead_writers(cache_dir)  # a feature file's worth of disk per write killed outright
    atomic_torch_save(value, path)
    return CacheResult(value, key, False, path)


def cached_directory(
    build: Callable[..., Any], raw_files: list[Path], params: dict[str, Any], cache_dir: Path
) -> CacheResult:
    """`build(raw_files, directory, **params)` once per key; value and path: the directory it wrote."""
    key = remembered_cache_key(build, raw_files, params, cache_dir)
    directory = cache_dir / f"{build.__name__}-{key}"
    if directory.is_dir():  # builders rename a complete directory into place: present means complete
        return CacheResult(directory, key, True, directory)
    build(raw_files, directory, **params)
    return CacheResult(directory, key, False, directory)
