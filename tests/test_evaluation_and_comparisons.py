"""`evaluate` derives its metrics from one saved forward pass; sweeps, seeds and comparisons add up."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, f1_score


@pytest.fixture(scope="module")
def trained_checkpoint(example_package, tmp_path_factory):
    import lightning.pytorch as pl
    from digits_mlp.data import DigitsDataModule
    from digits_mlp.model import DigitsClassifier

    pl.seed_everything(0)
    data = DigitsDataModule()
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(DigitsClassifier(), datamodule=data)
    path = tmp_path_factory.mktemp("evaluation") / "model.ckpt"
    trainer.save_checkpoint(path)
    data.setup("test")
    return path, data


def test_evaluate_uses_one_forward_pass_and_matches_a_direct_computation(trained_checkpoint, tmp_path) -> None:
    from digits_mlp.kit.evaluation.evaluation import evaluate_checkpoint
    from digits_mlp.model import DigitsClassifier
    from torch.utils.data import DataLoader

    checkpoint, data = trained_checkpoint
    loader = DataLoader(data.splits["test"], batch_size=32)
    forward_calls = []

    class CountingClassifier(DigitsClassifier):
        def forward(self, images):
            forward_calls.append(len(images))
            return super().forward(images)

    metrics = evaluate_checkpoint(CountingClassifier, checkpoint, loader, tmp_path)
    assert len(forward_calls) == len(loader) and sum(forward_calls) == len(data.splits["test"])

    again = evaluate_checkpoint(CountingClassifier, checkpoint, loader, tmp_path)
    assert len(forward_calls) == len(loader)  # the saved predictions were reused: no second pass
    assert again["accuracy"] == metrics["accuracy"]

    model = DigitsClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    images, labels = data.splits["test"].tensors
    with torch.no_grad():
        probabilities = torch.softmax(model(images), dim=1).numpy()
    labels = labels.numpy()
    predicted = probabilities.argmax(axis=1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-6)
    one_hot = np.eye(10)[labels]
    assert metrics["pr_auc_macro"] == pytest.approx(average_precision_score(one_hot, probabilities), abs=1e-4)
    assert (metrics["confusion_matrix"].numpy() == confusion_matrix(labels, predicted)).all()
    confidence, correct = probabilities.max(axis=1), (predicted == labels)
    bins = np.clip(np.ceil(confidence * 15) - 1, 0, 14).astype(int)
    ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).mean() for b in set(bins))
    assert metrics["expected_calibration_error"] == pytest.approx(ece, abs=1e-5)
    for name in ("predictions.pt", "metrics.csv", "metrics.md", "evaluation.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_evaluate_refuses_outputs_of_no_task_kind_and_saves_nothing(trained_checkpoint, tmp_path) -> None:
    from digits_mlp.kit.evaluation.evaluation import NotEvaluable, evaluate_checkpoint
    from digits_mlp.model import DigitsClassifier
    from torch.utils.data import DataLoader, TensorDataset

    checkpoint, _ = trained_checkpoint

    class Embedding(DigitsClassifier):
        def forward(self, images):
            return super().forward(images)[:, :4]  # four numbers per example, against three targets

    loader = DataLoader(TensorDataset(torch.rand(8, 64), torch.rand(8, 3)), batch_size=4)
    with pytest.raises(NotEvaluable, match=r"outputs of shape \(4, 4\) and targets of shape \(4, 3\)"):
        evaluate_checkpoint(Embedding, checkpoint, loader, tmp_path / "evaluation")
    assert not (tmp_path / "evaluation" / "predictions.pt").exists()  # nothing half-made was saved


def test_intervals_match_scipy_on_fixed_numbers(example_package) -> None:
    from digits_mlp.kit.experiments.comparisons import compare_groups, mean_and_interval, t_critical, welch_difference
    from scipy import stats

    assert round(t_critical(31), 2) == 2.04  # the hand-kept table said 1.96 beyond 30
    assert t_critical(2) == pytest.approx(4.303, abs=1e-3)
    mean, half = mean_and_interval([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92) and half == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-4)

    a = [0.912, 0.905, 0.921, 0.899, 0.915]
    b = [0.918, 0.909, 0.925, 0.906, 0.917]  # the same seeds 0..4: b is a little better on every seed
    difference, half_width, freedom = welch_difference(a, b)
    welch = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (difference - half_width, difference + half_width) == pytest.approx((welch.low, welch.high))

    seeds_a, seeds_b = dict(zip("01234", a, strict=True)), dict(zip("01234", b, strict=True))
    paired = compare_groups("a", seeds_a, "b", seeds_b)
    scipy_paired = stats.ttest_rel(b, a).confidence_interval(0.95)
    assert paired["method"] == "paired" and paired["ci95"] == pytest.approx([scipy_paired.low, scipy_paired.high])
    assert "paired by seed" in paired["summary"] and "exceeds seed noise" in paired["summary"]
    # The bootstrap check of the same difference: scipy's BCa interval of the per-seed differences.
    import numpy as np

    differences = np.array(b) - np.array(a)
    expected = stats.bootstrap((differences,), np.mean, method="BCa", rng=np.random.default_rng(0)).confidence_interval
    assert paired["bootstrap_ci95"] == pytest.approx([expected.low, expected.high])
    assert 0 < paired["bootstrap_ci95"][0] < paired["bootstrap_ci95"][1] <= max(differences)
    assert "Bootstrap 95 % interval" in paired["summary"]
    # Unpaired, the same numbers are within the noise: pairing is the stronger design here.
    unpaired = compare_groups("a", seeds_a, "b", dict(zip("56789", b, strict=True)))
    assert unpaired["method"] == "welch" and unpaired["ci95"] == pytest.approx([welch.low, welch.high])
    assert "within seed noise" in unpaired["summary"]
    few = compare_groups("a", {"0": 0.9, "1": 0.91}, "b", {"0": 0.92, "1": 0.925})
    assert "fewer than 3 seeds" in few["summary"] and few["bootstrap_ci95"] is None  # too few to resample


def test_sweep_trials_grid_random_and_bad_specs(example_package) -> None:
    from digits_mlp.kit.experiments.sweep_files import sweep_trials

    grid = sweep_trials({"parameters": {"a": [1, 2], "b": ["x", "y", "z"]}})
    assert len(grid) == 6 and {"a": 2, "b": "z"} in grid
    drawn = sweep_trials({"strategy": "random", "trials": 3, "seed": 1, "parameters": {"a": [1, 2], "b": [3, 4]}})
    assert len(drawn) == 3 and all(
        trial in grid or trial in sweep_trials({"parameters": {"a": [1, 2], "b": [3, 4]}}) for trial in drawn
    )
    with pytest.raises(ValueError, match="non-empty list"):
        sweep_trials({"parameters": {"a": []}})
    with pytest.raises(ValueError, match="unknown sweep strategy"):
        sweep_trials({"strategy": "bayes", "parameters": {"a": [1]}})


def test_seeds_refuses_a_config_that_monitors_no_metric_before_training(
    example_package, tmp_path, monkeypatch, capsys
) -> None:
    from digits_mlp.kit.experiments.comparisons import seeds_main

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    assert seeds_main(["--n", "2", "--checkpointing.monitor=null"]) == 2
    assert "seeds compares runs by checkpointing.monitor, and this config sets it to null" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_sweep_then_results_end_to_end(example_package, tmp_path, monkeypatch, capsys) -> None:
    from digits_mlp.kit.experiments.sweeps import results_main, sweep_main

    monkeypatch.chdir(example_package)
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(
        "options: [--trainer.max_epochs=2]\nparameters:\n  model.init_args.learning_rate: [0.0001, 0.01]\n"
    )
    assert sweep_main([str(sweep)]) == 0
    assert results_main(["tiny"]) == 0
    table = (tmp_path / "runs" / "sweeps" / "tiny-results.csv").read_text().splitlines()
    assert table[0] == "run,model.init_args.learning_rate,best val/acc"
    low, high = (float(line.split(",")[2]) for line in table[1:])
    assert high > low  # two epochs at lr 0.01 beat two at 0.0001
    assert (tmp_path / "runs" / "sweeps" / "tiny-results.png").exists()
    assert os.path.isdir(tmp_path / "runs" / "sweep-tiny-001" / "checkpoints")
