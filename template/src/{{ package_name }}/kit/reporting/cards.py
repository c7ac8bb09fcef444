"""Dataset and model cards, generated from what the runs and the data module record.

Managed by the copier-lightning template. The dataset card says where the data came from, its
files and checksums, its size and statistics per split, the transform and its parameters, its
fingerprint, and how it changed (a history kept beside the card). The model card says what goes
in and out, the hyperparameters, the training data's fingerprint, the metrics, the code commit,
and what changed since the previous version (a diff of the two runs' configs).
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import inspect
import json
from pathlib import Path

import torch
import yaml
from torch.utils.data import TensorDataset

from ..base.task_kinds import is_binary
from ..data.preprocessing_cache import file_sha256
from ..runs.directory import RunDirectory


def _first_paragraph(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ")


def dataset_card(data, path: Path, transform=None) -> None:
    """Write the card of `data` (a set-up DataModule; its splits are summed up when it keeps them as tensors).

    Its source is the data module's `source` attribute (else its docstring); `transform` is the
    function that makes the features, described by its docstring (by default the data module's
    `prepare_features`, so that the card needs nothing named by the example).
    """
    transform = transform or getattr(data, "prepare_features", None)
    fingerprint = data.data_fingerprint() if hasattr(data, "data_fingerprint") else None
    raw_files = data.raw_files() if hasattr(data, "raw_files") else []
    raw = [(str(p), Path(p).stat().st_size, file_sha256(Path(p))) for p in raw_files]
    history_path = path.with_name(path.stem + "-history.json")
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    if not history or history[-1]["fingerprint"] != fingerprint:
        today = dt.date.today().isoformat()
        history.append({"date": today, "fingerprint": fingerprint, "raw_sha256": [r[2] for r in raw]})
        history_path.write_text(json.dumps(history, indent=2) + "\n")
    source = getattr(data, "source", None) or inspect.getdoc(type(data))
    lines = [
        f"# Dataset card: {type(data).__name__}",
        "",
        f"**Source.** {_first_paragraph(source)}",
        "",
        f"**Fingerprint** (raw data + feature code + parameters): `{fingerprint}`",
        "",
        "| raw file | bytes | sha256 |",
        "|---|---|---|",
        *[f"| {name} | {size} | `{digest}` |" for name, size, digest in raw],
        "",
        *_split_rows(data),
    ]
    hparams = dict(data.hparams)
    lines += [
        "",
        f"**Transform.** {_first_paragraph(inspect.getdoc(transform) if transform else None) or 'see the data module'}",
        "",
        f"**Parameters.** `{json.dumps(hparams, default=str)}`",
        "",
        "**How it changed** (one line per distinct fingerprint):",
        "",
        *[f"- {entry['date']}: `{entry['fingerprint']}`" for entry in history],
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _split_rows(data) -> list[str]:
    """One row per split of a data module that keeps its splits as tensors (`data.splits`, a dict of
    TensorDatasets of inputs and targets), with the targets summed up as their kind allows."""
    splits = getattr(data, "splits", None)
    if not isinstance(splits, dict) or not all(isinstance(split, TensorDataset) for split in splits.values()):
        return ["The data module keeps no `splits` (a dict of TensorDatasets), so its splits are not summed up here."]
    rows = ["| split | examples | input shape | input mean | input std | targets |", "|---|---|---|---|---|---|"]
    for name, split in splits.items():
        inputs, targets = split.tensors[0], split.tensors[-1]
        mean, std = inputs.float().mean(), inputs.float().std()  # float: token ids are integers
        rows.append(
            f"| {name} | {len(inputs)} | {tuple(inputs.shape[1:])} | {mean:.4f} | {std:.4f} | {_targets(targets)} |"
        )
    return rows


def _targets(targets: torch.Tensor) -> str:
    if targets.is_floating_point() and targets.ndim == 2 and is_binary(targets):
        return f"positives per label {targets.sum(0).long().tolist()}"
    if targets.is_floating_point():
        return f"mean {targets.mean():.4f}, std {targets.std():.4f}"
    per_class = torch.bincount(targets.flatten().long()).tolist()
    return f"examples per class {per_class}" if targets.ndim == 1 else f"positions per class {per_class}"


def _shipping(export_dir: Path) -> list[str]:
    """The export's parity and the budget table, when `export` and `budget` ran for this run."""
    lines = []
    if (export_dir / "export.json").exists():
        record = json.loads((export_dir / "export.json").read_text())
        parity = record["parity"]
        lines += [
            f"**Exported** as {', '.join(record['files'])} (ONNX opset {record['opset']}): outputs within "
            f"{parity['max_abs_difference']:.1e} of PyTorch's on {parity['examples']} validation examples; "
            f"serving preprocessing `{record.get('preprocessing')}`.",
            "",
        ]
    if (export_dir / "budget.md").exists():
        lines += ["**Inference budget** (`budget`).", "", (export_dir / "budget.md").read_text().rstrip(), ""]
    return lines


