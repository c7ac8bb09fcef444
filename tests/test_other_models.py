"""The kit with a model that is not the example's: two optimizers stepped by hand, no validation metric.

The model (written below, put on the path as its own module, as a researcher's would be) trains
the example's data with manual optimization: plain SGD (which keeps no state) for its encoder,
Adam for its head, so every batch takes two optimizer steps. Its validation computes a loss and
logs nothing, as many pretraining and generative models do: it trains with
`--checkpointing.monitor=null` (rolling and final checkpoints, no best, no early stopping).
`check` passes it, a run killed by batch position resumes to the uninterrupted run's weights
exactly, and `test` scores its final checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess

from training_runs import final_weights, max_abs_difference, resume_test_config, train

import preloaded_commands

TWO_OPTIMIZERS = """
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class TwoOptimizerClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, images):
        return self.head(self.encoder(images))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        encoder_optimizer, head_optimizer = self.optimizers()
        loss = F.cross_entropy(self(images), labels)
        encoder_optimizer.zero_grad()
        head_optimizer.zero_grad()
        self.manual_backward(loss)
        encoder_optimizer.step()
        head_optimizer.step()
        self.log("train/loss", loss)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        F.cross_entropy(self(images), labels)  # computed, logged nowhere

    def test_step(self, batch, batch_idx):
        images, labels = batch
        self.log("test/acc", (self(images).argmax(1) == labels).float().mean())

    def configure_optimizers(self):
        return [torch.optim.SGD(self.encoder.parameters(), lr=0.1), torch.optim.Adam(self.head.parameters(), 1e-3)]
"""
MODEL = ["--model=two_optimizers.TwoOptimizerClassifier", "--checkpointing.monitor=null"]
SHORT_RUN = [
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=4",
    "--checkpointing.every_n_steps=2",
    "--checkpointing.every_n_minutes=null",
]


def test_two_optimizers_without_a_validation_metric_check_train_resume_and_test(
    example_project, example_command, tmp_path
) -> None:
    project, _ = example_project
    (tmp_path / "two_optimizers.py").write_text(TWO_OPTIMIZERS)
    path = {"PYTHONPATH": str(tmp_path)}

    def command(*args: str) -> subprocess.CompletedProcess:
        return preloaded_commands.run(
            [*example_command, *args], cwd=project, capture_output=True, text=True, env={**os.environ, **path}
        )

    checked = command("check", *MODEL)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "FAIL" not in checked.stdout

    plain = resume_test_config(tmp_path / "plain.json", tmp_path / "plain.jsonl", None, tmp_path / "unused")
    uninterrupted = train(example_command, project, plain, "two-optimizers", *MODEL, *SHORT_RUN, env=path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert "checkpointing.monitor is null, so no best checkpoints and no early stopping" in uninterrupted.stdout
    # Quiet: the model in one line (64 x 32 + 32 and 32 x 10 + 10 weights), epochs counted from 1 to 3.
    assert "Run 'two-optimizers': TwoOptimizerClassifier, 2,410 trainable parameters" in uninterrupted.stdout
    assert "Total params" not in uninterrupted.stdout + uninterrupted.stderr  # Lightning logs its table to stderr
    assert "epoch 0/" not in uninterrupted.stdout
    assert "epoch 3/3  step 24" in uninterrupted.stdout, uninterrupted.stdout[-2000:]
    checkpoints = project / "runs" / "two-optimizers" / "checkpoints"
    assert not list(checkpoints.glob("best-*")) and (checkpoints / "final.ckpt").is_file()

    kill = {"hook": "train_batch_end", "epoch": 1, "batch_index": 2}  # global step 14: two steps a batch
    killable = resume_test_config(tmp_path / "kill.json", tmp_path / "kill.jsonl", kill, tmp_path / "killed")
    killed = train(example_command, project, killable, "two-optimizers-killed", *MODEL, *SHORT_RUN, env=path)
    assert killed.returncode != 0 and "step 14" in (tmp_path / "killed").read_text()
    resumed = train(example_command, project, killable, "two-optimizers-killed", *MODEL, *SHORT_RUN, env=path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from last.ckpt (epoch 2, step 12)" in resumed.stdout, resumed.stdout[-2000:]
    expected, got = final_weights(project, "two-optimizers"), final_weights(project, "two-optimizers-killed")
    assert max_abs_difference(got, expected) == 0.0

    tested = command("test", "--run_name", "two-optimizers", MODEL[0])
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "Run 'two-optimizers': using final.ckpt" in tested.stdout and "test/acc" in tested.stdout


def test_auto_says_when_there_is_no_metric_to_follow(example_project, example_command, tmp_path) -> None:
    """`checkpointing.monitor: auto` with the same model: a validation that logs nothing, and no validation at
    all (limit_val_batches=0), each end in one line at the start, recorded so that a re-run keeps it."""
    project, _ = example_project
    (tmp_path / "two_optimizers.py").write_text(TWO_OPTIMIZERS)
    path = {"PYTHONPATH": str(tmp_path)}
    plain = resume_test_config(tmp_path / "plain.json", tmp_path / "plain.jsonl", None, tmp_path / "unused")
    for name, options, why in (
        ("logs-nothing", [], "validation logs no metric"),
        ("no-validation", ["--trainer.limit_val_batches=0"], "validation does not run"),
    ):
        done = train(
            example_command, project, plain, name, MODEL[0], *SHORT_RUN, "--trainer.max_epochs=1", *options, env=path
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"Run '{name}': {why}, so no best checkpoints and no early stopping" in done.stdout, done.stdout
        manifest = json.loads((project / "runs" / name / "manifest.json").read_text())
        assert manifest["monitor"] == {"metric": None, "mode": None}, manifest


def test_check_reports_a_crashing_model_check_by_check_in_one_line_each(example_project, example_command) -> None:
    """A forward pass that cannot run (inputs of 64 features into a first layer for 63): every check says so
    in a line naming the error and where in the project's code it passed, and all of them run."""
    project, _ = example_project
    checked = preloaded_commands.run(
        [*example_command, "check", "--model.init_args.input_size=63"], cwd=project, capture_output=True, text=True
    )
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr[-3000:]
    failed = [line for line in checked.stdout.splitlines() if line.startswith("[FAIL]")]
    assert len(failed) >= 5, checked.stdout  # the four single checks and the modes-and-checkpoint one
    for line in failed:
        assert "raised RuntimeError in model.py line" in line and "cannot be multiplied" in line, line
    assert "checks passed or did not apply" in checked.stdout
