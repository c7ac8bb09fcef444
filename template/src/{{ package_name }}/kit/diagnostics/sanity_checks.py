"""The checks every deep-learning course teaches, run against any LightningModule and DataModule.

Managed by the copier-lightning template. Each check takes a *fresh* model (it may train it) and a
data module, and returns a CheckResult saying what it measured and, when it fails, where to look.
`<package> check` prints them; the project's tests assert them.
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from ..base.your_code import one_line
from ..runs.identity import AUTO
from ..training.fit_policies import better_direction
from ..training.monitor_choice import choose_monitor, described
from ..training.scratch_trainer import scratch_trainer


@dataclass
class CheckResult:
    name: str
    passed: bool | None  # None: the check does not apply to this model
    detail: str
    hint: str = ""

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        text = f"[{mark}] {self.name}: {self.detail}"
        return text + (f"\n       what to look at: {self.hint}" if self.passed is False and self.hint else "")


# -- helpers -------------------------------------------------------------------------------------
def first_training_batch(data: pl.LightningDataModule) -> Any:
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def training_loss(model: pl.LightningModule, batch: Any) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer warns; the value is what matters
        output = model.training_step(batch, 0)
    return output["loss"] if isinstance(output, dict) else output


def model_optimizer(model: pl.LightningModule) -> torch.optim.Optimizer:
    """The optimizer the model configures (some configurations read the trainer, so one is attached)."""
    model.trainer = scratch_trainer(max_epochs=1)
    try:
        configured = model.configure_optimizers()
    finally:
        model.trainer = None
    while isinstance(configured, list | tuple):
        configured = configured[0]
    if isinstance(configured, dict):
        configured = configured["optimizer"]
    if not isinstance(configured, torch.optim.Optimizer):
        raise TypeError(f"configure_optimizers returned {type(configured).__name__}, not an optimizer")
    return configured


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    saved = [layer.p for layer in layers]
    for layer in layers:
        layer.p = 0.0
    try:
        yield
    finally:
        for layer, p in zip(layers, saved, strict=True):
            layer.p = p


def expected_initial_loss(model: pl.LightningModule, batch: Any) -> tuple[float, str] | str:
    """The loss an untrained model of this task kind starts near, and how it is written; or why there is none.

    A classifier that knows nothing spreads its scores evenly: cross-entropy log(K) for K classes (per
    position for a dense task), binary cross-entropy log(2) per label for a multi-label one."""
    from ..base.task_kinds import DENSE, MULTI_LABEL, REGRESSION, SINGLE_LABEL, predictions_and_targets, task_kind

    kind = task_kind(model, batch)
    if kind == MULTI_LABEL:
        return math.log(2), "log(2) per label"
    if kind == REGRESSION:
        return "a regression: the starting loss depends on the scale of the targets"
    if kind not in (SINGLE_LABEL, DENSE):
        return f"task kind {kind!r}: no loss that an untrained model is known to start at"
    declared = getattr(model, "hparams", {}).get("num_classes")
    if declared and kind == SINGLE_LABEL:
        classes = int(declared)
    else:
        with torch.no_grad():
            classes = int(predictions_and_targets(model, batch)[0].shape[1])
    return math.log(classes), f"log({classes})"


def pretrained_base(model: pl.LightningModule) -> str | None:
    """The base model this model was built from, if its hyperparameters name one this process loaded from the
    weight cache (kit/weights/)."""
    from ..weights.cache import resolved_sources

    named = {str(value) for value in dict(getattr(model, "hparams", {})).values() if isinstance(value, str)}
    return next((model_id for model_id in resolved_sources() if model_id in named), None)


def manual_optimization_skip(name: str, model: pl.LightningModule) -> CheckResult | None:
    """A SKIP for checks that call training_step alone: with manual optimization it steps its own
    optimizers (`self.optimizers()`), which exist only inside a Trainer."""
    if model.automatic_optimization:
        return None
    return CheckResult(name, None, "manual optimization: training_step needs a Trainer, so it is not called alone here")


# -- the checks ----------------------------------------------------------------------------------
def check_initial_loss(model: pl.LightningModule, data: pl.LightningDataModule, tolerance: float = 0.25) -> CheckResult:
    """A classifier should start near the loss of even scores (log(K) for K classes, log(2) per label for a
    multi-label one): it knows nothing and says so evenly. Other task kinds have no such value: SKIP."""
    name = "initial loss is that of even scores"
    if skipped := manual_optimization_skip(name, model):
        return skipped
    if base := pretrained_base(model):
        return CheckResult(
            name, None, f"starts from pretrained weights ({base}): log(K) is the loss of a model that knows nothing"
        )
    batch = first_training_batch(data)
    with dropout_off(model):
        expected = expected_initial_loss(model, batch)
        if isinstance(expected, str):
            return CheckResult(name, None, expected)
        with torch.no_grad():
            loss = float(training_loss(model, batch))
    expected_loss, written = expected
    passed = abs(loss - expected_loss) <= tolerance * expected_loss
    return CheckResult(
        name,
        passed,
        f"initial loss {loss:.3f}, {written} = {expected_loss:.3f} (allowed +-{100 * tolerance:.0f} %)",
        "the output layer's initialisation (a large bias or weight scale), the loss function, or labels out of range",
    )


def check_overfits_one_batch(
    model: pl.LightningModule, data: pl.LightningDataModule, max_steps: int = 300, required_drop: float = 0.9
) -> CheckResult:
    """With dropout off, the model must drive the loss on one fixed batch down by 90 %."""
    name = "overfits one batch"
    if skipped := manual_optimization_skip(name, model):
        return skipped
    batch = first_training_batch(data)
    optimizer = model_optimizer(model)
    model.train()
    with dropout_off(model):
        initial = float(training_loss(model, batch).detach())
        loss, steps = initial, 0
        while steps < max_steps and loss > (1 - required_drop) * initial:
            steps += 1
            optimizer.zero_grad(set_to_none=True)
            loss_tensor = training_loss(model, batch)
            loss_tensor.backward()
            optimizer.step()
            loss = float(loss_tensor.detach())
    drop = 1 - loss / initial if initial else 0.0
    return CheckResult(
        name,
        drop >= required_drop,
        f"loss {initial:.3f} -> {loss:.4f} ({100 * drop:.1f} % lower) in {steps} steps "
        f"(needs {100 * required_drop:.0f} % within {max_steps})",
        "the learning rate, a layer cut off from the loss, labels that do not match inputs, or too small a model",
    )


def check_gradients_reach_every_parameter(model: pl.LightningModule, data: pl.LightningDataModule) -> CheckResult:
    """Every trainable tensor gets a gradient: at once, or after one optimizer step for a tensor whose
    gradient is zero only because a layer after it starts at zero (LoRA's B matrices do, by design)."""
    name = "gradients reach every trainable parameter"
    if skipped := manual_optimization_skip(name, model):
        return skipped
    batch = first_training_batch(data)
    model.train()
    missing = _without_gradient(model, batch)
    if any(parameter.grad is not None for parameter in missing.values()):
        optimizer = model_optimizer(model)  # held: a scheduler wraps its step with a weak reference to it
        optimizer.step()
        missing = {name: parameter for name, parameter in _without_gradient(model, batch).items() if name in missing}
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    return CheckResult(
        name,
        not missing,
        f"{trainable - len(missing)} of {trainable} trainable tensors got a gradient"
        + (f"; none for: {', '.join(list(missing)[:8])}" if missing else ""),
        "a .detach(), torch.no_grad() or .item() on the path to the loss, or layers that forward() never uses "
        "(freeze them with requires_grad_(False) if that is intended)",
    )


def _without_gradient(model: pl.LightningModule, batch: Any) -> dict[str, nn.Parameter]:
    """The trainable parameters whose gradient, after one backward pass on `batch`, is missing or all zero."""
    model.zero_grad(set_to_none=True)
    training_loss(model, batch).backward()
    return {
        parameter_name: parameter
        for parameter_name, parameter in model.named_parameters()
        if parameter.requires_grad and (parameter.grad is None or not bool(parameter.grad.abs().sum()))
    }


def _tensors_with_graph(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.grad_fn is not None
    if isinstance(value, list | tuple):
        return any(_tensors_with_graph(v) for v in value)
    if isinstance(value, dict):
        return any(_tensors_with_graph(v) for v in value.values())
    return False


def check_logged_values_hold_no_graph(model: pl.LightningModule, data: pl.LightningDataModule) -> CheckResult:
    """Logged or stored values that keep their autograd graph keep every step's activations alive."""
    name = "logged and stored values hold no graph"
    if skipped := manual_optimization_skip(name, model):
        return skipped
    batch = first_training_batch(data)
    logged_with_graph: list[str] = []

    def recording_log(log_name: str, value: Any, *args: Any, enable_graph: bool = False, **kwargs: Any) -> None:
        if enable_graph and _tensors_with_graph(value):
            logged_with_graph.append(log_name)

    model.train()
    model.log = recording_log  # type: ignore[method-assign]
    try:
        training_loss(model, batch)
    finally:
        del model.log
    stored = [
        f"{module_name or 'model'}.{attribute}"
        for module_name, module in model.named_modules()
        for attribute, value in vars(module).items()
        if not attribute.startswith("_") and _tensors_with_graph(value)
    ]
    problems = [f"logged with enable_graph: {n}" for n in logged_with_graph] + [f"stored: {s}" for s in stored]
    return CheckResult(
        name,
        not problems,
        "; ".join(problems) if problems else "no logged value or module attribute keeps a graph after a step",
        "detach values before keeping them (loss.detach(), or .item() at the logging interval); "
        "do not pass enable_graph=True to self.log",
    )


class _ModeProbe(pl.Callback):
    def __init__(self) -> None:
        self.eval_during_training: set[str] = set()
        self.train_during_validation: set[str] = set()
        self.validated = False

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.eval_during_training |= {n or "model" for n, m in pl_module.named_modules() if not m.training}

    @override
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.validated = True
        self.train_during_validation |= {n or "model" for n, m in pl_module.named_modules() if m.training}


def check_modes_and_checkpoint(
    model: pl.LightningModule, data: pl.LightningDataModule, monitor: str | None = None
) -> list[CheckResult]:
    """Two epochs of two batches: validation in eval mode, training back in train mode, the
    checkpoint written afterwards holds the optimizer state, and (given `monitor`, the config's
    checkpointing.monitor) validation logs the metric that checkpoints and early stopping follow."""
    probe = _ModeProbe()
    trainer = scratch_trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[probe]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    modes = CheckResult(
        "validation runs in eval mode, training in train mode",
        probe.validated and not probe.eval_during_training and not probe.train_during_validation,
        (
            f"in train mode during validation: {sorted(probe.train_during_validation) or 'none'}; "
            f"in eval mode during training: {sorted(probe.eval_during_training) or 'none'}"
        ),
        "a .train() or .eval() call in a hook or in __init__ (BatchNorm and Dropout behave differently per mode)",
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "check.ckpt"
        trainer.save_checkpoint(path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    states = checkpoint.get("optimizer_states") or []
    # One saved state per optimizer, each as full as the optimizer's own: plain SGD keeps none, Adam two per weight.
    live = [len(optimizer.state) for optimizer in trainer.optimizers]
    saved = [len(state.get("state", {})) for state in states]
    has_state = bool(states) and saved == live and all("param_groups" in state for state in states)
    optimizer_state = CheckResult(
        "the checkpoint holds the optimizer state",
        has_state,
        f"{len(states)} optimizer state(s) with {sum(saved)} parameter entries; the {len(live)} optimizer(s) "
        f"hold {sum(live)}",
        "on_save_checkpoint dropping 'optimizer_states', or checkpoints saved with weights_only / save_weights_only",
    )
    results = [modes, optimizer_state]
    if monitor == AUTO:
        chosen = choose_monitor(trainer.callback_metrics)
        followed = (
            described(chosen, better_direction(chosen))
            if chosen
            else "none, validation logs no metric: rolling and final checkpoints only"
        )
        results.append(CheckResult("the metric checkpoints follow (checkpointing.monitor: auto)", True, followed))
    elif monitor is not None:
        logged = sorted(name for name in trainer.callback_metrics if not name.startswith("train"))
        loss = next((name for name in logged if name.endswith("loss")), None)  # a loss fits any task kind
        results.append(
            CheckResult(
                "validation logs the monitored metric",
                monitor in trainer.callback_metrics,
                f"checkpointing.monitor is {monitor!r}; validation logs: {', '.join(logged) or 'nothing'}",
                "set checkpointing.monitor in configs/default.yaml to a metric validation_step logs, with "
                "checkpointing.mode (min for a loss or an error, max for an accuracy)"
                + (f", e.g. --checkpointing.monitor={loss} --checkpointing.mode=min" if loss else ""),
            )
        )
    return results


SINGLE_CHECKS: list[Callable[[pl.LightningModule, pl.LightningDataModule], CheckResult]] = [
    check_initial_loss,
    check_overfits_one_batch,
    check_gradients_reach_every_parameter,
    check_logged_values_hold_no_graph,
]


def run_all_checks(
    model: pl.LightningModule, data: pl.LightningDataModule, monitor: str | None = None
) -> list[CheckResult]:
    """Every check, each on its own copy of the untrained model (`monitor`: see check_modes_and_checkpoint).

    A check that raises (a shape mismatch in forward, say) fails with the error's first line, cause
    first for a chained one, and the other checks still run."""
    results = [_raising_as_failure(check.__name__, check, copy.deepcopy(model), data) for check in SINGLE_CHECKS]
    last = _raising_as_failure("modes and checkpoint", check_modes_and_checkpoint, copy.deepcopy(model), data, monitor)
    return results + (last if isinstance(last, list) else [last])


def _raising_as_failure(name: str, check: Callable[..., Any], *args: Any) -> Any:
    try:
        return check(*args)
    except Exception as error:  # noqa: BLE001 - reported as the check's result; the next check runs
        label = name.removeprefix("check_").replace("_", " ")
        detail = f"raised {one_line(error)}"
        return CheckResult(label, False, detail, "the error's traceback: `fit` with the same config shows it")