def _base_models(pretrained: dict[str, dict]) -> list[str]:
    """Who made the weights the model started from, which revision, under which licence (kit/weights/)."""
    lines = []
    for model_id, source in sorted(pretrained.items()):
        weights = {name: digest for name, digest in source["files"].items() if name.endswith((".safetensors", ".bin"))}
        hashes = ", ".join(f"{name} `{digest[:12]}`" for name, digest in sorted(weights.items())) or "none"
        lines += [
            f"**Base model** `{model_id}` at revision `{source['revision']}`, licence "
            f"{source.get('license') or 'not stated in its card: check it before you share this model'}; "
            f"weights {hashes}.",
            "",
        ]
    return lines


def _trained_parameters(summary: dict | None) -> list[str]:
    """How much of the model trained, and with which adapters (kit/weights/adapters.py)."""
    if not summary:
        return []
    total = summary["trainable"] + summary["frozen"]
    line = f"**Trained parameters** {summary['trainable']:,} of {total:,}"
    adapters = summary.get("adapters")
    if adapters:
        line += (
            f"; adapters {adapters['method']} with rank {adapters.get('r')}, alpha {adapters.get('lora_alpha')}, "
            f"dropout {adapters.get('lora_dropout')} on {', '.join(adapters.get('target_modules') or [])}"
        )
        if adapters.get("modules_to_save"):
            line += f", fully trained: {', '.join(adapters['modules_to_save'])}"
    line += f"; checkpoints hold {summary['checkpoints_hold']} parameters."
    return [line, ""]


def _evaluated_task_kind(metrics_csv: Path) -> str | None:
    """The task kind `evaluate` found (the `task_kind` row of its metrics.csv), if the run was evaluated."""
    if not metrics_csv.exists():
        return None
    with open(metrics_csv, newline="") as stream:
        return next((row[1] for row in csv.reader(stream) if row[:1] == ["task_kind"] and len(row) == 2), None)


def _model_line(class_path: str, model_args: dict, task_kind: str | None) -> str:
    """What the model is and does, from what its config and evaluation say (nothing guessed)."""
    parts = [f"`{class_path}`"]
    if task_kind:
        parts.append(f"a {task_kind} model")
    if "input_size" in model_args:
        parts.append(f"inputs of size {model_args['input_size']}")
    if "num_classes" in model_args and task_kind in (None, "single-label", "dense"):
        parts.append(f"{model_args['num_classes']} classes")
    return "**Model.** " + "; ".join(parts) + "."


def model_card(run_dir: Path, path: Path, previous_run_dir: Path | None = None) -> None:
    """Write the card of the model a run trained, compared with a previous run if given."""
    run = RunDirectory(run_dir)
    config, record, manifest = run.recorded_config(), run.record(), run.read_manifest()
    start = run.last_start()
    model_args = config.get("model", {}).get("init_args", {})
    evaluation = run.evaluation_dir("test") / "metrics.md"
    lines = [
        f"# Model card: run `{run_dir.name}`",
        "",
        _model_line(config["model"]["class_path"], model_args, _evaluated_task_kind(evaluation.parent / "metrics.csv")),
        "",
        f"**Trained** {start['started']} to {record.get('ended', '?')} ({record.get('status', '?')}); "
        f"code {start.get('git_sha') or 'not in git'}{' with uncommitted changes' if start.get('git_dirty') else ''}; "
        f"torch {start['torch']}, Lightning {start['lightning']}; seed {start.get('seed')}.",
        "",
        f"**Training data** fingerprint `{start.get('data_fingerprint')}` (`{config['data']['class_path']}`).",
        "",
        *_base_models(manifest.get("pretrained") or {}),
        *_trained_parameters(start.get("parameters")),
        "**Hyperparameters.**",
        "",
        "```yaml",
        yaml.safe_dump({"model": config["model"], "data": config["data"]}, sort_keys=False).rstrip(),
        "```",
        "",
        "**Metrics at the end of training.**",
        "",
        *[f"- {name}: {value:.4f}" for name, value in sorted(record.get("final_metrics", {}).items())],
        "",
        "**Checkpoints.** " + ", ".join(sorted(manifest.get("checkpoints", {}))),
        "",
    ]
    if evaluation.exists():
        lines += ["**Test evaluation.**", "", evaluation.read_text().rstrip(), ""]
    lines += _shipping(run.export_dir)
    if previous_run_dir is not None:
        previous = RunDirectory(previous_run_dir)
        before, after = previous.last_start().get("data_fingerprint"), start.get("data_fingerprint")
        data_change = "unchanged" if before == after else f"changed from `{before}` to `{after}`"
        lines += [f"**Training data since `{previous_run_dir.name}`:** {data_change}.", ""]
        diff = difflib.unified_diff(
            previous.config_path.read_text().splitlines(),
            run.config_path.read_text().splitlines(),
            fromfile=previous_run_dir.name,
            tofile=run_dir.name,
            lineterm="",
        )
        lines += [f"**Changes since `{previous_run_dir.name}`** (config diff):", "", "```diff", *diff, "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
