"""Find the checkpoint to resume from. Managed by the copier-lightning template.

The newest checkpoint is the one with the highest stored global step, not the newest file time
(copies and restores change file times). `on_exception.ckpt` is never resumed from: an error can
strike mid-step (half an optimizer update, a skipped validation), so it is kept for post-mortem
only, and the run continues from the last checkpoint written at a batch or epoch boundary.
A file that cannot be read is moved aside, not deleted, with a warning naming it, and the next
one is tried.

The checkpoint an evaluation uses (`test`, `evaluate`, `export`, `predict-files`, ...) is chosen
here too, by one rule (`checkpoint_to_use`): the `--ckpt_path` given, which must exist; else the
run's best intact checkpoint; else a refusal that says what to do. The run's own checkpoint is not
scored on data other than the data it was trained on (`refuse_other_training_data`).
"""

from __future__ import annotations

import importlib
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..base.project_package import CONSOLE_SCRIPT
from ..weights.cache import refuse_other_base_weights
from .checksums import checkpoint_checksum
from .directory import (
    CHECKPOINT_SUFFIX,
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    ON_EXCEPTION_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    RunDirectory,
)
from .sharded_checkpoints import consolidated_checkpoint, is_sharded_checkpoint, read_sharded_states

QUARANTINE_DIRNAME = "unreadable"
# At equal global steps prefer the rolling checkpoint over a best-k copy (any other file name: 1).
PREFERENCE_AT_EQUAL_STEPS = {
    LAST_CHECKPOINT: 3,
    FINAL_CHECKPOINT: 3,
    PREVIOUS_CHECKPOINT: 2,
    ON_EXCEPTION_CHECKPOINT: 0,
}
BEST_K_PREFERENCE = 1
POST_MORTEM_ONLY = (ON_EXCEPTION_CHECKPOINT,)


class UnreadableCheckpointWarning(UserWarning):
    """A checkpoint file could not be read, or its checksum did not match, and it was moved aside."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    global_step: int
    epoch: int
    # The saved positions of stateful training loaders (ResumableDataLoader.state_dict), if any.
    loader_states: tuple[dict, ...] = ()
    # The model's class as LightningCLI recorded it in the hyperparameters ("package.module.Class"), if it did.
    model_class: str | None = None

    @property
    def preference(self) -> int:
        """Which file wins at equal global steps (directory.py names the files)."""
        return PREFERENCE_AT_EQUAL_STEPS.get(self.path.name, BEST_K_PREFERENCE)


def read_checkpoint_info(path: Path) -> CheckpointInfo:
    """Read the step counters of a checkpoint; raises if the file is truncated or corrupt, or a
    sharded checkpoint (a directory) incomplete."""
    if is_sharded_checkpoint(path):
        checkpoint = read_sharded_states(path)
    else:
        # mmap reads the archive index and the small entries, not every tensor: cheap on big files,
        # and a truncated zip archive still fails here because its index sits at the end.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
    return CheckpointInfo(
        path=path,
        global_step=int(checkpoint["global_step"]),
        epoch=int(checkpoint["epoch"]),
        loader_states=tuple(loops.get("combined_loader", ())),
        model_class=(checkpoint.get("hyper_parameters") or {}).get("_class_path"),
    )


def move_aside(path: Path) -> Path:
    """Move an unreadable checkpoint into `<dir>/unreadable/` and return its new path."""
    quarantine = path.parent / QUARANTINE_DIRNAME
    quarantine.mkdir(exist_ok=True)
    target = quarantine / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    path.replace(target)
    return target


def readable_checkpoints(directory: Path, move_unreadable: bool = True) -> list[CheckpointInfo]:
    """All readable checkpoints in `directory`; unreadable ones are skipped with a warning and moved aside.

    move_unreadable: False in every DDP process but rank 0, which alone moves files.
    """
    found = []
    for path in sorted(directory.glob(f"*{CHECKPOINT_SUFFIX}")):
        try:
            found.append(read_checkpoint_info(path))
        except Exception as error:  # noqa: BLE001 - any failure to read means "do not resume from it"
            if not move_unreadable:
                continue
            moved_to = move_aside(path)
            warnings.warn(
                f"Checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                f"moved it to {moved_to} and resuming from the previous checkpoint instead.",
                UnreadableCheckpointWarning,
                stacklevel=2,
            )
    return found


def newest_checkpoint(
    directory: Path,
    move_unreadable: bool = True,
    is_intact: Callable[[CheckpointInfo], bool | None] | None = None,
) -> CheckpointInfo | None:
    """The checkpoint to resume from: highest global step, then the preferred kind; None if none.

    is_intact: checks a candidate's checksum (None: no checksum to check); a candidate that fails is
    moved aside with a warning and the next one is tried.
    """
    if not directory.is_dir():
        return None
    candidates = [c for c in readable_checkpoints(directory, move_unreadable) if c.path.name not in POST_MORTEM_ONLY]
    for candidate in sorted(candidates, key=lambda info: (info.global_step, info.preference), reverse=True):
        if is_intact is None or is_intact(candidate) is not False:
            return candidate
        set_aside_damaged(candidate.path, move_unreadable)
    return None


def set_aside_damaged(path: Path, move: bool = True) -> None:
    """Move aside (when `move`) a checkpoint whose checksum is not the one recorded, with a warning."""
    where = f"moved it to {move_aside(path)}" if move else "skipped it"
    warnings.warn(
        f"Checkpoint {path} is damaged: its checksum is not the one recorded when it was written (it still "
        f"loads, but its contents changed on disk); {where} and using the previous checkpoint instead.",
        UnreadableCheckpointWarning,
        stacklevel=2,
    )


class MissingTrainedRun(Exception):
    """An evaluation found no checkpoint to use: the run has none, or --ckpt_path names no file."""


def best_checkpoint(run: RunDirectory) -> Path | None:
    """The best intact checkpoint by the monitored metric, else final.ckpt, else last.ckpt.

    A checkpoint whose checksum is not the one recorded is moved aside (warning) and the next one taken.
    """
    entries = run.read_manifest().get("checkpoints", {})
    for name in run.checkpoints_best_first():
        path = run.checkpoint_dir / name
        if not path.exists():
            continue
        if run.checksum_verdict(path, int(entries.get(name, {}).get("step", 0))) is False:
            set_aside_damaged(path)
            continue
        return path
    return None


class TrainedOnOtherData(MissingTrainedRun):
    """The data configured now is not the data the run's checkpoints were trained on."""


