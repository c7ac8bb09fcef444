"""`<package> loader`: is training waiting for its data? Managed by the copier-lightning template.

Three measurements of the configured model and training loader, on this machine:
1. the loader alone: batches drawn as fast as it can, samples per second;
2. the model alone: training steps (Lightning's own loop: forward, backward, optimizer step) on one
   batch kept in memory (on the GPU when there is one), steps per second;
3. both together, as training runs them: steps per second, and the share of each step spent waiting
   for the next batch.
A run that waits for data INPUT_BOUND_SHARE of the time or more is input-bound: the report names
the knobs (data-loading workers, pinned memory, packed shards instead of many small files, batch
size), with the CPUs this job may use (SLURM's allocation, not the node's count). Otherwise the
loader keeps up and speed comes from the model side, unless the steps run much slower than the
model alone although they hardly wait: then the data-loading workers take the training's CPUs (seen
on a 2-CPU machine: 1 worker made the shard example's steps 1.9-3.2x slower than 0 workers). On a
GPU it also reports the GPU's busy share (the model's time in CUDA events over the wall time).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from ..data.loader_settings import available_cpus
from ..data.shards import ShardDataset

INPUT_BOUND_SHARE = 0.2
SLOWED_SHARE = 0.6  # with loading, fewer than this share of the model-alone steps per second: slowed
MAX_BATCHES, MAX_SECONDS = 30, 10.0


@dataclass
class LoaderReport:
    samples_per_second: float  # the loader alone
    model_steps_per_second: float  # the model alone, on a batch kept in memory
    steps_per_second: float  # both, as training runs them
    waiting_share: float  # of each step, waiting for the next batch
    gpu_busy_share: float | None
    batch_size: int
    num_workers: int
    pin_memory: bool
    from_shards: bool = False  # the loader reads packed shards already

    @property
    def input_bound(self) -> bool:
        return self.waiting_share >= INPUT_BOUND_SHARE

    @property
    def slowed_by_workers(self) -> bool:
        """Not waiting, yet much slower than the model alone: the workers take the training's CPUs."""
        return self.num_workers > 0 and self.steps_per_second < SLOWED_SHARE * self.model_steps_per_second

    def verdict(self) -> str:
        cpus = available_cpus()
        if self.input_bound:
            knobs = [
                f"more data-loading workers (num_workers is {self.num_workers}; this job may use {cpus} CPUs: "
                f"try {max(1, cpus - 1)})"
                if self.num_workers < cpus - 1
                else None,
                "pinned memory (pin_memory=True) when training on a GPU" if not self.pin_memory else None,
                "data packed into a few large shard files instead of many small ones" if not self.from_shards else None,
                "decoding and augmentation done once in `data prepare` rather than per step",
                f"a larger batch (now {self.batch_size}) if the model allows",
            ]
            return f"input-bound: training waits for data {self.waiting_share:.0%} of the time. Turn: " + "; ".join(
                knob for knob in knobs if knob
            )
        if self.slowed_by_workers:
            slower = self.model_steps_per_second / self.steps_per_second
            return (
                f"slowed by its workers: training waits for data only {self.waiting_share:.0%} of the time, yet a "
                f"step takes {slower:.1f}x as long as on a batch kept in memory: the {self.num_workers} data-loading "
                f"worker(s) compete with training for this job's {cpus} CPUs. Turn: fewer workers (num_workers 0 "
                "reads packed shards in the training process), or more CPUs for the job"
            )
        return (
            f"compute-bound: the loader keeps up (waiting {self.waiting_share:.0%} of the time); speed comes from "
            "the model side: mixed precision on a GPU, a larger batch, a smaller model"
        )


