"""`<package> export`: a run's best model as ONNX and as a torch.export program, checked against PyTorch.

Managed by the copier-lightning template.

Writes `runs/<run>/export/`:
- `model.onnx` (torch.onnx's exporter, batch size left free) and `model.pt2` (torch.export), each
  written atomically;
- `merged/`, for a model with LoRA adapters (peft): the adapters merged into the base weights, in
  Hugging Face format (safetensors, with the tokenizer), which `from_pretrained` loads
  (pretrained_export.py);
- `export.json`: the files and their sha256, the opset, the versions of torch, onnx and
  onnxruntime, the checkpoint (and its fingerprint: a new checkpoint makes the export stale), the
  preprocessing function serving must apply (the data module's `serving_preprocessing`, the one
  its training features use too), and the parity figure: the largest difference between the ONNX
  model's outputs and PyTorch's on the whole validation split, which must stay within
  PARITY_TOLERANCE, and the fraction of examples whose predicted class agrees.

The model is exported as `model(inputs)` for validation batches `(inputs, targets)`, as the
example's are; another batch layout gets one message saying so. A model the exporter cannot
translate gets one message naming the operator (or the line that branches on a tensor's value).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import inspect
import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..base.file_hashes import file_sha256
from ..runs.atomic_files import atomic_output, atomic_write_text
from ..runs.directory import RunDirectory
from .onnx_runtime import onnx_session
from .pretrained_export import export_merged

PARITY_TOLERANCE = 1e-4  # largest absolute difference allowed between ONNX and PyTorch outputs (float32)


class ExportError(RuntimeError):
    """The model cannot be exported or does not match its export; the message says why."""


def validation_inputs(data, model) -> torch.Tensor:
    """Every input of the validation split, as the model receives it (after the training preprocessing);
    read from each batch by the model's `inputs_and_targets` hook if it has one (kit/base/task_kinds.py)."""
    from ..base.task_kinds import TaskKindError, inputs_and_targets

    data.setup("fit")
    batches = []
    for batch in data.val_dataloader():
        try:
            inputs = inputs_and_targets(model, batch)[0]
        except TaskKindError as unreadable:
            raise ExportError(f"export: {unreadable}") from None
        if not isinstance(inputs, torch.Tensor):
            raise ExportError(
                f"export takes one tensor of inputs, called as model(inputs); {type(model).__name__}'s batches "
                f"give a {type(inputs).__name__}"
            )
        batches.append(inputs)
    return torch.cat(batches)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX with a free batch size, written atomically; ExportError naming the operator on failure."""
    batch = torch.export.Dim("batch")
    chatter = io.StringIO()  # the exporter prints its graph and progress; only a failure matters here
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            program = torch.onnx.export(
                model, (example,), input_names=["inputs"], output_names=["outputs"],
                dynamic_shapes=({0: batch},), dynamo=True, verbose=False,
            )  # fmt: skip
    except Exception as failure:  # noqa: BLE001 - every exporter failure becomes one message
        raise ExportError(export_failure_message(failure)) from None
    with atomic_output(path) as stream:
        stream.write(program.model_proto.SerializeToString())


def export_program(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The torch.export program (model.pt2): the same graph, for serving from PyTorch without Python code."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    with atomic_output(path) as stream:
        torch.export.save(program, stream)


def export_failure_message(failure: BaseException) -> str:
    text = str(failure)
    operator = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if operator:
        return f"cannot export the model to ONNX: operator {operator.group(1)} has no ONNX translation"
    data_dependent = re.search(r"Caused by: \(([^)]*)\)", text)
    if "data-dependent" in text and data_dependent:
        return (
            "cannot export the model: it branches on a tensor's value (e.g. `if x.sum() > 0`), which an "
            f"exported graph cannot hold; at {data_dependent.group(1)}"
        )
    summary = text.split("## Exception summary", 1)[-1].strip().splitlines()
    return f"cannot export the model: {summary[0] if summary else type(failure).__name__}"


def parity(model: torch.nn.Module, session, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """The largest |ONNX - PyTorch| output difference over `inputs`, and how often the argmax agrees."""
    largest, agree = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            expected = model(chunk).float()
            got = torch.from_numpy(session.run(None, {"inputs": chunk.numpy()})[0]).float()
            largest = max(largest, float((got - expected).abs().max()))
            agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
    return {
        "examples": len(inputs),
        "max_abs_difference": largest,
        "tolerance": PARITY_TOLERANCE,
        "same_prediction_fraction": agree / max(len(inputs), 1),
    }


def serving_preprocessing(data) -> str | None:
    """'module:function' of the data module's `serving_preprocessing` (what serving applies to raw inputs)."""
    function = getattr(data, "serving_preprocessing", None)
    if function is None:
        return None
    function = inspect.unwrap(function)
    return f"{function.__module__}:{function.__qualname__}"


