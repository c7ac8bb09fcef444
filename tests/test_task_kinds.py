"""The kit follows the task: four task shapes replace the example by naming their classes, and each is
checked, trained, killed and resumed exactly, stopped with Ctrl-C and resumed exactly, tested and
evaluated with the metrics of its kind; its checkpoint is not scored on a changed split unless named
on purpose, nor with another model class. Two of them also become the project's own model and data,
and the generated project's tests and `reproduce` pass (the other two do so with the TensorBoard and
W&B loggers: tests/test_generated_project.py).

The models and data (tests/task_shapes.py) are put on the generated project's path as their own
module, as a researcher's would be, and named with `--model` and `--data`, nothing else: the metric
checkpoints follow is chosen from what validation logs (`checkpointing.monitor: auto`; the
regression logs a loss and an error, no score, so its loss), and a resumed run keeps that choice.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import copy_of_example_project
from sklearn.metrics import average_precision_score, f1_score, jaccard_score, mean_squared_error, r2_score
from task_shapes import SHAPES, SOURCE, make_it_the_projects_task, the_projects_tests_and_reproduce_pass
from training_runs import best_checkpoints, final_weights, max_abs_difference, resume_test_config, train

import preloaded_commands

SHORT_RUN = [
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=4",
    "--checkpointing.every_n_steps=2",
    "--checkpointing.every_n_minutes=null",
]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_another_task_is_checked_trained_resumed_tested_and_evaluated(
    shape, example_project, example_command, tmp_path
) -> None:
    project, _ = example_project
    model, data, chosen_metric, metrics, initial_loss = SHAPES[shape]
    (tmp_path / "task_shapes_module.py").write_text(SOURCE)
    env = {"PYTHONPATH": str(tmp_path)}
    classes = [f"--model=task_shapes_module.{model}", f"--data=task_shapes_module.{data}"]

    def command(*args: str) -> subprocess.CompletedProcess:
        return preloaded_commands.run(
            [*example_command, *args], cwd=project, capture_output=True, text=True, env={**os.environ, **env}
        )

    checked = command("check", *classes)
    assert checked.returncode == 0 and "FAIL" not in checked.stdout, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert initial_loss in checked.stdout, checked.stdout
    assert f"(checkpointing.monitor: auto): {chosen_metric} (" in checked.stdout, checked.stdout

    run = f"{shape}-whole"
    plain = resume_test_config(tmp_path / "plain.json", tmp_path / "plain.jsonl", None, tmp_path / "unused")
    uninterrupted = train(example_command, project, plain, run, *classes, *SHORT_RUN, env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert f"checkpoints and early stopping follow {chosen_metric} (" in uninterrupted.stdout, uninterrupted.stdout

    kill = {"hook": "train_batch_end", "epoch": 1, "batch_index": 2}
    killable = resume_test_config(tmp_path / "kill.json", tmp_path / "kill.jsonl", kill, tmp_path / "killed")
    killed = train(example_command, project, killable, f"{shape}-killed", *classes, *SHORT_RUN, env=env)
    assert killed.returncode != 0 and (tmp_path / "killed").exists()
    resumed = train(example_command, project, killable, f"{shape}-killed", *classes, *SHORT_RUN, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from last.ckpt (epoch 2, step 6)" in resumed.stdout, resumed.stdout[-2000:]
    assert max_abs_difference(final_weights(project, f"{shape}-killed"), final_weights(project, run)) == 0.0
    # The resumed run followed the metric it chose before the kill from its first step: its best-k state
    # came back with it, so it keeps the same best checkpoints as the run that was never stopped.
    assert "chosen from what validation logs" not in resumed.stdout
    assert best_checkpoints(project, f"{shape}-killed") == best_checkpoints(project, run) != []
    # Ctrl-C at the same point: the run stops with a checkpoint (exit code 3), and re-run it ends exactly too.
    ctrl_c = {**kill, "signal": "SIGINT"}
    stoppable = resume_test_config(tmp_path / "c.json", tmp_path / "c.jsonl", ctrl_c, tmp_path / "interrupted")
    interrupted = train(example_command, project, stoppable, f"{shape}-ctrl-c", *classes, *SHORT_RUN, env=env)
    assert interrupted.returncode == 3 and "stopped on SIGINT at step 7" in interrupted.stdout, interrupted.stdout
    again = train(example_command, project, stoppable, f"{shape}-ctrl-c", *classes, *SHORT_RUN, env=env)
    assert again.returncode == 0 and "resuming from last.ckpt (epoch 2, step 7)" in again.stdout, again.stdout
    assert max_abs_difference(final_weights(project, f"{shape}-ctrl-c"), final_weights(project, run)) == 0.0
    # No validation at the stop (Lightning's own on a mid-epoch stop): no best checkpoint of a step the run
    # uninterrupted never validated at, so the same best ones and the same best value (what a search ranks by).
    assert best_checkpoints(project, f"{shape}-ctrl-c") == best_checkpoints(project, run), again.stdout

    tested = command("test", "--run_name", run, *classes)
    assert tested.returncode == 0 and "test/loss" in tested.stdout, tested.stdout[-2000:] + tested.stderr[-3000:]
    # Another split is other data: the run's checkpoint is not scored on it unless named on purpose.
    moved = command("test", "--run_name", run, *classes, "--data.split_seed=7")
    assert moved.returncode == 2 and "test/loss" not in moved.stdout, moved.stdout[-2000:] + moved.stderr[-2000:]
    assert f"Run '{run}' was trained on data" in moved.stderr and "(split_seed: 0 -> 7)" in moved.stderr
    # Without the model's class path: the example's model would be built, and the run's weights do not fit it.
    other = command("test", "--run_name", run, *classes[1:])
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    assert f"Run '{run}' trained task_shapes_module.{model}; this command builds digits_mlp.model.DigitsClassifier" in (
        other.stderr
    )
    named = command(
        "test",
        "--run_name",
        run,
        *classes,
        "--data.split_seed=7",
        "--ckpt_path",
        str(project / "runs" / run / "checkpoints" / "final.ckpt"),
    )
    assert named.returncode == 0 and "test/loss" in named.stdout, named.stderr[-2000:]
    if shape == "regression":  # a named checkpoint of another class: `evaluate` builds the configured class
        final = project / "runs" / run / "checkpoints" / "final.ckpt"
        other = command("evaluate", "--run_name", run, *classes[1:], "--ckpt_path", str(final))
        assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
        assert f"{final} holds a task_shapes_module.{model}; this command builds digits_mlp.model." in other.stderr

    evaluated = command("evaluate", "--run_name", run, *classes)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-3000:]
    assert "Traceback" not in evaluated.stderr
    assert f"| task_kind | {shape} |" in evaluated.stdout, evaluated.stdout
    for metric in metrics:
        assert f"| {metric} | " in evaluated.stdout, (metric, evaluated.stdout)
    directory = project / "runs" / run / "evaluation" / "test"
    assert (directory / "evaluation.png").stat().st_size > 10_000


def test_a_dict_batch_task_resumes_exactly_with_two_processes(example_project, example_command, tmp_path) -> None:
    """Dict batches from a custom collate function under DDP (two processes, gloo): killed mid-epoch and
    re-run, the run ends with the weights of the same run uninterrupted, bit for bit."""
    project, _ = example_project
    model, data, _, _, _ = SHAPES["single-label"]
    (tmp_path / "task_shapes_module.py").write_text(SOURCE)
    env = {"PYTHONPATH": str(tmp_path)}
    two = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", *SHORT_RUN]
    classes = [f"--model=task_shapes_module.{model}", f"--data=task_shapes_module.{data}", *two]
    plain = resume_test_config(
        tmp_path / "p.json", tmp_path / "p.jsonl", None, tmp_path / "unused", distinct_ranks=True
    )
    whole = train(example_command, project, plain, "dict-ddp-whole", *classes, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    kill = {"hook": "train_batch_end", "epoch": 1, "batch_index": 2}  # after step 7: last.ckpt at step 6
    killable = resume_test_config(
        tmp_path / "k.json", tmp_path / "k.jsonl", kill, tmp_path / "killed", distinct_ranks=True
    )
    killed = train(example_command, project, killable, "dict-ddp-killed", *classes, env=env)
    assert killed.returncode != 0 and (tmp_path / "killed").exists(), killed.stdout[-2000:]
    resumed = train(example_command, project, killable, "dict-ddp-killed", *classes, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("Run 'dict-ddp-killed': resuming from last.ckpt (epoch 2, step 6)") == 1, resumed.stdout
    assert max_abs_difference(final_weights(project, "dict-ddp-killed"), final_weights(project, "dict-ddp-whole")) == 0


# -- the kind, read off a batch, and evaluate's metrics per kind, against scikit-learn ---------------------
@pytest.fixture(scope="module")
def kinds(example_package):
    from digits_mlp.kit.base import task_kinds

    return task_kinds


@pytest.mark.parametrize(
    ("outputs", "targets", "kind"),
    [
        ((8, 10), torch.randint(0, 10, (8,)), "single-label"),
        ((8, 4), torch.randint(0, 2, (8, 4)).float(), "multi-label"),
        ((8,), torch.rand(8), "regression"),
        ((8, 1), torch.rand(8), "regression"),
        ((8, 3), torch.rand(8, 3), "regression"),
        ((8, 3, 5, 5), torch.randint(0, 3, (8, 5, 5)), "dense"),
        ((8, 7, 12), torch.randint(0, 7, (8, 12)), "dense"),  # token tagging: scores (N, K, positions)
        ((8, 16), torch.randn(8, 3), "other"),
        ((8, 10), torch.randint(0, 10, (7,)), "other"),
    ],
)
def test_the_task_kind_is_read_off_a_batch(kinds, outputs, targets, kind) -> None:
    assert kinds.infer_task_kind(torch.randn(outputs), targets) == kind


def test_a_declared_kind_wins_and_a_misspelt_one_is_refused(kinds) -> None:
    class Declared(torch.nn.Module):
        task_kind = "regression"

        def forward(self, inputs):
            return inputs[:, :2]

    batch = (torch.randn(4, 5), torch.randint(0, 2, (4, 2)).float())  # 0/1 targets would read as multi-label
    assert kinds.infer_task_kind(batch[0][:, :2], batch[1]) == "multi-label"
    assert kinds.task_kind(Declared(), batch) == "regression"
    Declared.task_kind = "multilabel"
    with pytest.raises(kinds.TaskKindError, match="task_kind is 'multilabel'; it must be one of 'single-label'"):
        kinds.task_kind(Declared(), batch)


def test_dict_batches_without_the_hook_are_refused_with_the_fix(kinds) -> None:
    with pytest.raises(kinds.TaskKindError, match=r"batches are dicts with keys image, digit, not \(inputs, targets\)"):
        kinds.inputs_and_targets(torch.nn.Identity(), {"image": torch.zeros(2), "digit": torch.zeros(2)})


def _predicted(outputs: torch.Tensor, targets: torch.Tensor, kind: str | None = None):
    from digits_mlp.kit.evaluation.evaluation import metrics_from_predictions, predict
    from torch.utils.data import DataLoader, TensorDataset

    class Fixed(torch.nn.Module):
        """Gives the stored outputs back: the model's predictions are known exactly."""

        task_kind = kind

        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, index):
            return outputs[index]

    loader = DataLoader(TensorDataset(torch.arange(len(targets)), targets), batch_size=16)
    predictions = predict(Fixed(), loader)
    return predictions, metrics_from_predictions(predictions)


