"""Final evaluation: predictions computed once, every metric derived from them.

Managed by the copier-lightning template. `<package> evaluate` runs the checkpoint over a split
once, saves its predictions and the targets to `runs/<run>/evaluation/<split>/predictions.pt`,
then derives the metrics of the model's task kind (kit/base/task_kinds.py) from that file alone
(torchmetrics), writing `metrics.csv`, `metrics.md` and `evaluation.png`:

- single-label: accuracy, macro F1, macro PR-AUC, expected calibration error, confusion matrix;
- multi-label: exact match, per-label accuracy, macro F1, macro PR-AUC;
- regression: mean squared error, mean absolute error, R^2;
- dense: accuracy over positions, mean intersection over union, confusion matrix.

Re-running it with the same checkpoint reuses the saved predictions: no forward pass at all. A
model of kind "other" is refused with one message: its own `test_step` knows its metrics.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import torch
import torchmetrics.functional as tm
import torchmetrics.functional.classification as tmf
from lightning.fabric.utilities.apply_func import move_data_to_device

from ..base.task_kinds import (
    DENSE,
    MULTI_LABEL,
    OTHER,
    REGRESSION,
    SINGLE_LABEL,
    declared_task_kind,
    fits_task_kind,
    infer_task_kind,
    predictions_and_targets,
)
from ..runs.checkpoint_files import one_file_checkpoint
from ..runs.checkpoint_io import atomic_torch_save


def checkpoint_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


class NotEvaluable(ValueError):
    """The model's outputs and targets are not those of a task kind `evaluate` has metrics for."""


NotAClassifier = NotEvaluable  # the name before task kinds (a project's code may catch it)


def _refuse(kind: str, outputs, targets) -> None:
    shapes = (
        f"outputs of shape {tuple(outputs.shape)} and targets of shape {tuple(targets.shape)}, dtype {targets.dtype}"
        if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)
        else f"outputs of type {type(outputs).__name__} and targets of type {type(targets).__name__}"
    )
    reading = "which fit none of them" if kind == OTHER else f"which do not fit the task kind {kind!r}"
    raise NotEvaluable(
        f"`evaluate` has the metrics of single-label, multi-label, regression and dense tasks; this model gives "
        f"{shapes}, {reading}. If the model does one of those tasks, say which in its class "
        '(task_kind = "regression", ...); otherwise `test` gives the metrics its test_step logs.'
    )


def _scores(kind: str, outputs: torch.Tensor) -> torch.Tensor:
    """What is kept of a batch's outputs: probabilities, predicted classes per position, or the values."""
    outputs = outputs.detach().float().cpu()
    if kind == SINGLE_LABEL:
        return torch.softmax(outputs, dim=-1)
    if kind == MULTI_LABEL:
        return torch.sigmoid(outputs)
    if kind == DENSE:  # class indices, not K probabilities per position: a segmentation's would not fit
        return outputs.argmax(dim=1).to(torch.int16 if outputs.shape[1] < 2**15 else torch.int64)
    return outputs.reshape(len(outputs), -1).squeeze(-1)


