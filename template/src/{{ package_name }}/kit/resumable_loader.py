"""A training DataLoader that resumes mid-epoch exactly. Managed by the copier-lightning template.

Lightning checkpoints the position of a DataLoader that has `state_dict`/`load_state_dict`, but a
plain DataLoader draws its shuffle from the global RNG and restarts every epoch from batch 0. Here:

* the order of epoch `e` is a permutation that depends only on (seed, e), never on the global RNG;
* the loader records how many batches it handed out, so a resumed run starts at the next one;
* the iterator is created at the first batch, not earlier: Lightning creates it before it tells
  the sampler the epoch, which with worker processes replays epoch 0's order after a resume
  (Lightning issue 21938); creating it late sidesteps that;
* worker seeds come from the loader's own generator, re-seeded per epoch, so they do not depend on
  how many random numbers anything else drew.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


def _process_rank_and_count() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSeededSampler(Sampler[int]):
    """Yields dataset indices in an order fixed by (seed, epoch), starting at `start`.

    With several processes (DDP) each process takes every world_size-th index of the same order.
    """

    def __init__(self, dataset_size: int, seed: int, shuffle: bool = True) -> None:
        self.dataset_size = dataset_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; a new epoch starts from its first index."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.start = 0

    def epoch_order(self) -> list[int]:
        """This process's indices for the current epoch, in order, from the first one."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        rank, world_size = _process_rank_and_count()
        return order[rank::world_size]

    def __len__(self) -> int:
        _, world_size = _process_rank_and_count()
        return len(range(0, self.dataset_size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.start :])


class ResumableDataLoader(DataLoader):
    """DataLoader for training whose position and order survive a restart.

    Use it in `train_dataloader()` in place of `DataLoader(..., shuffle=True)`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True, **kwargs: Any) -> None:
        for forbidden in ("sampler", "batch_sampler", "generator"):
            if kwargs.get(forbidden) is not None:
                raise ValueError(f"ResumableDataLoader sets its own {forbidden}; do not pass one.")
        kwargs.pop("sampler", None)
        kwargs.pop("batch_sampler", None)
        kwargs.pop("generator", None)
        self.resumable_sampler = EpochSeededSampler(len(dataset), seed=seed, shuffle=shuffle)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=self.resumable_sampler,
            generator=torch.Generator(),
            **kwargs,
        )
        self.seed = seed
        self.batches_yielded = 0
        # Set by the exact-resume callback: runs once, right before the first batch is fetched.
        self.before_first_batch: Callable[[], None] | None = None

    def __iter__(self) -> Iterator[Any]:
        return self._iterate_from_current_position()

    def _iterate_from_current_position(self) -> Iterator[Any]:
        # A generator: none of this runs until the training loop asks for the first batch.
        if self.before_first_batch is not None:
            hook, self.before_first_batch = self.before_first_batch, None
            hook()
        sampler = self.resumable_sampler
        self.generator.manual_seed(self.seed + 7_919 * sampler.epoch)
        self.batches_yielded = sampler.start // self.batch_size
        for batch in super().__iter__():
            self.batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.resumable_sampler.epoch, "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resumable_sampler.epoch = int(state["epoch"])
        self.resumable_sampler.start = int(state["batches_yielded"]) * self.batch_size
