"""`<package> budget`: the exported model against the inference budget written before training.

Managed by the copier-lightning template.

The budget lives in `configs/inference-budget.yaml` (yours): the device, the batch sizes served,
the latency per batch (p50 and p95) at each, the throughput and the peak memory. `budget` measures,
at each batch size, the exported ONNX model (onnxruntime; the model that ships) and eager PyTorch
(the checkpoint) for comparison, and with `--int8` the ONNX model with int8 weights (onnxruntime's
dynamic quantization) and the accuracy that costs on the validation split:
- latency: p50 and p95 of `repeats` timed batches after `warmup` untimed ones;
- throughput: examples per second at the largest batch size (the batch size over the p50 latency);
- peak memory: the peak resident memory of a fresh process that loads the model and runs every
  batch size, each engine in its own process, so that one engine's memory does not count for another.
The verdict is the ONNX model's (int8 if asked for): every budget line met, or the lines missed.
Written to `runs/<run>/export/budget.json` and `budget.md`; the model card shows the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ..runs.atomic_files import atomic_write_text

BUDGET_FILE = Path("configs/inference-budget.yaml")
BUDGET_KEYS = {"device", "batch_sizes", "latency_ms", "throughput_per_second", "peak_memory_mb"}
# Optional: `served: {clients: N, p95_ms: MS}`, what `load-test` holds the served model to (load_test.py).
SERVED_KEYS = {"clients", "p95_ms"}
DEVICES = ("cpu", "cuda")
WARMUP, REPEATS = 10, 50
LATENCY_FORM = "{p50: MS, p95: MS}"  # how one batch size's latency limits are written
SERVED_FORM = "served: {clients: N, p95_ms: MS}"


class BudgetError(ValueError):
    """A budget file that cannot be checked; the message names the line."""


def read_budget(path: Path) -> dict[str, Any]:
    """The budget file, checked: unknown keys, latencies for batch sizes not served and non-numbers are refused."""
    if not path.exists():
        raise BudgetError(f"no {path}: write the inference budget first (the template's file shows the keys)")
    text = path.read_text()
    budget = yaml.safe_load(text) or {}
    if not isinstance(budget, dict):
        raise BudgetError(f"{path}: the budget is a mapping of {', '.join(sorted(BUDGET_KEYS))}")
    unknown = sorted(set(budget) - BUDGET_KEYS - {"served"})
    if unknown:
        raise BudgetError(f"{path}{_line(text, unknown[0])}: unknown key {unknown[0]!r}; the budget has "
                          f"{', '.join(sorted(BUDGET_KEYS))}, and optionally served")  # fmt: skip
    missing = sorted(BUDGET_KEYS - set(budget))
    if missing:
        raise BudgetError(f"{path}: missing {', '.join(missing)}")
    if budget["device"] not in DEVICES:
        raise BudgetError(f"{path}{_line(text, 'device')}: device {budget['device']!r}; one of {', '.join(DEVICES)}")
    sizes = budget["batch_sizes"]
    if not (isinstance(sizes, list) and sizes and all(isinstance(s, int) and s > 0 for s in sizes)):
        raise BudgetError(f"{path}{_line(text, 'batch_sizes')}: batch_sizes is a list of whole numbers above 0")
    latency = budget["latency_ms"]
    if not isinstance(latency, dict):
        raise BudgetError(f"{path}{_line(text, 'latency_ms')}: latency_ms maps batch sizes to " + LATENCY_FORM)
    for size, limits in latency.items():
        if size not in sizes:
            raise BudgetError(f"{path}{_line(text, f'{size}')}: latency for batch size {size}, which batch_sizes "
                              f"does not list ({sizes})")  # fmt: skip
        if not (
            isinstance(limits, dict) and set(limits) == {"p50", "p95"} and all(_positive(v) for v in limits.values())
        ):
            raise BudgetError(f"{path}{_line(text, f'{size}')}: batch size {size}: write {LATENCY_FORM}, "
                              f"positive numbers; got {limits!r}")  # fmt: skip
    for key in ("throughput_per_second", "peak_memory_mb"):
        if not _positive(budget[key]):
            raise BudgetError(f"{path}{_line(text, key)}: {key} must be a positive number, got {budget[key]!r}")
    served = budget.get("served", {})
    if not (
        isinstance(served, dict)
        and set(served) <= SERVED_KEYS
        and all(_positive(value) for value in served.values())
        and float(served.get("clients", 1)).is_integer()
    ):
        raise BudgetError(f"{path}{_line(text, 'served')}: write {SERVED_FORM}, positive numbers (clients whole); "
                          f"got {served!r}")  # fmt: skip
    return budget


def measure_engine(engine: str, target: str, inputs_path: str, batch_sizes: list[int], device: str) -> dict[str, Any]:
    """In a fresh process: load `target` (an ONNX file, or 'class:checkpoint' for eager PyTorch) and time it.

    Returns {batch size: {p50_ms, p95_ms}} and the process's peak resident memory in MB.
    """
    import numpy as np

    inputs = np.load(inputs_path)
    if engine == "pytorch":
        import importlib

        import torch

        class_path, checkpoint = target.split("|", 1)
        module, name = class_path.split(":")
        model = getattr(importlib.import_module(module), name).load_from_checkpoint(checkpoint, map_location=device)
        model.eval()

        def run(batch):
            with torch.inference_mode():
                out = model(torch.from_numpy(batch).to(device))
                if device == "cuda":
                    torch.cuda.synchronize()
                return out
    else:
        from .onnx_runtime import onnx_session

        session = onnx_session(Path(target), device)

        def run(batch):
            return session.run(None, {"inputs": batch})

    timings = {}
    for size in batch_sizes:
        batch = np.resize(inputs, (size, *inputs.shape[1:])).astype(inputs.dtype)  # repeats examples if needed
        for _ in range(WARMUP):
            run(batch)
        laps = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            run(batch)
            laps.append((time.perf_counter() - started) * 1000)
        timings[size] = {"p50_ms": float(np.percentile(laps, 50)), "p95_ms": float(np.percentile(laps, 95))}
    return {"latency": timings, "peak_memory_mb": peak_resident_mb()}


def peak_resident_mb() -> float:
    """This process's peak resident memory. VmHWM is this program's own; ru_maxrss would also count the
    parent's memory at the fork that started this process (Linux keeps it across exec)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(*args: Any) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_engine, args)


