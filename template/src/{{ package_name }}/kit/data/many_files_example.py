"""A data set that needs packing: many small files, made offline. Managed by the copier-lightning template.

`write_sample_files(directory, count)` writes `count` synthetic 8x8 "digits" (ten seeded class
prototypes plus noise; label in the file name, `0001234-7.npy`), one file per sample, as image
collections often arrive. `OneFilePerSample` reads them the slow way (a file open per sample);
`pack_sample_files` packs them once into shards (kit/data/shards.py) with `label`, `split` and
`day` columns to filter on (`day`: the samples arrived over ten days, in file order, so a few days
live in a few shards). bench/loader_formats.py compares the three ways of feeding a model on it.

`ManyFilesDataModule` trains the example model on it the fast way: `fetch_raw` writes the files
into data/raw/many-files-<count>/ (offline, seeded), `data prepare` packs them once into shards
(kit/data/sharded_data_module.py), and training reads the shards memory-mapped:
`<package> fit --config configs/experiments/many-files.yaml`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .loader_settings import LoaderSettings
from .sharded_data_module import ShardedDataModule
from .shards import pack_shards

SPLITS = {"train": 0, "val": 1, "test": 2}


def write_sample_files(directory: Path, count: int, seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, count)
    noise = rng.normal(0.0, 0.3, (count, 8, 8)).astype(np.float32)
    paths = []
    for index, (label, jitter) in enumerate(zip(labels, noise, strict=True)):
        path = directory / f"{index:07d}-{label}.npy"
        np.save(path, np.clip(prototypes[label] + jitter, 0.0, 1.0))
        paths.append(path)
    return paths


def label_of(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def split_of(index: int) -> int:
    """80 % train, 10 % validation, 10 % test, by position."""
    return 0 if index % 10 < 8 else 1 if index % 10 == 8 else 2


class OneFilePerSample(Dataset):
    """(image, label) read from its own file at every access: the way that starves a GPU."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        return torch.from_numpy(np.load(path)), torch.tensor(label_of(path))


def pack_sample_files(files: list[Path], directory: Path, rows_per_shard: int = 16384) -> dict[str, Any]:
    """Read every file once and pack them into shards, with `label` and `split` columns."""

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(files), rows_per_shard):
            chunk = files[start : start + rows_per_shard]
            yield {
                "inputs": np.stack([np.load(path) for path in chunk]),
                "targets": np.array([label_of(path) for path in chunk], dtype=np.int64),
            }

    columns = {
        "label": np.array([label_of(path) for path in files], dtype=np.int64),
        "split": np.array([split_of(index) for index in range(len(files))], dtype=np.int64),
        "day": np.arange(len(files)) * 10 // max(len(files), 1),  # the samples arrived over ten days, in order
    }
    return pack_shards(directory, batches(), columns, rows_per_shard)


class ManyFilesDataModule(ShardedDataModule):
    """`count` generated 8x8 samples of ten classes, stored one file each, trained on from packed shards."""

    def __init__(
        self,
        count: int = 100_000,
        rows_per_shard: int = 16_384,
        seed: int = 0,
        batch_size: int = 256,
        loader: LoaderSettings | None = None,
        where: dict | None = None,
        shuffle_seed: int | None = None,
        data_dir: str = "data",
    ) -> None:
        """count, seed: the generated data set; rows_per_shard: samples per shard; the rest as in
        ShardedDataModule (where: e.g. {"day": [0, 1, 2]}, the first three days' samples only)."""
        if count < 10:
            raise ValueError(f"count must be at least 10 (a tenth goes to validation and to test), got {count}")
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
        super().__init__(batch_size, loader, where, shuffle_seed, data_dir)
        self.count, self.rows_per_shard, self.seed = count, rows_per_shard, seed

    def _raw_directory(self) -> Path:
        return self.data_dir / "raw" / f"many-files-{self.count}-seed{self.seed}"

    def raw_files(self) -> list[Path]:
        return sorted(self._raw_directory().glob("*.npy"))

    def fetch_raw(self) -> None:
        """Write the files when they are not all there (into a staging folder renamed into place)."""
        target = self._raw_directory()
        if target.is_dir():
            return
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        write_sample_files(staging, self.count, self.seed)
        staging.rename(target)

    def pack(self, raw_files: list[Path], directory: Path, rows_per_shard: int) -> None:
        pack_sample_files(raw_files, directory, rows_per_shard)

    def pack_params(self) -> dict:
        return {"rows_per_shard": self.rows_per_shard}
