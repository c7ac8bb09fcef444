"""Data-loading settings that matter, with defaults chosen from the machine. Managed by the copier-lightning template.

`LoaderSettings` is what a data module's config exposes (`data.init_args.loader.num_workers: 4`);
`dataloader_options()` turns it into DataLoader keyword arguments:
- `num_workers`: None picks one less than the CPUs this job may use (SLURM's allocation, not the
  node's count: 64 workers on a node where the job has 8 CPUs thrash), at most MAX_AUTO_WORKERS;
- `pin_memory`: None pins when a CUDA GPU is present (a pinned batch is copied to the GPU without
  a staging copy); on a CPU-only machine pinning costs and gives nothing;
- `persistent_workers`: off by default. Kept across epochs, a worker's random state runs on from
  epoch to epoch, so after a resume (fresh workers) a random augmentation in a worker would draw
  other numbers than the uninterrupted run: exact resume holds with it only when workers draw no
  random numbers. Worth turning on for short epochs with many workers and deterministic loading;
- `prefetch_factor`: batches each worker prepares ahead (PyTorch's default 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    """The CPUs this process may use: SLURM's allocation, else this process's affinity, not the node's count."""
    for variable in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def automatic_num_workers() -> int:
    """One CPU for the training process, the rest (up to MAX_AUTO_WORKERS) for loading."""
    return min(max(available_cpus() - 1, 0), MAX_AUTO_WORKERS)


@dataclass
class LoaderSettings:
    """How batches are loaded. None: chosen from the machine (see the module's docstring)."""

    num_workers: int | None = None
    pin_memory: bool | None = None
    persistent_workers: bool = False
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more (or null: chosen from the CPUs), got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be 1 or more, got {self.prefetch_factor}")

    def dataloader_options(self) -> dict[str, Any]:
        """Keyword arguments for a DataLoader (and ResumableDataLoader)."""
        import torch

        workers = automatic_num_workers() if self.num_workers is None else self.num_workers
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        options: dict[str, Any] = {"num_workers": workers, "pin_memory": pin}
        if workers > 0:  # DataLoader refuses these without workers
            options |= {"persistent_workers": self.persistent_workers, "prefetch_factor": self.prefetch_factor}
        return options
