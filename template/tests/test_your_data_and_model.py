"""Facts about your data and your model: yours to change when you replace the example.

`copier update` never touches this file. The example's facts: 1,797 digit images in three splits,
10 classes, batches of (images, labels) with integer labels.
"""

from __future__ import annotations

import torch


def test_batches_fit_the_model(model_and_data) -> None:
    model, data = model_and_data
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape[0] == labels.shape[0] == data.hparams.batch_size
    logits = model(images)
    assert logits.shape == (images.shape[0], model.hparams.num_classes)
    assert labels.dtype == torch.long
    assert int(labels.min()) >= 0 and int(labels.max()) < model.hparams.num_classes


def test_splits_do_not_overlap(model_and_data) -> None:
    _, data = model_and_data
    rows = {name: {tuple(x.flatten().tolist()) + (int(y),) for x, y in split} for name, split in data.splits.items()}
    # Digits has a few duplicate images, so compare sizes rather than demand disjoint contents.
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sum(sizes.values()) == 1797
    assert min(sizes.values()) > 0
    assert len(rows["train"] & rows["test"]) <= 5
