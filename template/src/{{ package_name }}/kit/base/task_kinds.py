"""What a model predicts: the task kind that `evaluate`'s metrics, the sanity checks and the cards follow.

Managed by the copier-lightning template. Five kinds:

- "single-label": outputs (N, K) class scores, targets (N,) class indices (the digits example);
- "multi-label": outputs (N, K) one score per label, targets (N, K) of 0 and 1;
- "regression": outputs (N,) or (N, D) real values, targets of the same shape, floating point;
- "dense": outputs (N, K, ...) class scores per position (a pixel, a token), targets (N, ...) class
  indices (segmentation, tagging);
- "other": anything else (generative, contrastive, ...): `evaluate` refuses it, `test` still works.

A model says its kind with a class attribute, `task_kind = "multi-label"`; without one the kind is
read off one batch, from the shapes and types of its outputs and targets (`infer_task_kind`).

Batches are read as `(inputs, targets)` and predicted with `model(inputs)`. A model whose batches
are built otherwise (a dict, ids beside the tensors) defines one method, `inputs_and_targets(self,
batch)`, returning `(inputs, targets)` for a batch, the inputs as its forward() takes them;
`evaluate`, the checks, `export` and `budget` call it instead.
"""

from __future__ import annotations

from typing import Any

import torch

SINGLE_LABEL = "single-label"
MULTI_LABEL = "multi-label"
REGRESSION = "regression"
DENSE = "dense"
OTHER = "other"
TASK_KINDS = (SINGLE_LABEL, MULTI_LABEL, REGRESSION, DENSE, OTHER)


class TaskKindError(ValueError):
    """A model's declared task kind is not one of TASK_KINDS, or its batches cannot be read."""


def declared_task_kind(model: Any) -> str | None:
    """The model's `task_kind` attribute, checked; None when it declares none."""
    declared = getattr(model, "task_kind", None)
    if declared is not None and declared not in TASK_KINDS:
        raise TaskKindError(
            f"{type(model).__name__}.task_kind is {declared!r}; it must be one of {', '.join(map(repr, TASK_KINDS))}"
        )
    return declared


def is_binary(values: torch.Tensor) -> bool:
    """Whether every value is 0 or 1 (multi-label targets; the dataset card counts positives of such)."""
    return bool(((values == 0) | (values == 1)).all())


def fits_task_kind(kind: str, outputs: Any, targets: Any) -> bool:
    """Whether a batch's outputs and targets have the shapes and types of `kind` (see the module's docstring)."""
    if kind == OTHER:
        return True
    if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor) or outputs.ndim == 0:
        return False
    if targets.ndim == 0 or len(outputs) != len(targets):
        return False
    indices = not targets.is_floating_point() and targets.dtype != torch.bool
    if kind == SINGLE_LABEL:
        return indices and outputs.ndim == 2 and targets.ndim == 1 and outputs.shape[1] >= 2
    if kind == DENSE:
        return indices and outputs.ndim >= 3 and targets.shape == outputs.shape[:1] + outputs.shape[2:]
    if kind == MULTI_LABEL:
        return outputs.ndim == 2 and targets.shape == outputs.shape and is_binary(targets)
    per_example = outputs.reshape(len(outputs), -1).shape == targets.reshape(len(targets), -1).shape
    return kind == REGRESSION and outputs.ndim <= 2 and per_example


def infer_task_kind(outputs: Any, targets: Any) -> str:
    """The first kind whose shapes and types a batch's outputs and targets have; regression after the
    classifications (a multi-label target is real-valued too), "other" when none fits."""
    if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and outputs.shape[1] < 2:
        candidates = (REGRESSION,)  # one score per example: a regression (or a single binary label: declare it)
    else:
        candidates = (SINGLE_LABEL, DENSE, MULTI_LABEL, REGRESSION)
    return next((kind for kind in candidates if fits_task_kind(kind, outputs, targets)), OTHER)


def inputs_and_targets(model: Any, batch: Any) -> tuple[Any, Any]:
    """`(inputs, targets)` of one batch: the model's `inputs_and_targets` hook if it has one, else the batch's
    two items."""
    hook = getattr(model, "inputs_and_targets", None)
    if hook is not None:
        return hook(batch)
    if not (isinstance(batch, list | tuple) and len(batch) == 2):
        raise TaskKindError(
            f"{type(model).__name__}'s batches are {_described(batch)}, not (inputs, targets); give the model a "
            "method `inputs_and_targets(self, batch)` that returns (inputs, targets) for one batch, the inputs as "
            "forward() takes them"
        )
    return batch[0], batch[1]


def predictions_and_targets(model: Any, batch: Any) -> tuple[Any, Any]:
    """`(model(inputs), targets)` for one batch (see `inputs_and_targets`)."""
    inputs, targets = inputs_and_targets(model, batch)
    return model(inputs), targets


def task_kind(model: Any, batch: Any) -> str:
    """The model's declared kind, else the kind its outputs on `batch` have (one forward pass, no gradients)."""
    declared = declared_task_kind(model)
    if declared is not None:
        return declared
    with torch.no_grad():
        return infer_task_kind(*predictions_and_targets(model, batch))


def _described(batch: Any) -> str:
    if isinstance(batch, dict):
        return f"dicts with keys {', '.join(map(str, batch))}"
    if isinstance(batch, list | tuple):
        return f"{type(batch).__name__}s of {len(batch)} items"
    return type(batch).__name__ + "s"
