"""The kit: this project's training infrastructure, managed by the copier-lightning template.

Import what your own files need from here, not from the rooms below:

    from <package>.kit import ResumableDataLoader, cached_features

These names are the kit's promise to your code (`model.py`, `data.py`, `artifacts.py`, your configs'
`class_path` lines, your own tests and subcommands): `copier update` never edits your files, so a
name listed in PUBLIC keeps working after every update, wherever the template moves its code.
`tests/test_kit_api.py` pins the list. Everything else in kit/ may change in any release.

The rooms, one concern each (docs/layout.md has the table):
  base/         no torch: file hashes, the machine, the package's name, the help cache
  runs/         a run on disk: its directory, manifest and record, checkpoint files, atomic writes
  data/         raw-data checksums (`data` command), the preprocessing cache, packed shards and
                the data module over them, the resumable loader, loader settings
  training/     what runs inside `fit`: the LightningCLI, random states, rolling checkpoints,
                DDP agreement, progress lines, the resume-testing callbacks
  diagnostics/  before a long run: sanity checks (`check`), LR and batch-size finders, `loader`
  evaluation/   a trained model measured (`evaluate`)
  experiments/  many runs: sweeps, Optuna searches, seeds and comparisons
  reporting/    reproduce (artifacts on doit), README table, dataset and model cards, the runs report
  weights/      pretrained weights from an offline cache (`weights fetch/list/verify`), pinned and recorded
  deployment/   export (ONNX, torch.export), the inference budget, `predict-files`, `serve`, `load-test`
  cluster/      SLURM jobs, the memory profile for MIG slices, supervise, doctor, the lock

Names load on first use (PEP 562 `__getattr__`), so `import <package>.kit` costs nothing and a light
subcommand that needs one room does not import Lightning through another. The same names are
imported under TYPE_CHECKING below, so that editors and type checkers see them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# name -> the module that defines it, relative to this package.
PUBLIC = {
    # for model.py
    "at_log_interval": "training.logging_interval",
    "PretrainedSource": "weights.cache",
    "save_only_trainable_weights": "weights.trainable_checkpoints",
    # for data.py
    "ResumableDataLoader": "data.resumable_loader",
    "CacheResult": "data.preprocessing_cache",
    "cached_features": "data.preprocessing_cache",
    "remembered_cache_key": "data.preprocessing_cache",
    "cached_directory": "data.preprocessing_cache",
    "ShardedDataModule": "data.sharded_data_module",
    "LoaderSettings": "data.loader_settings",
    "pack_shards": "data.shards",
    "pack_token_blocks": "data.token_blocks",
    "ShardDataset": "data.shards",
    "ManyFilesDataModule": "data.many_files_example",
    "end_with_parent": "data.worker_processes",
    # for artifacts.py
    "recorded_raw_files": "data.raw_data",
    "Artifact": "reporting.reproduce",
    "runs_root": "runs.root",
    "load_model_and_data": "training.project_loading",
    "evaluate_checkpoint": "evaluation.evaluation",
    "dataset_card": "reporting.cards",
    "model_card": "reporting.cards",
    "export_run": "deployment.export",
    # for configs (class_path) and your own tests
    "ProgressLines": "training.progress",
    "KillAt": "training.resume_testing",
    "RecordBatches": "training.resume_testing",
    "DistinctRankRandomness": "training.resume_testing",
    "run_all_checks": "diagnostics.sanity_checks",
    "RunDirectory": "runs.directory",
}
__all__ = sorted(PUBLIC)

if TYPE_CHECKING:  # what editors and type checkers see; at run time each name loads on first use
    from .data.loader_settings import LoaderSettings as LoaderSettings
    from .data.many_files_example import ManyFilesDataModule as ManyFilesDataModule
    from .data.preprocessing_cache import CacheResult as CacheResult
    from .data.preprocessing_cache import cached_directory as cached_directory
    from .data.preprocessing_cache import cached_features as cached_features
    from .data.preprocessing_cache import remembered_cache_key as remembered_cache_key
    from .data.raw_data import recorded_raw_files as recorded_raw_files
    from .data.resumable_loader import ResumableDataLoader as ResumableDataLoader
    from .data.sharded_data_module import ShardedDataModule as ShardedDataModule
    from .data.shards import ShardDataset as ShardDataset
    from .data.shards import pack_shards as pack_shards
    from .data.token_blocks import pack_token_blocks as pack_token_blocks
    from .data.worker_processes import end_with_parent as end_with_parent
    from .deployment.export import export_run as export_run
    from .diagnostics.sanity_checks import run_all_checks as run_all_checks
    from .evaluation.evaluation import evaluate_checkpoint as evaluate_checkpoint
    from .reporting.cards import dataset_card as dataset_card
    from .reporting.cards import model_card as model_card
    from .reporting.reproduce import Artifact as Artifact
    from .runs.directory import RunDirectory as RunDirectory
    from .runs.root import runs_root as runs_root
    from .training.logging_interval import at_log_interval as at_log_interval
    from .training.progress import ProgressLines as ProgressLines
    from .training.project_loading import load_model_and_data as load_model_and_data
    from .training.resume_testing import DistinctRankRandomness as DistinctRankRandomness
    from .training.resume_testing import KillAt as KillAt
    from .training.resume_testing import RecordBatches as RecordBatches
    from .weights.cache import PretrainedSource as PretrainedSource
    from .weights.trainable_checkpoints import save_only_trainable_weights as save_only_trainable_weights


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (public names: {', '.join(__all__)})")
    value = getattr(import_module(f".{PUBLIC[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
