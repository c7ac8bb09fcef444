"""A callback for bench/gpu_checks.py: what a run's Trainer used and held, read inside the run.

At the end of training each process writes one JSON file, `$GPU_PROBE_OUT-rank<N>.json`: the
precision the Trainer trained in (the kit chooses it when `trainer.precision` is not set), the
device and strategy, and on a GPU the allocator's peak (`max_memory_reserved`) and what the CUDA
context and libraries hold outside it (as `profile` measures both), so a check compares the run's
real peak with `profile`'s estimate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import torch


class GpuProbe(pl.Callback):
    def on_train_end(self, trainer, pl_module) -> None:
        reading = {
            "precision": str(trainer.precision),
            "device": str(pl_module.device),
            "strategy": type(trainer.strategy).__name__,
            "processes": trainer.world_size,
            "steps": trainer.global_step,
        }
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            free, total = torch.cuda.mem_get_info(pl_module.device)
            reserved = torch.cuda.memory_reserved(pl_module.device)
            reading["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(pl_module.device))
            reading["context_overhead_bytes"] = max(int(total - free - reserved), 0)
        Path(f"{os.environ['GPU_PROBE_OUT']}-rank{trainer.global_rank}.json").write_text(json.dumps(reading))