def refuse_other_training_data(run: RunDirectory, data: object, action: str) -> None:
    """Refuse to `action` the run's own checkpoint with a data module whose fingerprint (raw files, feature
    code, parameters) differs from the one the run recorded when it started: a changed split can move
    training examples into the test split, and the score would mean nothing. Naming a checkpoint with
    --ckpt_path is how to score it on other data on purpose."""
    fingerprint = getattr(data, "data_fingerprint", None)
    if not callable(fingerprint):
        return  # a data module without a fingerprint: nothing to compare (the run recorded none either)
    trained_on = run.last_start().get("data_fingerprint")
    if trained_on is None:
        return
    try:
        now = fingerprint()
    except OSError:  # raw data missing: the data module's own loading says so, with how to fetch it
        return
    if now == trained_on:
        return
    recorded = (run.recorded_config().get("data") or {}).get("init_args") or {}
    current = {name: value for name, value in dict(getattr(data, "hparams", {})).items() if not name.startswith("_")}
    changed = [
        f"{name}: {recorded.get(name)!r} -> {current.get(name)!r}"
        for name in sorted(set(recorded) | set(current))
        if recorded.get(name) != current.get(name)
    ]
    raise TrainedOnOtherData(
        f"Run '{run.name}' was trained on data {trained_on}; the data configured now is {now} "
        f"({'; '.join(changed) if changed else 'the raw files or the feature code changed'}). Its checkpoint is not "
        f"scored on other data: a changed split can put training examples in the test split. Restore the data "
        f"settings, train a new run (--run_name NEW_NAME), or name the checkpoint with --ckpt_path to {action} "
        "it on this data on purpose."
    )


class TrainedAnotherModel(MissingTrainedRun):
    """The run's checkpoints hold another model class than the one this command builds."""