@torch.no_grad()
def predict(model, loader) -> dict[str, object]:
    """One forward pass over `loader`: the task kind, the kept outputs (see `_scores`) and the targets, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    kind, scores, targets = declared_task_kind(model), [], []
    for batch in loader:
        outputs, batch_targets = predictions_and_targets(model, move_data_to_device(batch, device))
        kind = kind or infer_task_kind(outputs, batch_targets)
        if kind == OTHER or not fits_task_kind(kind, outputs, batch_targets):
            _refuse(kind, outputs, batch_targets)
        scores.append(_scores(kind, outputs))
        batch_targets = batch_targets.cpu()
        if kind == REGRESSION:  # (N,), (N, 1) and (N, D) targets kept as the outputs are: one row per example
            batch_targets = batch_targets.reshape(len(batch_targets), -1).squeeze(-1)
        targets.append(batch_targets)
    return {"task_kind": kind, "scores": torch.cat(scores), "targets": torch.cat(targets)}


def metrics_from_predictions(predictions: dict[str, object]) -> dict[str, object]:
    """Every metric of the task kind, from the saved predictions and targets alone."""
    kind, scores, targets = predictions["task_kind"], predictions["scores"], predictions["targets"]
    common = {"task_kind": kind, "examples": len(targets)}
    if kind == SINGLE_LABEL:
        classes = scores.shape[1]
        return {
            **common,
            "accuracy": float(tmf.multiclass_accuracy(scores, targets, num_classes=classes, average="micro")),
            "f1_macro": float(tmf.multiclass_f1_score(scores, targets, num_classes=classes, average="macro")),
            "pr_auc_macro": float(tmf.multiclass_average_precision(scores, targets, num_classes=classes)),
            "expected_calibration_error": float(
                tmf.multiclass_calibration_error(scores, targets, num_classes=classes, n_bins=15)
            ),
            "confusion_matrix": tmf.multiclass_confusion_matrix(scores, targets, num_classes=classes),
        }
    if kind == MULTI_LABEL:
        labels, truth = scores.shape[1], targets.int()
        return {
            **common,
            "exact_match": float(tmf.multilabel_exact_match(scores, truth, num_labels=labels)),
            "label_accuracy": float(tmf.multilabel_accuracy(scores, truth, num_labels=labels, average="micro")),
            "f1_macro": float(tmf.multilabel_f1_score(scores, truth, num_labels=labels, average="macro")),
            "pr_auc_macro": float(tmf.multilabel_average_precision(scores, truth, num_labels=labels, average="macro")),
            "f1_per_label": tmf.multilabel_f1_score(scores, truth, num_labels=labels, average="none"),
        }
    if kind == REGRESSION:
        values, truth = scores.float(), targets.float()
        return {
            **common,
            "mean_squared_error": float(tm.mean_squared_error(values, truth)),
            "mean_absolute_error": float(tm.mean_absolute_error(values, truth)),
            "r2": float(tm.r2_score(values.reshape(len(values), -1), truth.reshape(len(truth), -1))),
        }
    predicted, truth = scores.long().flatten(), targets.long().flatten()
    classes = int(max(predicted.max(), truth.max())) + 1
    return {
        **common,
        "positions": int(truth.numel()),
        "accuracy": float(tmf.multiclass_accuracy(predicted, truth, num_classes=classes, average="micro")),
        "mean_iou": float(tmf.multiclass_jaccard_index(predicted, truth, num_classes=classes, average="macro")),
        "confusion_matrix": tmf.multiclass_confusion_matrix(predicted, truth, num_classes=classes),
    }


def write_reports(metrics: dict[str, object], predictions: dict[str, object], directory: Path) -> None:
    scalars = {name: value for name, value in metrics.items() if not isinstance(value, torch.Tensor)}
    with open(directory / "metrics.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["metric", "value"])
        writer.writerows(scalars.items())
    lines = ["| metric | value |", "|---|---|"]
    for name, value in scalars.items():
        lines.append(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
    (directory / "metrics.md").write_text("\n".join(lines) + "\n")
    plot_evaluation(metrics, predictions, directory / "evaluation.png")


def plot_evaluation(metrics: dict[str, object], predictions: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = predictions["task_kind"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    if "confusion_matrix" in metrics:
        image = left.imshow(metrics["confusion_matrix"].numpy(), cmap="Blues")
        left.set(title="Confusion matrix" + (" over positions" if kind == DENSE else ""), xlabel="predicted")
        left.set(ylabel="true")
        figure.colorbar(image, ax=left)
    if kind == SINGLE_LABEL:
        _reliability(right, predictions["scores"], predictions["targets"])
    elif kind == MULTI_LABEL:
        f1 = metrics["f1_per_label"]
        left.bar(range(len(f1)), f1.numpy())
        left.set(title="F1 per label", xlabel="label", ylabel="F1", ylim=(0, 1))
        _reliability(right, predictions["scores"].flatten(), predictions["targets"].flatten(), binary=True)
    elif kind == REGRESSION:
        values, truth = predictions["scores"].flatten().numpy(), predictions["targets"].flatten().numpy()
        left.scatter(truth, values, s=6, alpha=0.5)
        low, high = float(min(truth.min(), values.min())), float(max(truth.max(), values.max()))
        left.plot([low, high], [low, high], "--", color="grey", label="perfect")
        left.set(title="Predicted against true", xlabel="true", ylabel="predicted")
        left.legend()
        right.hist(values - truth, bins=30)
        right.set(title="Errors (predicted - true)", xlabel="error", ylabel="examples")
    else:
        right.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _reliability(axes, probabilities: torch.Tensor, targets: torch.Tensor, binary: bool = False) -> None:
    """Accuracy against confidence in ten bins: a calibrated model lies on the diagonal."""
    if binary:
        predicted = (probabilities >= 0.5).long()
        confidence = torch.where(predicted.bool(), probabilities, 1 - probabilities)
    else:
        confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == targets.long()).float()
    edges = torch.linspace(0, 1, 11)
    centers, accuracies = [], []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            centers.append(float(confidence[inside].mean()))
            accuracies.append(float(correct[inside].mean()))
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.plot(centers, accuracies, "o-", label="model")
    axes.set(title="Reliability", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.legend()


def evaluate_checkpoint(model_class, checkpoint: Path, loader, directory: Path) -> dict[str, object]:
    """Predictions for `checkpoint` (computed once, then reused) and every metric derived from them.

    A sharded checkpoint (a directory) is read as its consolidated file (kit/runs/checkpoint_files.py)."""
    checkpoint = one_file_checkpoint(checkpoint)
    directory.mkdir(parents=True, exist_ok=True)
    saved = directory / "predictions.pt"
    fingerprint = checkpoint_fingerprint(checkpoint)
    predictions = torch.load(saved, weights_only=True) if saved.exists() else None
    if predictions is None or predictions.get("checkpoint") != fingerprint or "task_kind" not in predictions:
        model = model_class.load_from_checkpoint(checkpoint, map_location="cpu")
        predictions = {**predict(model, loader), "checkpoint": fingerprint}
        atomic_torch_save(predictions, saved)
    metrics = metrics_from_predictions(predictions)
    write_reports(metrics, predictions, directory)
    return metrics
