"""The project's model and data module, built as `fit` would build them. Managed by the copier-lightning template.

One loader for every command and test that needs the researcher's objects without training them
(check, find-lr, evaluate, export, budget, predict-files, profile, loader-report, data prepare,
the project's tests): configs/default.yaml plus the given options, parsed by the project's
LightningCLI (so a bad option fails the same way as in `fit`), and nothing run. The CLI's lifecycle
(choosing the run, resuming, recording) lives in lightning_cli.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from typing_extensions import override

from ..runs.directory import RunDirectory
from .lightning_cli import ProjectCLI, build_cli


@dataclass(frozen=True)
class LoadedProject:
    """What `fit` with the same options would train, and where."""

    model: LightningModule
    datamodule: LightningDataModule
    run: RunDirectory  # the run directory `fit` with these options uses
    monitor: str | None  # checkpointing.monitor as configured ("auto": chosen at the first validation)


def load_project(args: list[str] = ()) -> LoadedProject:
    """The model, data module, run directory and monitored metric for configs/default.yaml plus `args`."""
    cli = build_cli(ProjectCLI, list(args), run=False)
    return LoadedProject(cli.model, cli.datamodule, cli.run, cli.config.checkpointing.monitor)


def load_model_and_data(args: list[str] = ()) -> tuple[LightningModule, LightningDataModule]:
    """The model and data module that `fit` would train (public: artifacts.py and the project's tests use it)."""
    project = load_project(args)
    return project.model, project.datamodule


class _ParseOnlyCLI(ProjectCLI):
    @override
    def instantiate_classes(self) -> None:
        """Nothing is built: the options are only checked."""


def check_config(args: list[str]) -> Namespace:
    """Parse `fit`'s options as `fit` would, building nothing; a bad option exits with its message.
    Returns the settings parsed (jsonargparse's Namespace: `config.model.init_args.<name>`)."""
    return build_cli(_ParseOnlyCLI, list(args), run=False).config
