"""A DataModule for data that does not fit in memory: packed once into shards, read memory-mapped.

Managed by the copier-lightning template. Subclass `ShardedDataModule` for your own large data set
and define three things, as the many-files example (kit/data/many_files_example.py) does:
- `raw_files()`: the raw input paths (their bytes are part of the cache key);
- `fetch_raw()`: get them (download, copy, generate) when missing;
- `pack(raw_files, directory)`: write them as shards with `pack_shards`, with a `split` column
  (0 train, 1 validation, 2 test) and any other per-row column you may want to filter on.
Packing is the project's cached preprocessing step: `<package> data prepare` (or the first `fit`)
packs into `data/processed/<pack>-<key>/`, and later runs find it there until the raw files, the
packing code or its parameters change. The splits are `ShardDataset`s filtered by `split` (and by
`where`, e.g. `{"day": [0, 1]}`): only their rows and shards are read. Loading settings come from
`loader` (kit/data/loader_settings.py: workers from the CPUs SLURM gives, pinned memory on a GPU).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from .loader_settings import LoaderSettings
from .preprocessing_cache import CacheResult, cached_directory, remembered_cache_key
from .resumable_loader import ResumableDataLoader
from .shards import ShardDataset
from .worker_processes import end_with_parent

SPLITS = {"train": 0, "val": 1, "test": 2}


class ShardedDataModule(pl.LightningDataModule):
    """Training, validation and test splits read from packed shards (see the module's docstring)."""

    fields = ("inputs", "targets")

    def __init__(
        self,
        batch_size: int = 256,
        loader: LoaderSettings | None = None,
        where: dict | None = None,
        shuffle_seed: int | None = None,
        data_dir: str = "data",
    ) -> None:
        """where: keep only rows whose columns have these values ({column: value or list}), in every split.
        shuffle_seed: the training order's seed; None follows the run's seed_everything."""
        super().__init__()
        # Every __init__ argument along the subclass chain (the cards and `find-batch-size` read them);
        # not the loader settings: checkpoints keep plain values only (they load with weights_only).
        self.save_hyperparameters(ignore=["loader"])
        self.batch_size = batch_size
        self.loader = loader or LoaderSettings()
        self.where = dict(where or {})
        self.shuffle_seed = shuffle_seed
        self.data_dir = Path(data_dir)
        self.splits: dict[str, ShardDataset] = {}

    # -- what a subclass defines -----------------------------------------------------------------
    def raw_files(self) -> list[Path]:
        raise NotImplementedError("a ShardedDataModule names its raw files in raw_files()")

    def fetch_raw(self) -> None:
        """Get the raw files when missing (nothing to do when they are always there)."""

    def pack(self, raw_files: list[Path], directory: Path, **params) -> None:
        """Write `raw_files` as shards into `directory` (with pack_shards); `params`: pack_params()."""
        raise NotImplementedError("a ShardedDataModule packs its raw files with pack_shards in pack()")

    def pack_params(self) -> dict:
        """Parameters of the packing (e.g. rows per shard): a change means a new set of shards."""
        return {}

    # -- packing, cached: the key covers the raw files' bytes, the source of the module that defines
    # -- `pack` (the subclass's) and pack_params() ------------------------------------------------
    def prepare_features(self) -> CacheResult:
        """Pack the raw files into shards, or find them packed (`data prepare` runs this)."""
        self.fetch_raw()
        return cached_directory(self.pack, self.raw_files(), self.pack_params(), self._cache_dir())

    def data_fingerprint(self) -> str:
        self.fetch_raw()
        return remembered_cache_key(self.pack, self.raw_files(), self.pack_params(), self._cache_dir())

    def _cache_dir(self) -> Path:
        return self.data_dir / "processed"

    # -- Lightning hooks -------------------------------------------------------------------------
    @override
    def prepare_data(self) -> None:
        self.prepare_features()

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        directory = self.prepare_features().value
        for name, number in SPLITS.items():
            self.splits[name] = ShardDataset(directory, self.fields, where={**self.where, "split": number})

    @override
    def train_dataloader(self) -> ResumableDataLoader:
        seed = self.shuffle_seed if self.shuffle_seed is not None else torch.initial_seed() % 2**31
        return ResumableDataLoader(
            self.splits["train"], batch_size=self.batch_size, seed=seed, **self.loader.dataloader_options()
        )

    def _evaluation_loader(self, split: str) -> DataLoader:
        options = self.loader.dataloader_options()
        return DataLoader(
            self.splits[split], batch_size=4 * self.batch_size, worker_init_fn=end_with_parent(), **options
        )

    @override
    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    @override
    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")