class StepClock(pl.Callback):
    """Times each training step, and the wait for its batch: from one step's end to the next one's start."""

    def __init__(self) -> None:
        self.steps, self.waiting, self.first_end, self.last_end = 0, 0.0, None, None
        self.gpu_busy_ms, self._events = 0.0, None

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.last_end is not None:
            self.waiting += now - self.last_end
        if trainer.strategy.root_device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._events is not None:
            self._events[1].record()
            self._events[1].synchronize()
            self.gpu_busy_ms += self._events[0].elapsed_time(self._events[1])
        self.last_end = time.perf_counter()
        self.first_end = self.first_end or self.last_end
        self.steps += 1

    @property
    def timed_steps(self) -> int:
        return self.steps - 1  # the first step (warm-up, the first batch's fetch) is not counted

    @property
    def seconds(self) -> float:
        return self.last_end - self.first_end


class _SameBatch:
    """One batch, `count` times: a loader that costs nothing (a list would be taken for several loaders)."""

    def __init__(self, batch: Any, count: int) -> None:
        self.batch, self.count = batch, count

    def __iter__(self):
        return (self.batch for _ in range(self.count))

    def __len__(self) -> int:
        return self.count


def _train(model, batches, count: int) -> StepClock:
    """`count` training steps of Lightning's own loop over `batches`, timed; nothing saved or logged."""
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="auto", devices=1, max_epochs=-1, max_steps=count, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=batches)
    return clock


def measure(model, loader, max_batches: int = MAX_BATCHES) -> LoaderReport:
    """The three measurements (see the module's docstring) of `model` trained on `loader`, each of
    `max_batches` batches (fewer if the loader alone takes more than MAX_SECONDS for them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # 1. the loader alone
        samples, batches, kept = 0, 0, None
        started = time.perf_counter()
        while batches < max_batches and time.perf_counter() - started < MAX_SECONDS:  # epochs, if short ones
            for batch in loader:
                kept = batch if kept is None else kept
                samples += len(batch[0]) if isinstance(batch, list | tuple) else len(batch)
                batches += 1
                if batches >= max_batches or time.perf_counter() - started > MAX_SECONDS:
                    break
        loader_seconds = time.perf_counter() - started
        # 2. the model alone: the same number of steps on one batch kept in memory
        alone = _train(model, _SameBatch(kept, batches), batches)
        # 3. both, as training runs them
        both = _train(model, loader, batches)
    return LoaderReport(
        samples_per_second=samples / loader_seconds,
        model_steps_per_second=alone.timed_steps / alone.seconds,
        steps_per_second=both.timed_steps / both.seconds,
        waiting_share=both.waiting / both.seconds,
        gpu_busy_share=(both.gpu_busy_ms / 1000 / both.seconds) if both.gpu_busy_ms else None,
        batch_size=getattr(loader, "batch_size", None) or 0,
        num_workers=getattr(loader, "num_workers", 0),
        pin_memory=bool(getattr(loader, "pin_memory", False)),
        from_shards=isinstance(getattr(loader, "dataset", None), ShardDataset),
    )


def loader_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="loader",
        description="Is training waiting for its data? Times the training loader, the model on a batch in memory "
        "and both together. Other options go to the config parser (--config, --data.init_args.num_workers=4, ...).",
    )
    _, config_args = parser.parse_known_args(argv)
    from ..training.project_loading import load_model_and_data

    model, data = load_model_and_data(config_args)
    data.setup("fit")
    report = measure(model, data.train_dataloader())
    print(
        f"loader alone:  {report.samples_per_second:,.0f} samples/s (batch size {report.batch_size}, "
        f"num_workers {report.num_workers}, pin_memory {report.pin_memory}; {available_cpus()} CPUs available)"
    )
    print(f"model alone:   {report.model_steps_per_second:,.1f} training steps/s on a batch kept in memory")
    print(
        f"both:          {report.steps_per_second:,.1f} steps/s; waiting for data {report.waiting_share:.0%} "
        "of the time" + (f"; GPU busy {report.gpu_busy_share:.0%}" if report.gpu_busy_share is not None else "")
    )
    print(report.verdict())  # fmt: skip
    return 0
