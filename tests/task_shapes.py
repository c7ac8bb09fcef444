"""Four models that are not the example's single-label classifier, written as a researcher would write them.

Each pairs a model with a data module made from the example's digits (so nothing is downloaded):
a multi-label classifier (four yes/no properties of the digit), a regression (the digit's value),
a dense per-pixel classifier (each pixel's ink level: none, light, dark), and a single-label
classifier whose batches are dicts built by a custom collate function, which tells the kit how to
get inputs and targets from its batches with `inputs_and_targets`. The tests put this module on the
generated project's path and name the classes as `--model` and `--data`; or make one of them the
project's own task as the README says (make_it_the_projects_task).
"""

from __future__ import annotations

import re
from pathlib import Path

from template_dev import commit_all, run

SOURCE = '''
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from digits_mlp.data import DigitsDataModule
from digits_mlp.kit import ResumableDataLoader


class RelabelledDigits(DigitsDataModule):
    """The example's splits, each target replaced by `relabel(images, digits)`."""

    def relabel(self, images, digits):
        raise NotImplementedError

    def setup(self, stage=None):
        if self.splits:
            return
        super().setup(stage)
        for name, split in self.splits.items():
            images, digits = split.tensors
            self.splits[name] = TensorDataset(images, self.relabel(images, digits))


class DigitPropertiesData(RelabelledDigits):
    """Four yes/no properties per digit: even, above 4, has a closed loop, prime."""

    def relabel(self, images, digits):
        groups = [(0, 2, 4, 6, 8), (5, 6, 7, 8, 9), (0, 6, 8, 9), (2, 3, 5, 7)]
        return torch.stack([torch.isin(digits, torch.tensor(group)) for group in groups], dim=1).float()


class DigitValueData(RelabelledDigits):
    """The digit's value, 0 to 9, as a real number."""

    def relabel(self, images, digits):
        return digits.float()


class InkLevelData(RelabelledDigits):
    """Each pixel's ink level: 0 none, 1 light (up to half), 2 dark."""

    def relabel(self, images, digits):
        return (images > 0).long() + (images > 0.5).long()


class DictItems(Dataset):
    def __init__(self, split):
        self.images, self.digits = split.tensors

    def __len__(self):
        return len(self.digits)

    def __getitem__(self, index):
        return {"image": self.images[index], "digit": int(self.digits[index]), "id": f"digit-{index}"}


def collate_dicts(items):
    return {
        "image": torch.stack([item["image"] for item in items]),
        "digit": torch.tensor([item["digit"] for item in items]),
        "ids": [item["id"] for item in items],
    }


class DictBatchData(DigitsDataModule):
    """The example's digits as dict items, batched by a custom collate function."""

    def train_dataloader(self):
        seed = self.hparams.shuffle_seed if self.hparams.shuffle_seed is not None else torch.initial_seed() % 2**31
        return ResumableDataLoader(
            DictItems(self.splits["train"]), batch_size=self.hparams.batch_size, seed=seed, collate_fn=collate_dicts
        )

    def _evaluation_loader(self, split):
        return DataLoader(DictItems(self.splits[split]), batch_size=512, collate_fn=collate_dicts)


class SmallNetwork(pl.LightningModule):
    """An MLP on the 8 x 8 images; `loss(outputs, targets)` and `outputs_per_example` say the task."""

    outputs_per_example = 10

    def __init__(self, learning_rate: float = 0.003) -> None:
        super().__init__()
        self.save_hyperparameters()
        outputs = self.outputs_per_example
        self.network = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, outputs))

    def forward(self, images):
        return self.network(images)

    def batch(self, batch):
        return batch

    def training_step(self, batch, batch_idx):
        images, targets = self.batch(batch)
        loss = self.loss(self(images), targets)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = self.batch(batch)
        outputs = self(images)
        self.log("val/loss", self.loss(outputs, targets), on_epoch=True)
        self.log("val/acc", self.accuracy(outputs, targets), on_epoch=True)

    def test_step(self, batch, batch_idx):
        images, targets = self.batch(batch)
        outputs = self(images)
        self.log("test/loss", self.loss(outputs, targets), on_epoch=True)
        self.log("test/acc", self.accuracy(outputs, targets), on_epoch=True)

    def accuracy(self, outputs, targets):
        return (outputs.argmax(1) == targets).float().mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


class DigitProperties(SmallNetwork):
    outputs_per_example = 4

    def loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets)

    def accuracy(self, outputs, targets):
        return ((outputs > 0).float() == targets).float().mean()


class DigitValue(SmallNetwork):
    outputs_per_example = 1

    def forward(self, images):
        return self.network(images).squeeze(-1)

    def loss(self, outputs, targets):
        return F.mse_loss(outputs, targets)

    def accuracy(self, outputs, targets):  # logged as val/mae: lower is better
        return (outputs - targets).abs().mean()

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        outputs = self(images)
        self.log("val/loss", self.loss(outputs, targets), on_epoch=True)
        self.log("val/mae", self.accuracy(outputs, targets), on_epoch=True)


class InkLevels(SmallNetwork):
    """Three scores per pixel from two convolutions."""

    def __init__(self, learning_rate: float = 0.01) -> None:
        super().__init__(learning_rate)
        self.network = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, images):
        return self.network(images.unsqueeze(1))

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)


class DictBatchClassifier(SmallNetwork):
    def batch(self, batch):
        return batch["image"], batch["digit"]

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def inputs_and_targets(self, batch):
        """What `evaluate`, the checks and `export` call: this model's batches are dicts."""
        return self.batch(batch)
'''

