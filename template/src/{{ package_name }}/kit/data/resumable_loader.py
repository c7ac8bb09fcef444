"""A training DataLoader that resumes mid-epoch exactly, in one process or under DDP.

Managed by the copier-lightning template. Lightning checkpoints the position of a DataLoader that
has `state_dict`/`load_state_dict`, but a plain DataLoader draws its shuffle from the global RNG
and restarts every epoch from batch 0. Here:

* the order of epoch `e` is a permutation that depends only on (seed, e), never on the global RNG;
* under DDP each process takes every world_size-th index of that order. The order is first padded
  with its own first indices to a multiple of world_size, as torch's DistributedSampler does
  (drop_last=False): every process gets the same number of batches (unequal counts hang the
  first collective after the shorter process stops), and a few examples, different each epoch,
  are seen twice in an epoch rather than none skipped;
* the loader records how many batches it handed out, so a resumed run starts at the next one;
  the checkpoint also keeps the number of processes, and resuming mid-epoch with another number is
  refused (the position means a different set of examples then); at an epoch boundary it is allowed;
* the iterator is created at the first batch, not earlier: Lightning creates it before it tells
  the sampler the epoch, which with worker processes replays epoch 0's order after a resume
  (Lightning issue 21938); creating it late sidesteps that;
* worker seeds come from the loader's own generator, re-seeded per epoch, so they do not depend on
  how many random numbers anything else drew;
* worker processes ignore Ctrl-C (a terminal sends it to them too): the main process checkpoints
  and stops at the next batch, which needs its workers alive; and they end with the main process,
  even when it is killed while they start (kit/data/worker_processes.py).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .worker_processes import end_with_parent


def process_rank_and_count() -> tuple[int, int]:
    """This process's global rank and the number of training processes (0, 1 outside DDP)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class WorldSizeChangedError(ValueError):
    """A run is resumed mid-epoch with a different number of processes than it was saved with."""


class EpochSeededSampler(DistributedSampler):
    """Yields dataset indices in an order fixed by (seed, epoch), starting at `start`.

    A DistributedSampler subclass so that Lightning sees the training loader as already sharded and
    does not replace its sampler (it does so for any other sampler under DDP).
    """

    def __init__(self, dataset_size: int, seed: int, shuffle: bool = True) -> None:
        rank, world_size = process_rank_and_count()
        super().__init__(range(dataset_size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.dataset_size = dataset_size
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
        padding = self.total_size - self.dataset_size
        order += order[:padding]
        return order[self.rank : self.total_size : self.num_replicas]

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.start :])


class ResumableDataLoader(DataLoader):
    """DataLoader for training whose position and order survive a restart.

    Use it in `train_dataloader()` in place of `DataLoader(..., shuffle=True)`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True, **kwargs: Any) -> None:
        if isinstance(kwargs.get("sampler"), SequentialSampler):
            # In order, unshuffled: how Lightning rebuilds the loader for `trainer.overfit_batches`.
            shuffle = False
            del kwargs["sampler"]
        for forbidden in ("sampler", "batch_sampler", "generator"):
            if kwargs.get(forbidden) is not None:
                raise ValueError(f"ResumableDataLoader sets its own {forbidden}; do not pass one.")
        kwargs.pop("sampler", None)
        kwargs.pop("batch_sampler", None)
        kwargs.pop("generator", None)
        # Workers end with this process (kit/data/worker_processes.py), ignore Ctrl-C, then run yours.
        kwargs["worker_init_fn"] = end_with_parent(_IgnoreCtrlCThen(kwargs.get("worker_init_fn")))
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

    def batches_per_epoch(self) -> int:
        examples = len(self.resumable_sampler)
        return examples // self.batch_size if self.drop_last else math.ceil(examples / self.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.resumable_sampler.epoch,
            "batches_yielded": self.batches_yielded,
            "world_size": self.resumable_sampler.num_replicas,
            "batches_per_epoch": self.batches_per_epoch(),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        check_process_count(state, self.resumable_sampler.num_replicas)
        batches_yielded = int(state["batches_yielded"])
        if int(state.get("world_size", 1)) != self.resumable_sampler.num_replicas:
            # An epoch boundary: the epoch is either untouched or complete, whatever the number of processes.
            batches_yielded = 0 if batches_yielded == 0 else self.batches_per_epoch()
        self.resumable_sampler.epoch = int(state["epoch"])
        self.resumable_sampler.start = batches_yielded * self.batch_size


class _IgnoreCtrlCThen:
    """A worker_init_fn: ignore SIGINT in the worker, then run the user's worker_init_fn (picklable)."""

    def __init__(self, then: Callable[[int], None] | None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


def check_process_count(state: dict[str, int], processes: int) -> None:
    """Refuse a saved loader position that means other examples with `processes` training processes."""
    saved = int(state.get("world_size", 1))  # checkpoints from before DDP support: one process
    batches_yielded = int(state["batches_yielded"])
    mid_epoch = 0 < batches_yielded < int(state.get("batches_per_epoch", batches_yielded + 1))
    if saved != processes and mid_epoch:
        raise WorldSizeChangedError(
            f"The checkpoint was written mid-epoch by {saved} training process(es); this run has {processes}. "
            f"Its position in the epoch means different examples with another number of processes, so it "
            f"cannot continue exactly. Resume with {saved} process(es) (trainer.devices x trainer.num_nodes), "
            f"or start a fresh run (--run_name NEW_NAME). A checkpoint written at an epoch's end can change it."
        )
