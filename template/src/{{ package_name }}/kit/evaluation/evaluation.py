"""Final evaluation: predictions computed once, every metric derived from them.

Managed by the copier-lightning template. `<package> evaluate` runs the checkpoint over a split
once, saves the class probabilities and labels to `runs/<run>/evaluation/<split>/predictions.pt`,
then derives accuracy, macro F1, macro PR-AUC, expected calibration error and the confusion matrix
from that file alone (torchmetrics), writing `metrics.csv`, `metrics.md` and `evaluation.png`.
Re-running it with the same checkpoint reuses the saved predictions: no forward pass at all.

It expects a classifier: batches `(inputs, labels)` and `model(inputs)` returning class logits;
another model (a regression) is refused with one message that says so.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import torch
import torchmetrics.functional.classification as tmf

from ..runs.checkpoint_files import one_file_checkpoint
from ..runs.checkpoint_io import atomic_torch_save


def checkpoint_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


class NotAClassifier(ValueError):
    """The model's outputs or the labels are not those of a K-class classifier."""


def refuse_non_classifier(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    if outputs.ndim == 2 and outputs.shape[-1] >= 2 and not targets.is_floating_point():
        return
    raise NotAClassifier(
        f"`evaluate` computes classification metrics (accuracy, F1, calibration, confusion matrix) and needs "
        f"K-class logits and integer labels; this model gives outputs of shape {tuple(outputs.shape)} and "
        f"labels of dtype {targets.dtype}. Use `test` for the metrics your test_step logs."
    )


@torch.no_grad()
def predict_probabilities(model, loader) -> dict[str, torch.Tensor]:
    """One forward pass over `loader`: class probabilities and the labels, on the CPU."""
    model.eval()
    probabilities, labels = [], []
    device = next(model.parameters()).device
    for inputs, targets in loader:
        outputs = model(inputs.to(device))
        if not probabilities:
            refuse_non_classifier(outputs, targets)
        probabilities.append(torch.softmax(outputs.float(), dim=-1).cpu())
        labels.append(targets.cpu())
    return {"probabilities": torch.cat(probabilities), "labels": torch.cat(labels)}


def metrics_from_predictions(predictions: dict[str, torch.Tensor]) -> dict[str, object]:
    """Every metric, from the saved probabilities and labels alone."""
    probabilities, labels = predictions["probabilities"], predictions["labels"]
    classes = probabilities.shape[1]
    return {
        "examples": int(labels.numel()),
        "accuracy": float(tmf.multiclass_accuracy(probabilities, labels, num_classes=classes, average="micro")),
        "f1_macro": float(tmf.multiclass_f1_score(probabilities, labels, num_classes=classes, average="macro")),
        "pr_auc_macro": float(tmf.multiclass_average_precision(probabilities, labels, num_classes=classes)),
        "expected_calibration_error": float(
            tmf.multiclass_calibration_error(probabilities, labels, num_classes=classes, n_bins=15)
        ),
        "confusion_matrix": tmf.multiclass_confusion_matrix(probabilities, labels, num_classes=classes),
    }


def write_reports(metrics: dict[str, object], predictions: dict[str, torch.Tensor], directory: Path) -> None:
    scalars = {name: value for name, value in metrics.items() if not isinstance(value, torch.Tensor)}
    with open(directory / "metrics.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["metric", "value"])
        writer.writerows(scalars.items())
    lines = ["| metric | value |", "|---|---|"]
    for name, value in scalars.items():
        lines.append(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
    (directory / "metrics.md").write_text("\n".join(lines) + "\n")
    plot_evaluation(metrics["confusion_matrix"], predictions, directory / "evaluation.png")


def plot_evaluation(confusion: torch.Tensor, predictions: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    image = left.imshow(confusion.numpy(), cmap="Blues")
    left.set(title="Confusion matrix", xlabel="predicted", ylabel="true")
    figure.colorbar(image, ax=left)
    confidence, predicted = predictions["probabilities"].max(dim=1)
    correct = (predicted == predictions["labels"]).float()
    edges = torch.linspace(0, 1, 11)
    centers, accuracies = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            centers.append(float(confidence[inside].mean()))
            accuracies.append(float(correct[inside].mean()))
    right.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    right.plot(centers, accuracies, "o-", label="model")
    right.set(title="Reliability", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def evaluate_checkpoint(model_class, checkpoint: Path, loader, directory: Path) -> dict[str, object]:
    """Predictions for `checkpoint` (computed once, then reused) and every metric derived from them.

    A sharded checkpoint (a directory) is read as its consolidated file (kit/runs/checkpoint_files.py)."""
    checkpoint = one_file_checkpoint(checkpoint)
    directory.mkdir(parents=True, exist_ok=True)
    saved = directory / "predictions.pt"
    fingerprint = checkpoint_fingerprint(checkpoint)
    predictions = torch.load(saved, weights_only=True) if saved.exists() else None
    if predictions is None or predictions.get("checkpoint") != fingerprint:
        model = model_class.load_from_checkpoint(checkpoint, map_location="cpu")
        predictions = {**predict_probabilities(model, loader), "checkpoint": fingerprint}
        atomic_torch_save(predictions, saved)
    metrics = metrics_from_predictions(predictions)
    write_reports(metrics, predictions, directory)
    return metrics