def test_multi_label_metrics_match_scikit_learn(example_package) -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 2, (50, 4), generator=generator).float()
    outputs = torch.randn(50, 4, generator=generator) + 2 * (targets - 0.5)
    predictions, metrics = _predicted(outputs, targets)
    assert metrics["task_kind"] == "multi-label" and metrics["examples"] == 50
    predicted, truth = (outputs > 0).numpy(), targets.numpy().astype(int)
    assert metrics["exact_match"] == pytest.approx((predicted == truth).all(axis=1).mean(), abs=1e-6)
    assert metrics["label_accuracy"] == pytest.approx((predicted == truth).mean(), abs=1e-6)
    assert metrics["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-6)
    scores = torch.sigmoid(outputs).numpy()
    assert metrics["pr_auc_macro"] == pytest.approx(average_precision_score(truth, scores, average="macro"), abs=1e-4)


def test_regression_metrics_match_scikit_learn(example_package) -> None:
    generator = torch.Generator().manual_seed(1)
    targets = torch.rand(40, generator=generator) * 9
    outputs = (targets + torch.randn(40, generator=generator)).unsqueeze(1)  # (N, 1), as many regressions give
    _, metrics = _predicted(outputs, targets)
    assert metrics["task_kind"] == "regression"
    truth, values = targets.numpy(), outputs.squeeze(1).numpy()
    assert metrics["mean_squared_error"] == pytest.approx(mean_squared_error(truth, values), rel=1e-5)
    assert metrics["mean_absolute_error"] == pytest.approx(np.abs(truth - values).mean(), rel=1e-5)
    assert metrics["r2"] == pytest.approx(r2_score(truth, values), rel=1e-5)


def test_dense_metrics_match_scikit_learn_over_positions(example_package) -> None:
    generator = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 3, (20, 6, 6), generator=generator)
    outputs = torch.randn(20, 3, 6, 6, generator=generator) + 1.5 * torch.nn.functional.one_hot(targets, 3).permute(
        0, 3, 1, 2
    )
    predictions, metrics = _predicted(outputs, targets)
    assert metrics["task_kind"] == "dense" and metrics["positions"] == 720
    assert predictions["scores"].shape == (20, 6, 6)  # class indices kept, not 3 probabilities per pixel
    predicted, truth = outputs.argmax(1).flatten().numpy(), targets.flatten().numpy()
    assert metrics["accuracy"] == pytest.approx((predicted == truth).mean(), abs=1e-6)
    assert metrics["mean_iou"] == pytest.approx(jaccard_score(truth, predicted, average="macro"), abs=1e-6)


