"""Each sanity check of the generated project fails on a model broken in the way it looks for.

The generated project's own tests show the checks pass on the example; here every check meets a
deliberately broken variant of the example model and must report a failure.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def kit(example_package):
    from digits_mlp.data import DigitsDataModule
    from digits_mlp.kit.diagnostics import sanity_checks
    from digits_mlp.model import DigitsClassifier

    return sanity_checks, DigitsClassifier, DigitsDataModule


def broken_models(base):
    class WrongInitialBias(base):
        def __init__(self):
            super().__init__()
            with torch.no_grad():
                self.network[-1].bias.copy_(torch.linspace(0, 12, 10))

    class CannotLearn(base):
        def __init__(self):
            super().__init__(learning_rate=0.0)

    class LayerCutOffFromTheLoss(base):
        def forward(self, images):
            hidden = self.network[:3](images.flatten(start_dim=1)).detach()
            return self.network[3:](hidden)

    class KeepsTheLossGraph(base):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.last_loss = loss  # the graph of every step stays alive
            return loss

    class LogsWithGraph(base):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train/loss_with_graph", loss, enable_graph=True)
            return loss

    class LeftInEvalMode(base):
        def on_train_start(self):
            self.network.eval()

    class ValidatesInTrainMode(base):
        def on_validation_start(self):
            self.train()

    class DropsOptimizerState(base):
        def on_save_checkpoint(self, checkpoint):
            checkpoint["optimizer_states"] = []

    return {
        "initial loss is that of even scores": [WrongInitialBias],
        "overfits one batch": [CannotLearn],
        "gradients reach every trainable parameter": [LayerCutOffFromTheLoss],
        "logged and stored values hold no graph": [KeepsTheLossGraph, LogsWithGraph],
        "validation runs in eval mode, training in train mode": [LeftInEvalMode, ValidatesInTrainMode],
        "the checkpoint holds the optimizer state": [DropsOptimizerState],
    }


def results_by_name(kit, model_class) -> dict:
    sanity_checks, _, data_class = kit
    results = [check(model_class(), data_class()) for check in sanity_checks.SINGLE_CHECKS]
    results += sanity_checks.check_modes_and_checkpoint(model_class(), data_class())
    return {result.name: result for result in results}


def test_every_check_passes_on_the_example(kit) -> None:
    results = results_by_name(kit, kit[1])
    assert set(results) == set(broken_models(kit[1]))
    assert all(result.passed for result in results.values()), [r.line() for r in results.values()]


CASES = [
    ("initial loss is that of even scores", 0),
    ("overfits one batch", 0),
    ("gradients reach every trainable parameter", 0),
    ("logged and stored values hold no graph", 0),
    ("logged and stored values hold no graph", 1),
    ("validation runs in eval mode, training in train mode", 0),
    ("validation runs in eval mode, training in train mode", 1),
    ("the checkpoint holds the optimizer state", 0),
]


@pytest.mark.parametrize(("check_name", "variant"), CASES)
def test_check_fails_on_a_model_broken_its_way(kit, check_name: str, variant: int) -> None:
    broken = broken_models(kit[1])[check_name][variant]
    result = results_by_name(kit, broken)[check_name]
    assert result.passed is False, f"{broken.__name__}: {result.line()}"
    assert result.hint


def test_a_model_with_manual_optimization_is_checked_without_a_traceback(kit) -> None:
    sanity_checks, base, data_class = kit
    import torch.nn.functional as F

    class ManualOptimization(base):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()  # exists only inside a Trainer
            images, labels = batch
            loss = F.cross_entropy(self(images), labels)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

    results = {result.name: result for result in sanity_checks.run_all_checks(ManualOptimization(), data_class())}
    needs_trainer = [name for name, result in results.items() if result.passed is None]
    assert len(needs_trainer) == 4 and all("manual optimization" in results[n].detail for n in needs_trainer)
    # The checks that run inside a Trainer still run, and pass on this correct model.
    assert results["validation runs in eval mode, training in train mode"].passed is True
    assert results["the checkpoint holds the optimizer state"].passed is True


def test_a_monitored_metric_that_validation_does_not_log_fails_the_check(kit) -> None:
    sanity_checks, model_class, data_class = kit
    name = "validation logs the monitored metric"
    logged = {r.name: r for r in sanity_checks.check_modes_and_checkpoint(model_class(), data_class(), "val/acc")}
    assert logged[name].passed is True
    missing = {r.name: r for r in sanity_checks.check_modes_and_checkpoint(model_class(), data_class(), "val/mse")}
    assert missing[name].passed is False and "val/acc, val/loss" in missing[name].detail and missing[name].hint
