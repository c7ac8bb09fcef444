"""Four models that are not the example's single-label classifier, written as a researcher would write them.

Each pairs a model with a data module made from the example's digits (so nothing is downloaded):
a multi-label classifier (four yes/no properties of the digit), a regression (the digit's value),
a dense per-pixel classifier (each pixel's ink level: none, light, dark), and a single-label
classifier whose batches are dicts built by a custom collate function, which tells the kit how to
get inputs and targets from its batches with `inputs_and_targets`. The tests put this module on the
generated project's path and name the classes as `--model` and `--data`.
"""

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

    def accuracy(self, outputs, targets):  # logged as val/mae: the config monitors it, lower is better
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

# task kind: (model, data, the config lines the task needs beyond the class paths,
#        the metrics evaluate must report, the initial-loss check's verdict)
SHAPES = {
    "multi-label": (
        "DigitProperties",
        "DigitPropertiesData",
        [],
        ["exact_match", "label_accuracy", "f1_macro", "pr_auc_macro"],
        "log(2) per label",
    ),
    "regression": (
        "DigitValue",
        "DigitValueData",
        ["--checkpointing.monitor=val/mae", "--checkpointing.mode=min"],
        ["mean_squared_error", "mean_absolute_error", "r2"],
        "[SKIP] initial loss is that of even scores: a regression",
    ),
    "dense": ("InkLevels", "InkLevelData", [], ["positions", "accuracy", "mean_iou"], "log(3)"),
    "single-label": (
        "DictBatchClassifier",
        "DictBatchData",
        [],
        ["accuracy", "f1_macro", "pr_auc_macro", "expected_calibration_error"],
        "log(10)",
    ),
}
