"""Sharded training (FSDP2) by one setting, with checkpoints that keep every promise of the DDP ones.

Managed by the copier-lightning template. `--trainer.strategy=fsdp2` selects `ShardedTraining`:
Lightning's `ModelParallelStrategy` (FSDP2, torch's `fully_shard`) with every process in one
data-parallel group. It runs on GPUs (NCCL) and on CPUs (gloo), where Lightning's `FSDPStrategy`
refuses to start, so the crash tests run anywhere.

A model that says nothing about sharding (no `configure_model` hook) is sharded block by block:
the layers a Hugging Face model names as its unsplittable blocks (`_no_split_modules`, e.g. a
decoder layer), or else every module that holds parameters itself (an MLP's linear layers), then
each top-level child. A model with its own `configure_model` does its own sharding.

Lightning's sharded save writes each process's shard straight into the target directory and does
not go through the checkpoint IO plugin, so a kill mid-save would leave a directory mixing two
steps, and rewriting `last.ckpt` would overwrite the only complete checkpoint. Here each save goes
to a staging directory beside the target (`.<name>.<random>.partial`, removed at the next start if
a kill left it): every process writes its shard and checksums the files it wrote; rank 0 writes the
loop and callback states (`meta.pt`) and the list of every file's checksum (kit/runs/checksums.py),
enters the listing's checksum in the run's manifest, keeps the checkpoint it replaces as
`previous.ckpt` (`last.ckpt` only), and commits the staging directory by one rename. All processes
then wait for that commit. Reading the checkpoints back (kit/runs/checkpoint_files.py), a sharded
one counts only with its listing intact, so an incomplete or damaged one is moved aside and the
previous one used, as for a file.

Evaluation, export and cards need one file: kit/runs/sharded_checkpoints.py makes it when asked.
"""

from __future__ import annotations

import os
import tempfile
import types
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from typing_extensions import override

from ..runs.atomic_files import TEMPORARY_SUFFIX, current_umask
from ..runs.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from ..runs.checksums import SHARD_CHECKSUMS_FILE, checksum_of_listing, file_checksum, listing_text
from ..runs.sharded_checkpoints import DCP_METADATA_FILE, METADATA_FILE, discard, is_sharded_checkpoint

STRATEGY_NAME = "fsdp2"


class ShardingRefused(ValueError):
    """A model or setting that sharded training cannot take, with what to do instead."""


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one (see the module's docstring), deepest first."""
    block_names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or ())}
    if block_names:
        units = [module for module in model.modules() if type(module).__name__ in block_names]
    else:
        units = [module for module in model.modules() if any(True for _ in module.parameters(recurse=False))]
    depth = {module: name.count(".") for name, module in model.named_modules()}
    return sorted(units, key=lambda module: -depth[module])


def refuse_a_model_it_cannot_shard(pl_module, strategy) -> None:
    """Before anything is recorded: the block-by-block default leaves parameters the LightningModule
    holds itself (not in a submodule) unsharded and unsynchronised, so such a model is refused."""
    if not isinstance(strategy, ShardedTraining) or is_overridden("configure_model", pl_module):
        return
    own = [name for name, _ in pl_module.named_parameters(recurse=False)]
    if own:
        raise ShardingRefused(
            f"{type(pl_module).__name__} holds parameters itself ({', '.join(own)}): sharded training shards "
            "its submodules. Move them into a submodule, or write a configure_model hook that shards them."
        )


def shard_in_blocks(pl_module, mesh) -> None:
    """FSDP2 over `mesh` for a LightningModule without its own `configure_model` (idempotent)."""
    for unit in shard_units(pl_module):
        if unit is not pl_module and not isinstance(unit, FSDPModule):
            fully_shard(unit, mesh=mesh)
    for child in pl_module.children():
        if not isinstance(child, FSDPModule) and any(True for _ in child.parameters()):
            fully_shard(child, mesh=mesh)


def refuse_sharded_checkpoint_without_sharding(checkpoint: Path, strategy) -> None:
    """A sharded checkpoint resumes only under sharded training: any other strategy reads one file.

    The other way round works: sharded training loads a one-file (single-process or DDP) checkpoint
    and shards it, at an epoch's end with any number of processes.
    """
    if is_sharded_checkpoint(checkpoint) and not isinstance(strategy, ModelParallelStrategy):
        raise ShardingRefused(
            f"{checkpoint.name} is a sharded checkpoint (a directory of shards written with "
            f"--trainer.strategy={STRATEGY_NAME}); this run's strategy ({type(strategy).__name__}) reads one file. "
            f"Resume with --trainer.strategy={STRATEGY_NAME} (any number of processes at an epoch's end), "
            "or start a fresh run (--run_name NEW_NAME)."
        )


