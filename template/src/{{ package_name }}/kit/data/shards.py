"""Packed shards: many small samples stored as a few large numpy files, memory-mapped, random access.

Managed by the copier-lightning template.

A data set of many small files (one image per file, read over a network filesystem) starves a GPU:
each sample costs a file open. `pack_shards` writes the samples once into `directory/`:
- `shard-NNNNN.<field>.npy`, one file per field (e.g. `inputs`, `targets`) per shard of
  `rows_per_shard` rows, in numpy's own format, so that `np.load(..., mmap_mode="r")` reads any row
  without reading the rest;
- `columns.npz`: small per-row columns to filter on (a split, a label, a date), for all rows;
- `manifest.json`: rows, fields (dtype, shape), shards (rows, files, bytes, sha256), columns.
The directory is written beside its final name and renamed into place: an interrupted pack leaves
the old shards or the new ones, never a mix. The staging folder is named by its host and process
(`.<name>.<host>-<pid>.*`, kit/runs/atomic_files.py); a pack killed outright (SIGKILL, a node's
reboot) cannot remove its own, so the next pack into the same place removes those of this host whose
process is gone, instead of leaving a full copy of the data behind at each kill. Another host's are
left: whether their process lives cannot be told from here.

`ShardDataset(directory, where={"split": [0]})` is a map-style dataset (so `ResumableDataLoader`'s
epoch-seeded, resumable order works on it as on any other): it selects its rows from `columns.npz`
alone and opens only the shards that hold them (`shards_opened`, `rows_read` count what it read).
A DataLoader reads a batch through `__getitems__`: one gather per shard and field, not one lookup
per sample (bench/loader_formats.py: 1.4x the samples per second of reading row by row).
Every shard it will read is checked against its sha256 when the dataset is made (once; not again in
each data-loading worker): a truncated or damaged shard stops with one message naming it, before
anything trains on it.

Written here rather than taken from a library: numpy's .npy is the kept format (memory-mappable,
no extra dependency, nothing that could replace the pinned torch); what is added is the manifest,
the checksums and the filtering, a few dozen lines.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..base.file_hashes import file_sha256
from ..runs.atomic_files import atomic_write_text, current_umask, remove_leftovers_of_dead_writers, writer_mark

FORMAT = "numpy-shards/1"
MANIFEST = "manifest.json"
COLUMNS = "columns.npz"


class ShardError(RuntimeError):
    """Shards that cannot be used; the message names the shard or the filter."""


def pack_shards(
    directory: Path, batches: Iterable[dict[str, np.ndarray]], columns: dict[str, np.ndarray], rows_per_shard: int
) -> dict[str, Any]:
    """Write `batches` (dicts field -> array, rows first) as shards of `rows_per_shard` rows; returns the manifest.

    `columns`: per-row values to filter on, one array per column, as many rows as all batches together.
    """
    if rows_per_shard < 1:  # else the loop below writes empty shards until the disk is full
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers_of_dead_writers(directory.parent)
    staging = Path(tempfile.mkdtemp(prefix=writer_mark(directory), dir=directory.parent))
    try:
        shards, pending, fields = [], {}, {}
        for batch in batches:
            for name, values in batch.items():
                pending.setdefault(name, []).append(np.asarray(values))
                fields[name] = {"dtype": str(np.asarray(values).dtype), "shape": list(np.asarray(values).shape[1:])}
            while _rows(pending) >= rows_per_shard:
                shards.append(_write_shard(staging, len(shards), _take(pending, rows_per_shard)))
        if _rows(pending):
            shards.append(_write_shard(staging, len(shards), _take(pending, _rows(pending))))
        rows = sum(shard["rows"] for shard in shards)
        for name, values in columns.items():
            if len(values) != rows:
                raise ValueError(f"column {name!r} has {len(values)} values for {rows} rows")
        np.savez(staging / COLUMNS, **{name: np.asarray(values) for name, values in columns.items()})
        manifest = {"format": FORMAT, "rows": rows, "fields": fields, "columns": sorted(columns), "shards": shards}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _rows(pending: dict[str, list[np.ndarray]]) -> int:
    return sum(len(part) for part in next(iter(pending.values()), []))


def _take(pending: dict[str, list[np.ndarray]], count: int) -> dict[str, np.ndarray]:
    taken = {}
    for name, parts in pending.items():
        joined = np.concatenate(parts)
        taken[name], pending[name] = joined[:count], [joined[count:]]
    return taken


def _write_shard(directory: Path, number: int, fields: dict[str, np.ndarray]) -> dict[str, Any]:
    name = f"shard-{number:05d}"
    files = {}
    for field, values in fields.items():
        path = directory / f"{name}.{field}.npy"
        np.save(path, np.ascontiguousarray(values))
        files[field] = {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return {"name": name, "rows": len(next(iter(fields.values()))), "files": files}


def _replace_directory(staging: Path, directory: Path) -> None:
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; the team should read the data
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


class ShardDataset(Dataset):
    """The rows of packed shards that match `where` ({column: allowed values}); items are tuples of `fields`."""

    def __init__(self, directory: Path, fields: tuple[str, ...] = ("inputs", "targets"), where: dict | None = None):
        self.directory = Path(directory)
        try:
            self.manifest = json.loads((self.directory / MANIFEST).read_text())
        except (OSError, ValueError) as bad:
            raise ShardError(f"no readable {MANIFEST} in {self.directory}: pack the data first ({bad})") from None
        missing = [field for field in fields if field not in self.manifest["fields"]]
        if missing:
            raise ShardError(f"{self.directory} has no field {missing[0]!r}; it has {sorted(self.manifest['fields'])}")
        self.fields = fields
        self.offsets = np.cumsum([0] + [shard["rows"] for shard in self.manifest["shards"]])
        self.rows = self._select(where or {})
        # Where each selected row lives, worked out once: a sample is then two lookups and a tensor index.
        self._shard_of = np.searchsorted(self.offsets, self.rows, side="right") - 1
        self._local_row = self.rows - self.offsets[self._shard_of]
        self.shards_opened: set[str] = set()
        self.rows_read = 0
        self._open: dict[int, tuple[torch.Tensor, ...]] = {}  # per shard: its fields, as tensors ...
        self._open_arrays: dict[int, tuple[np.ndarray, ...]] = {}  # ... and as the numpy maps under them
        for number in self._shard_numbers():  # before anything trains: every shard it will read, checked once
            self._verify(number)

    def _select(self, where: dict) -> np.ndarray:
        """Global row numbers that match `where`, read from the small columns file alone."""
        if not where:
            return np.arange(self.manifest["rows"])
        with np.load(self.directory / COLUMNS) as columns:
            keep = np.ones(self.manifest["rows"], dtype=bool)
            for column, allowed in where.items():
                if column not in columns:
                    raise ShardError(f"no column {column!r} to filter on; the shards have {sorted(columns)}")
                values = np.atleast_1d(allowed)
                keep &= np.isin(columns[column], values)
            rows = np.flatnonzero(keep)
        if not len(rows):
            raise ShardError(f"the filter {where} selects no rows of {self.directory}")
        return rows

    def _shard_numbers(self) -> list[int]:
        return [int(number) for number in np.unique(self._shard_of)]

    def shards_needed(self) -> list[str]:
        return [self.manifest["shards"][number]["name"] for number in self._shard_numbers()]

    def _verify(self, number: int) -> None:
        for field in self.fields:
            entry = self.manifest["shards"][number]["files"][field]
            path = self.directory / entry["file"]
            if not path.exists() or path.stat().st_size != entry["bytes"] or file_sha256(path) != entry["sha256"]:
                raise ShardError(
                    f"shard {path} is damaged or truncated (its checksum differs from {MANIFEST}'s): nothing "
                    f"trains on it. Restore the file, or pack the data again: delete {self.directory} (a packed "
                    "cache: `data prepare` writes it anew)"
                )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        number = int(self._shard_of[index])
        tensors = self._open.get(number) or self._open_shard(number)
        local = int(self._local_row[index])
        self.rows_read += 1
        return tuple(tensor[local] for tensor in tensors)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """A whole batch (DataLoader calls this instead of one `__getitem__` per sample when it exists):
        one gather per shard and field, in numpy (torch's advanced indexing is ten times slower on
        these small rows); the samples come back in the order asked for."""
        indices = np.asarray(indices, dtype=np.int64)
        shard_of, local = self._shard_of[indices], self._local_row[indices]
        columns: list[np.ndarray] = []
        for number in np.unique(shard_of):
            arrays = self._arrays(int(number))
            positions = np.flatnonzero(shard_of == number)
            if not columns:
                columns = [np.empty((len(indices), *array.shape[1:]), dtype=array.dtype) for array in arrays]
            for column, array in zip(columns, arrays, strict=True):
                column[positions] = array[local[positions]]
        self.rows_read += len(indices)
        return list(zip(*(torch.from_numpy(column).unbind(0) for column in columns), strict=True))

    def _arrays(self, number: int) -> tuple[np.ndarray, ...]:
        if number not in self._open:
            self._open_shard(number)
        return self._open_arrays[number]

    def _open_shard(self, number: int) -> tuple[torch.Tensor, ...]:
        """The shard's fields as tensors over memory maps: rows are read from disk when first touched.

        Copy-on-write maps ("c"): writable for torch (read-only arrays make it warn), never written."""
        shard = self.manifest["shards"][number]
        arrays = tuple(np.load(self.directory / shard["files"][field]["file"], mmap_mode="c") for field in self.fields)
        self._open_arrays[number] = arrays
        self._open[number] = tuple(torch.from_numpy(array) for array in arrays)
        self.shards_opened.add(shard["name"])
        return self._open[number]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"], state["_open_arrays"] = {}, {}  # each data-loading worker maps the shards itself
        return state