def export_model(model, data, checkpoint: Path, directory: Path) -> dict[str, Any]:
    """Export `model` (loaded from `checkpoint`) into `directory`, check parity, write export.json."""
    from ..evaluation.evaluation import checkpoint_fingerprint

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f'{", ".join(missing)} not installed: pip install -e ".[export]"')
    model = model.eval().cpu()
    inputs = validation_inputs(data, model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path, program_path = directory / "model.onnx", directory / "model.pt2"
    export_onnx(model, inputs[: min(4, len(inputs))], onnx_path)
    export_program(model, inputs[: min(4, len(inputs))], program_path)
    checked = parity(model, onnx_session(onnx_path), inputs)
    if checked["max_abs_difference"] > PARITY_TOLERANCE:
        raise ExportError(
            f"the ONNX model's outputs differ from PyTorch's by up to {checked['max_abs_difference']:.2e} on the "
            f"validation split (allowed: {PARITY_TOLERANCE:.0e}); {onnx_path} is not to be served"
        )
    merged = export_merged(model, data, inputs, directory)
    if merged and merged["parity"]["max_abs_difference"] > merged["parity"]["tolerance"]:
        checked_merge = merged["parity"]
        raise ExportError(
            f"the merged model's outputs differ from the adapters' by up to {checked_merge['max_abs_difference']:.2e} "
            f"on the validation split (allowed: {checked_merge['tolerance']:.0e}); {directory / 'merged'} is not to be "
            "served"
        )
    import onnx

    record = {
        "checkpoint": str(checkpoint),
        "checkpoint_fingerprint": checkpoint_fingerprint(checkpoint),
        "files": {path.name: file_sha256(path) for path in (onnx_path, program_path)},
        "opset": next(entry.version for entry in onnx.load(str(onnx_path)).opset_import if entry.domain == ""),
        "input_shape": ["batch", *inputs.shape[1:]],
        "input_dtype": str(inputs.dtype).removeprefix("torch."),
        "preprocessing": serving_preprocessing(data),
        "parity": checked,
        "merged": merged,  # adapters merged, in Hugging Face format (pretrained_export.py); None without adapters
        "versions": {name: _version(name) for name in ("torch", "onnx", "onnxruntime", "onnxscript")},
    }
    atomic_write_text(directory / "export.json", json.dumps(record, indent=2) + "\n")
    return record


def is_current(directory: Path, checkpoint: Path) -> bool:
    """Whether `directory` holds an export of this very checkpoint (same fingerprint, files intact)."""
    from ..evaluation.evaluation import checkpoint_fingerprint

    try:
        record = json.loads((directory / "export.json").read_text())
    except (OSError, ValueError):
        return False
    files = {directory / name: digest for name, digest in record["files"].items()}
    files_intact = all(path.exists() and file_sha256(path) == digest for path, digest in files.items())
    return files_intact and record.get("checkpoint_fingerprint") == checkpoint_fingerprint(checkpoint)


def export_run(config_args: list[str] = (), ckpt_path: str | None = None, force: bool = False) -> dict[str, Any]:
    """Export the best checkpoint of the run these options name (artifacts.py calls this); returns export.json."""
    from ..runs.checkpoint_files import MissingTrainedRun, checkpoint_to_use
    from ..training.project_loading import load_project
    from ..weights.cache import WeightsError

    project = load_project(list(config_args))
    model, data, run = project.model, project.datamodule, project.run
    try:
        checkpoint = checkpoint_to_use(run, ckpt_path, "export")
    except (MissingTrainedRun, WeightsError) as refused:  # no trained run; other base weights than its own
        raise ExportError(str(refused)) from None
    directory = run.export_dir
    if not force and is_current(directory, checkpoint):
        return json.loads((directory / "export.json").read_text())
    model = type(model).load_from_checkpoint(checkpoint, map_location="cpu")
    return export_model(model, data, checkpoint, directory)


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="export",
        description="Export a run's best model to ONNX and torch.export, checked against PyTorch on the validation "
        "split. Other options go to the config parser (--config, --run_name, ...), as for `fit`.",
    )
    parser.add_argument("--ckpt_path", default=None, help="export this checkpoint instead of the run's best")
    parser.add_argument("--force", action="store_true", help="export again even if the export is current")
    args, config_args = parser.parse_known_args(argv)
    try:
        record = export_run(config_args, args.ckpt_path, args.force)
    except ExportError as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 2
    checked = record["parity"]
    print(f"Exported {record['checkpoint']}: {', '.join(record['files'])} (ONNX opset {record['opset']})")
    print(
        f"Parity on {checked['examples']} validation examples: largest difference "
        f"{checked['max_abs_difference']:.2e} (allowed {checked['tolerance']:.0e}), same prediction for "
        f"{checked['same_prediction_fraction']:.2%}"
    )
    if record.get("merged"):
        merged = record["merged"]
        print(
            f"Merged {merged['class']} in {merged['directory']}/ (from_pretrained loads it): largest difference from "
            f"the adapters {merged['parity']['max_abs_difference']:.2e} (allowed {merged['parity']['tolerance']:.0e})"
        )
    if record["preprocessing"]:
        print(f"Serving applies {record['preprocessing']} to raw inputs, as training does.")
    print(f"Record: {RunDirectory.holding(Path(record['checkpoint'])).export_dir / 'export.json'}")
    return 0


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