# task kind: (model, data, the metric `checkpointing.monitor: auto` chooses from what validation logs,
#        the metrics evaluate must report, the initial-loss check's verdict)
SHAPES = {
    "multi-label": (
        "DigitProperties",
        "DigitPropertiesData",
        "val/acc",
        ["exact_match", "label_accuracy", "f1_macro", "pr_auc_macro"],
        "log(2) per label",
    ),
    "regression": (  # logs val/loss and val/mae: no score, so its loss
        "DigitValue",
        "DigitValueData",
        "val/loss",
        ["mean_squared_error", "mean_absolute_error", "r2"],
        "[SKIP] initial loss is that of even scores: a regression",
    ),
    "dense": ("InkLevels", "InkLevelData", "val/acc", ["positions", "accuracy", "mean_iou"], "log(3)"),
    "single-label": (
        "DictBatchClassifier",
        "DictBatchData",
        "val/acc",
        ["accuracy", "f1_macro", "pr_auc_macro", "expected_calibration_error"],
        "log(10)",
    ),
}


def make_it_the_projects_task(project: Path, package: str, command: list[str], shape: str) -> None:
    """The README's "Your own model and data": its one step removes the example's own files, the task's
    model and data become the project's (one module, named in configs/default.yaml: nothing else there
    changes), the raw data is fetched and recorded, and the change is committed."""
    model, data, _, _, _ = SHAPES[shape]
    readme = (project / "README.md").read_text()
    remove_the_example = re.search(r"in one step:\n\n +```sh\n(.*?)```", readme, flags=re.S)[1]
    run(["bash", "-c", remove_the_example], cwd=project)
    assert not list((project / "configs" / "experiments").glob("*.yaml"))
    assert not (project / "tests" / "test_your_data_and_model.py").exists()
    source = project / "src" / package
    (source / "shapes.py").write_text(
        SOURCE.replace("digits_mlp.", f"{package}.").replace("task_shapes_module", f"{package}.shapes")
    )
    default = project / "configs" / "default.yaml"
    text = default.read_text()
    example_model = f"  class_path: {package}.model.DigitsClassifier\n  init_args:\n    hidden_sizes: [256, 256]\n"
    assert example_model in text and "    dropout: 0.2\n" in text
    text = text.replace(example_model, f"  class_path: {package}.shapes.{model}\n  init_args:\n")
    text = text.replace("    dropout: 0.2\n", "").replace(
        f"{package}.data.DigitsDataModule", f"{package}.shapes.{data}"
    )
    default.write_text(text)
    run([*command, "data", "fetch"], cwd=project)
    run([*command, "data", "record"], cwd=project)
    commit_all(project, f"a {shape} task instead of the example")


def the_projects_tests_and_reproduce_pass(project: Path, command: list[str], shape: str) -> None:
    """The project's own `pytest`, and `reproduce --all` with the example's artifacts.py, for this task."""
    venv_python = str(Path(command[0]).parent / "python")
    tested = run([venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, check=False)
    assert tested.returncode == 0, tested.stdout[-4000:]
    assert " passed" in tested.stdout and " failed" not in tested.stdout
    reproduced = run([*command, "reproduce", "--all"], cwd=project, check=False)
    assert reproduced.returncode == 0, reproduced.stdout[-3000:] + reproduced.stderr[-3000:]
    assert f"| task_kind | {shape} |" in (project / "artifacts" / "tables" / "final_metrics.md").read_text()
    assert f"a {shape} model" in (project / "artifacts" / "cards" / "model-example.md").read_text()