def test_outputs_that_fit_no_kind_are_refused_in_one_message(example_package) -> None:
    from digits_mlp.kit.evaluation.evaluation import NotEvaluable

    with pytest.raises(NotEvaluable, match=r"outputs of shape \(16, 16\) .* which fit none of them"):
        _predicted(torch.randn(20, 16), torch.randn(20, 3))
    with pytest.raises(NotEvaluable, match="which do not fit the task kind 'dense'"):
        _predicted(torch.randn(20, 16), torch.randint(0, 3, (20,)), kind="dense")


def test_the_dataset_card_sums_up_targets_by_kind_and_needs_no_fingerprint(example_package, tmp_path) -> None:
    """A data module with only its splits (no raw_files, no data_fingerprint) still gets a card, and the
    targets column says what each kind's targets are."""
    import lightning.pytorch as pl
    from digits_mlp.kit import dataset_card
    from torch.utils.data import TensorDataset

    class Splits(pl.LightningDataModule):
        """Made up in the test."""

        def __init__(self, targets: torch.Tensor) -> None:
            super().__init__()
            self.splits = {"train": TensorDataset(torch.zeros(len(targets), 3), targets)}

    shapes = {
        "multi-label": (torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), "positives per label [2, 1]"),
        "regression": (torch.tensor([1.0, 2.0, 3.0]), "mean 2.0000, std 1.0000"),
        "single-label": (torch.tensor([0, 2, 2]), "examples per class [1, 0, 2]"),
        "dense": (torch.tensor([[0, 1], [1, 1], [0, 0]]), "positions per class [3, 3]"),
    }
    for kind, (targets, summary) in shapes.items():
        card = tmp_path / f"{kind}.md"
        dataset_card(Splits(targets), card)
        assert f"| train | 3 | (3,) | 0.0000 | 0.0000 | {summary} |" in card.read_text(), (kind, card.read_text())


@pytest.mark.parametrize("shape", ["regression", "single-label"])
def test_the_projects_own_tests_pass_for_another_task(shape, example_project, tmp_path) -> None:
    """The generated project's tests hold for any model, as the README's "Your own model and data" says:
    its one step removes the example's own files, the task's model and data become the project's (one
    module, named in configs/default.yaml with their settings), and `pytest` and `reproduce` pass.
    (The dense and multi-label tasks do the same with the TensorBoard and W&B loggers: test_generated_project.)"""
    project, command = copy_of_example_project(example_project, tmp_path / "project")
    make_it_the_projects_task(project, "digits_mlp", command, shape)
    the_projects_tests_and_reproduce_pass(project, command, shape)