class ShardedTraining(ModelParallelStrategy):
    """FSDP2 over every process (one data-parallel group), with staged, checksummed sharded checkpoints."""

    @override
    def setup_environment(self) -> None:
        # Every process holds a shard (data parallel); Lightning's "auto" would make them tensor-parallel.
        # Its constructor takes these sizes as numbers, and the number of processes is known only here,
        # so the two attributes it reads next are set directly (the one private use in this module).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    @override
    def connect(self, model) -> None:
        super().connect(model)
        if not is_overridden("configure_model", model):
            # Lightning calls the model's configure_model hook (and requires one under this strategy):
            # a model without one gets the block-by-block default.
            refuse_a_model_it_cannot_shard(model, self)  # also where fit was not started by the kit's CLI

            def configure_model(pl_module) -> None:
                shard_in_blocks(pl_module, pl_module.device_mesh["data_parallel"])

            model.configure_model = types.MethodType(configure_model, model)

    @property
    def _kit_checkpoint_io(self) -> AtomicCheckpointIO | None:
        io = self.checkpoint_io
        return io if isinstance(io, AtomicCheckpointIO) else None

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        # Rank 0 decides the target, the staging directory and whether this writer may write; one broadcast.
        decided = self._decide_write(Path(filepath)) if self.is_global_zero else None
        target, staging_name, refusal = self.broadcast(decided)
        if refusal is not None:
            raise refusal
        path, staging = Path(target), Path(staging_name)
        tensors = {"state_dict": checkpoint.pop("state_dict")}
        for index, optimizer_state in enumerate(checkpoint.pop("optimizer_states", [])):
            tensors[f"optimizer_{index}"] = optimizer_state
        dcp.save(tensors, checkpoint_id=staging)
        self._announce_shards_written()
        # Each process checksums its own shard files (DCP names them __<rank>_<n>.distcp), in parallel.
        own = {p.name: file_checksum(p) for p in staging.glob(f"__{self.global_rank}_*.distcp")}
        listings: list[dict[str, str]] = [{} for _ in range(self.world_size)]
        dist.all_gather_object(listings, own)
        if self.is_global_zero:
            self._commit(checkpoint, path, staging, listings)
        self.barrier("sharded checkpoint committed")

    def _announce_shards_written(self) -> None:
        """Tell callbacks that want to know (the crash tests' KillAt) that this shard is on disk."""
        trainer = self.lightning_module.trainer
        for callback in trainer.callbacks:
            hook = getattr(callback, "on_shards_written", None)
            if hook is not None:
                hook(trainer)

    def _decide_write(self, path: Path) -> tuple[str, str | None, BaseException | None]:
        """Rank 0: the target, a new staging directory beside it, or the lease's refusal (kit/runs/lease.py),
        which every process then raises: a writer whose run was taken over stops, all ranks together."""
        io = self._kit_checkpoint_io
        if io is not None and io.before_write is not None:
            try:
                io.before_write()
            except Exception as refusal:  # noqa: BLE001 - handed to every process and raised there
                return str(path), None, refusal
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's is private; teammates read runs too
        return str(path), staging, None

    def _commit(self, checkpoint: dict[str, Any], path: Path, staging: Path, listings: list[dict[str, str]]) -> None:
        """Rank 0: the states, the listing, the manifest entry, then one rename (see the module's docstring)."""
        listing = {name: checksum for part in listings for name, checksum in part.items()}
        listing[DCP_METADATA_FILE] = file_checksum(staging / DCP_METADATA_FILE)
        listing[METADATA_FILE] = atomic_torch_save(checkpoint, staging / METADATA_FILE)
        (staging / SHARD_CHECKSUMS_FILE).write_text(listing_text(listing))
        _fsync_directory(staging)
        checksum = checksum_of_listing(listing)
        io = self._kit_checkpoint_io
        if io is not None and io.ledger is not None:
            io.ledger.remember_checksum(checksum, int(checkpoint.get("global_step", 0)))
        keep_as = io.keep_replaced_as.get(path.name) if io is not None else None
        if path.exists():
            if keep_as is not None:
                discard(path.with_name(keep_as))
                os.replace(path, path.with_name(keep_as))
            else:
                discard(path)
        os.replace(staging, path)
        _fsync_directory(path.parent)
        if io is not None and io.ledger is not None:
            io.ledger.record_checkpoint(path, checkpoint, checksum)

    @override
    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            discard(Path(filepath))


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def register_sharded_training() -> None:
    """Make `fsdp2` a strategy name (before a Trainer is built from a config that says it)."""
    if STRATEGY_NAME not in StrategyRegistry:
        StrategyRegistry.register(
            STRATEGY_NAME,
            ShardedTraining,
            description="FSDP2 over every process, with staged and checksummed sharded checkpoints (the kit's)",
        )
