"""`at_log_interval` (kit/training/logging_interval.py) against Lightning's own decision: the steps
where it says "log" are exactly the steps whose logged value reaches the logger, for one optimizer,
accumulated gradients, two optimizers under manual optimization, and a run resumed mid-epoch.
In-process, on the example project's kit."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset


class RecordingLogger(Logger):
    """Keeps the `probe` values that Lightning writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[int] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if "probe" in metrics:
            self.written.append(int(metrics["probe"]))


def probing_module(at_log_interval, manual: bool) -> pl.LightningModule:
    """Logs its batch count at every step (unguarded) and notes where `at_log_interval` says yes."""

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = not manual
            self.first = torch.nn.Linear(3, 3)
            self.second = torch.nn.Linear(3, 1)
            self.batches = 0
            self.said_yes: list[int] = []

        def training_step(self, batch, batch_idx):
            self.batches += 1
            if at_log_interval(self):
                self.said_yes.append(self.batches)
            self.log("probe", float(self.batches), on_step=True, on_epoch=False)
            (inputs,) = batch
            loss = self.second(self.first(inputs)).pow(2).mean()
            if not manual:
                return loss
            for optimizer in self.optimizers():
                optimizer.zero_grad()
            self.manual_backward(loss)
            for optimizer in self.optimizers():
                optimizer.step()
            return None

        def configure_optimizers(self):
            if not manual:
                return torch.optim.SGD(self.parameters(), lr=0.01)
            return [torch.optim.SGD(part.parameters(), lr=0.01) for part in (self.first, self.second)]

    return Probe()


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(14, 3)), batch_size=2)  # 7 batches: an odd epoch


def trainer(logger: Logger, tmp_path: Path, **settings) -> pl.Trainer:
    return pl.Trainer(
        logger=logger,
        default_root_dir=tmp_path,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **settings,
    )


@pytest.fixture(scope="module")
def at_log_interval(example_package):
    from digits_mlp.kit.training.logging_interval import at_log_interval

    return at_log_interval


@pytest.mark.parametrize(
    ("manual", "settings"),
    [
        pytest.param(False, {"log_every_n_steps": 3}, id="one optimizer"),
        pytest.param(False, {"log_every_n_steps": 2, "accumulate_grad_batches": 3}, id="accumulated gradients"),
        pytest.param(True, {"log_every_n_steps": 3}, id="two optimizers, manual"),
    ],
)
def test_it_says_log_exactly_where_lightning_writes(at_log_interval, manual, settings, tmp_path: Path) -> None:
    module, logger = probing_module(at_log_interval, manual), RecordingLogger()
    trainer(logger, tmp_path, max_epochs=3, **settings).fit(module, loader())

    assert len(logger.written) >= 4, "too few writes to tell anything"
    assert module.said_yes == logger.written


@pytest.mark.parametrize("manual", [False, True], ids=["one optimizer", "two optimizers, manual"])
def test_it_stays_in_step_with_lightning_after_a_resume_mid_epoch(at_log_interval, manual, tmp_path: Path) -> None:
    first = probing_module(at_log_interval, manual)
    first_run = trainer(RecordingLogger(), tmp_path, max_steps=10 if not manual else 20, log_every_n_steps=3)
    first_run.fit(first, loader())  # stops mid-epoch: batch 3 of the second epoch
    first_run.save_checkpoint(tmp_path / "mid.ckpt")

    resumed, logger = probing_module(at_log_interval, manual), RecordingLogger()
    trainer(logger, tmp_path, max_epochs=3, log_every_n_steps=3).fit(resumed, loader(), ckpt_path=tmp_path / "mid.ckpt")

    assert resumed.batches > 5 and len(logger.written) >= 2
    assert resumed.said_yes == logger.written