def verdicts(result: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """The budget lines `result` misses (empty: within budget)."""
    missed = []
    for size, limits in budget["latency_ms"].items():
        measured = result["latency"][size]
        for quantile in ("p50", "p95"):
            if measured[f"{quantile}_ms"] > limits[quantile]:
                missed.append(f"batch {size} {quantile} {measured[f'{quantile}_ms']:.2f} ms > {limits[quantile]} ms")
    if result["throughput_per_second"] < budget["throughput_per_second"]:
        missed.append(f"throughput {result['throughput_per_second']:.0f}/s < {budget['throughput_per_second']}/s")
    if result["peak_memory_mb"] > budget["peak_memory_mb"]:
        missed.append(f"peak memory {result['peak_memory_mb']:.0f} MB > {budget['peak_memory_mb']} MB")
    return missed


def budget_table(results: dict[str, dict[str, Any]], budget: dict[str, Any]) -> str:
    sizes = budget["batch_sizes"]
    header = ["engine", *[f"batch {s} p50 / p95 ms" for s in sizes], "examples/s", "peak MB", "verdict"]
    limits = ["budget", *[_limit(budget["latency_ms"].get(s)) for s in sizes],
              f">= {budget['throughput_per_second']}", f"<= {budget['peak_memory_mb']}", ""]  # fmt: skip
    rows = [header, ["---"] * len(header), limits]
    for engine, result in results.items():
        latency = [f"{result['latency'][s]['p50_ms']:.2f} / {result['latency'][s]['p95_ms']:.2f}" for s in sizes]
        verdict = "within budget" if not result["missed"] else "over: " + "; ".join(result["missed"])
        rows.append([engine, *latency, f"{result['throughput_per_second']:.0f}", f"{result['peak_memory_mb']:.0f}",
                     verdict])  # fmt: skip
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def check_budget(export_dir: Path, model_class: type, checkpoint: Path, inputs, labels, budget: dict[str, Any],
                 int8: bool = False) -> dict[str, Any]:  # fmt: skip
    """Measure every engine against `budget`; write budget.json and budget.md next to the export."""
    import numpy as np

    device = budget["device"]
    engines = {
        "onnx": str(export_dir / "model.onnx"),
        "pytorch (eager)": f"{model_class.__module__}:{model_class.__qualname__}|{checkpoint}",
    }
    accuracy = {}
    if int8:
        engines["onnx int8"], accuracy = quantized(export_dir, inputs, labels)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        inputs_path = str(Path(scratch) / "inputs.npy")
        np.save(inputs_path, inputs)
        for engine, target in engines.items():
            kind = "pytorch" if engine.startswith("pytorch") else "onnx"
            result = in_fresh_process(kind, target, inputs_path, budget["batch_sizes"], device)
            largest = max(budget["batch_sizes"])
            result["throughput_per_second"] = largest / (result["latency"][largest]["p50_ms"] / 1000)
            result["missed"] = verdicts(result, budget)
            results[engine] = result
    shipped = "onnx int8" if int8 else "onnx"
    report = {"budget": budget, "device": device, "results": results, "judged": shipped,
              "within_budget": not results[shipped]["missed"], "int8_accuracy": accuracy}  # fmt: skip
    atomic_write_text(export_dir / "budget.json", json.dumps(report, indent=2) + "\n")
    lines = [budget_table(results, budget)]
    if accuracy:
        lines.append(f"int8 weights: validation accuracy {accuracy['int8']:.4f} vs {accuracy['float32']:.4f} "
                     f"(float32), a change of {accuracy['int8'] - accuracy['float32']:+.4f}.\n")  # fmt: skip
    atomic_write_text(export_dir / "budget.md", "\n".join(lines))
    return report


def quantized(export_dir: Path, inputs, labels) -> tuple[str, dict[str, float]]:
    """model.int8.onnx (dynamic int8 quantization of the weights) and the validation accuracy before and after."""
    import numpy as np
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .onnx_runtime import onnx_session

    target = export_dir / "model.int8.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's advice to pre-process first is for convolutional models
    try:
        quantize_dynamic(str(export_dir / "model.onnx"), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    accuracy = {}
    for name, path in (("float32", export_dir / "model.onnx"), ("int8", target)):
        outputs = onnx_session(path).run(None, {"inputs": inputs})[0]
        accuracy[name] = float(np.mean(outputs.argmax(-1) == labels))
    return str(target), accuracy


def budget_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="budget",
        description="Measure the exported model (run `export` first) against configs/inference-budget.yaml. "
        "Other options go to the config parser (--config, --run_name, ...), as for `fit`.",
    )
    parser.add_argument("--budget", type=Path, default=BUDGET_FILE, help=f"the budget file (default {BUDGET_FILE})")
    parser.add_argument("--int8", action="store_true", help="also measure int8 weights, and their accuracy cost")
    args, config_args = parser.parse_known_args(argv)
    try:
        budget = read_budget(args.budget)
    except BudgetError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    import torch

    from ..training.project_loading import load_project
    from .export import ExportError, is_current, validation_inputs

    project = load_project(config_args)
    model, data, run = project.model, project.datamodule, project.run
    export_dir = run.export_dir
    try:
        record = json.loads((export_dir / "export.json").read_text())
    except (OSError, ValueError):
        print(f"error: no export of run '{run.name}' yet: run `export` with the same options first", file=sys.stderr)
        return 2
    checkpoint = Path(record["checkpoint"])
    if not is_current(export_dir, checkpoint):
        print(
            f"error: {export_dir} is stale (the checkpoint or the files changed): run `export` again", file=sys.stderr
        )
        return 2
    if budget["device"] == "cuda" and not torch.cuda.is_available():
        print(
            "error: the budget is for cuda and no GPU is visible here: measure it on the serving GPU", file=sys.stderr
        )
        return 2
    try:
        inputs = validation_inputs(data, model)
    except ExportError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    labels = torch.cat([batch[1] for batch in data.val_dataloader()]).numpy()
    report = check_budget(export_dir, type(model), checkpoint, inputs.numpy(), labels, budget, args.int8)
    print((export_dir / "budget.md").read_text().rstrip())
    judged = report["judged"]
    print(f"{judged}: {'within budget' if report['within_budget'] else 'OVER BUDGET'} ({export_dir / 'budget.md'})")
    return 0 if report["within_budget"] else 1


def _limit(limits: dict | None) -> str:
    return f"<= {limits['p50']} / {limits['p95']}" if limits else "-"


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _line(text: str, key: str) -> str:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(f"{key}:"):
            return f" line {number}"
    return ""
