"""Store and restore every random number generator with the checkpoint.

Managed by the copier-lightning template. Lightning's checkpoints hold no RNG state, so after a
resume dropout masks and random augmentations differ from an uninterrupted run. This callback
saves the Python, NumPy, torch and CUDA generators in every checkpoint (as lists and tensors, which
`torch.load(weights_only=True)` accepts) and restores them just before the first training batch
is fetched after the resume, the same point in the sequence where they were captured.

Under DDP every process has its own generators (per-rank dropout or augmentation draw different
numbers), so a checkpoint keeps one set per global rank: each process's states are gathered to
every rank when the checkpoint is made (all ranks make it together; rank 0 writes it), and on
resume each process takes back its own. A run resumed with more processes than it was saved with
leaves the new ranks' generators as seeded (see kit/data/resumable_loader.py for when that is allowed).
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from ..data.resumable_loader import ResumableDataLoader, process_rank_and_count


def capture_rng_states() -> dict[str, Any]:
    """The state of every global generator, in a form that loads with weights_only=True."""
    version, python_state, gauss = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(python_state), gauss],
        "numpy": [bit_generator, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set every global generator to a state captured by `capture_rng_states`."""
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    bit_generator, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((bit_generator, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather_per_rank(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process's `states`, indexed by global rank (a collective: all ranks must call it)."""
    _, world_size = process_rank_and_count()
    if world_size == 1:
        return [states]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, states)
    return gathered


class RandomStateCheckpoint(pl.Callback):
    """Puts every process's RNG states into each checkpoint and restores them on resume."""

    def __init__(self) -> None:
        self._states_to_restore: dict[str, Any] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"per_rank": gather_per_rank(capture_rng_states())}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "per_rank" not in state_dict:  # written before per-rank states: one process's states
            state_dict = {"per_rank": [state_dict]}
        rank, _ = process_rank_and_count()
        saved = state_dict["per_rank"]
        self._states_to_restore = saved[rank] if rank < len(saved) else None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_before_the_next_fetch(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resumed at an epoch's end with `reload_dataloaders_every_n_epochs`, Lightning builds a new training
        # loader when the next epoch starts: the one on_train_start saw is never iterated.
        self._restore_before_the_next_fetch(trainer)

    def _restore_before_the_next_fetch(self, trainer: pl.Trainer) -> None:
        if self._states_to_restore is None:
            return
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableDataLoader):
            # Restore right before the first fetch: fetching may draw random numbers (augmentation).
            loader.before_first_batch = self._restore
        else:
            self._restore()

    def _restore(self) -> None:
        if self._states_to_restore is not None:
            restore_rng_states(self._states_to_restore)
            self._states_to_restore = None