def _is_class(class_path: str, cls: type) -> bool:
    """Whether `class_path` names `cls` (importing it: a class re-exported elsewhere has two paths)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) is cls
    except (ImportError, AttributeError):
        return name == cls.__qualname__


def refuse_another_model_class(run: RunDirectory, model: object, action: str) -> None:
    """Refuse to `action` the run's own checkpoint with a model of another class than the run trained: its
    weights would not load (Lightning says so in forty lines), or worse, load into a look-alike."""
    recorded = (run.recorded_config().get("model") or {}).get("class_path")
    if model is None or recorded is None or _is_class(recorded, type(model)):
        return
    raise TrainedAnotherModel(
        f"Run '{run.name}' trained {recorded}; this command builds {_class_path(model)}. Name the run's model as "
        f"it was trained (--model {recorded}, or --config {run.config_path}, the run's own settings) to {action} it."
    )


def refuse_unreadable_checkpoint(path: Path) -> CheckpointInfo:
    """MissingTrainedRun, in one line, for a file named with --ckpt_path that does not read as a checkpoint
    (another file, a truncated or damaged one): loading it would end in a traceback from deep in torch.load.
    The read is the cheap one of read_checkpoint_info (the archive's index and small entries); what it read
    is returned, for the checks that follow."""
    if not zipfile.is_zipfile(path):  # torch's own words for these are "Invalid argument" and the like
        problem = "not the zip archive torch.save writes: another kind of file, or a checkpoint cut short"
    else:
        try:
            return read_checkpoint_info(path)
        except Exception as error:  # noqa: BLE001 - whatever torch.load says of a damaged archive
            said = str(error).strip().splitlines()
            problem = type(error).__name__ + (f": {said[0]}" if said else "")
    raise MissingTrainedRun(
        f"--ckpt_path {path} does not read as a checkpoint ({problem}). `{CONSOLE_SCRIPT} runs` lists every "
        "run's checkpoints; leave --ckpt_path out to use the run's best one."
    )


def refuse_checkpoint_of_another_class(
    checkpoint: Path, model: object, action: str, info: CheckpointInfo | None = None
) -> None:
    """The same refusal for a checkpoint named with --ckpt_path, by the class LightningCLI recorded in it
    (`info`: the checkpoint's, if read already).

    (`test --ckpt_path` builds the checkpoint's own class, as Lightning does; `evaluate` builds the
    configured one, so a checkpoint of another class is refused here rather than half loaded.)"""
    if model is None:
        return
    try:
        recorded = (info or read_checkpoint_info(checkpoint)).model_class
    except Exception:  # noqa: BLE001 - unreadable: loading it says why, in its own words
        return
    if recorded is None or _is_class(recorded, type(model)):
        return
    raise TrainedAnotherModel(
        f"{checkpoint} holds a {recorded}; this command builds {_class_path(model)}. Name the checkpoint's model "
        f"(--model {recorded}) to {action} it."
    )


def _class_path(model: object) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def checkpoint_to_use(
    run: RunDirectory,
    ckpt_path: str | Path | None,
    action: str,
    one_file: bool = True,
    data: object = None,
    model: object = None,
) -> Path:
    """The checkpoint to `action` (evaluate, export, ...): `ckpt_path` if given, else the run's best.

    one_file: a sharded checkpoint is returned as its consolidated file (kit/runs/sharded_checkpoints.py);
    False (a fit starting from it) returns it as it is.
    Raises MissingTrainedRun, with what to do, when `ckpt_path` names no checkpoint or the run has none;
    TrainedAnotherModel when `model` (what it is to be used with) is not the class the run trained, or the
    class recorded in the named `ckpt_path`; TrainedOnOtherData when `data` is not the data the run trained
    and no `ckpt_path` was named; WeightsError when the model built here started from other base weights
    than the run's.
    """
    refuse_other_base_weights(run.name, run.recorded_pretrained(), action)
    given_info = None  # what refuse_unreadable_checkpoint read of a named file
    if ckpt_path:
        if not Path(ckpt_path).is_file() and not is_sharded_checkpoint(ckpt_path):
            raise MissingTrainedRun(
                f"--ckpt_path {ckpt_path}: no such file. `{CONSOLE_SCRIPT} runs` lists every run's checkpoints; "
                "leave --ckpt_path out to use the run's best one."
            )
        chosen = Path(ckpt_path)
        if chosen.is_file():
            given_info = refuse_unreadable_checkpoint(chosen)
    else:
        refuse_another_model_class(run, model, action)
        refuse_other_training_data(run, data, action)
        chosen = best_checkpoint(run)
    if chosen is None:
        raise MissingTrainedRun(
            f"No checkpoint to {action}: run '{run.name}' has none in {run.checkpoint_dir}. Train it first with "
            f"`{CONSOLE_SCRIPT} fit` and the same config, name the run with --run_name, or pass --ckpt_path FILE."
        )
    if not one_file:
        return chosen
    as_one_file = one_file_checkpoint(chosen)
    if ckpt_path:  # a named file was read above; a sharded one's consolidated file is read now
        refuse_checkpoint_of_another_class(as_one_file, model, action, given_info if as_one_file == chosen else None)
    return as_one_file


def one_file_checkpoint(checkpoint: Path) -> Path:
    """`checkpoint` itself, or for a sharded one its consolidated file (made when first asked, after every
    shard's checksum is verified); MissingTrainedRun for an incomplete or damaged sharded checkpoint."""
    if not is_sharded_checkpoint(checkpoint):
        return checkpoint
    checksum = checkpoint_checksum(checkpoint)
    if checksum is None:
        raise MissingTrainedRun(
            f"Sharded checkpoint {checkpoint} is incomplete or damaged: a shard's checksum is not the one written "
            f"with it. Pass another with --ckpt_path (`{CONSOLE_SCRIPT} runs` lists them)."
        )
    return consolidated_checkpoint(checkpoint, checksum)
