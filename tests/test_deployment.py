"""Shipping a model: `export` (ONNX parity), `budget` (pass on the example, fail on a slow model, a
bad budget file refused), `predict-files` (resumable, each output once, the training preprocessing)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from template_dev import run


@pytest.fixture(scope="module")
def exported(example_project, example_command, tmp_path_factory):
    """A trained example run (3 epochs) and its export."""
    project, _ = example_project
    runs = tmp_path_factory.mktemp("deploy-runs")
    env = {"RUNS_DIR": str(runs)}
    run([*example_command, "fit", "--trainer.max_epochs=3", "--run_name", "ship"], cwd=project, env=env)
    done = run([*example_command, "export", "--run_name", "ship"], cwd=project, env=env)
    return project, env, runs / "ship", done.stdout


def test_export_matches_pytorch_on_the_validation_split(exported, example_package) -> None:
    import onnxruntime
    from digits_mlp.data import DigitsDataModule
    from digits_mlp.model import DigitsClassifier

    project, env, run_dir, printed = exported
    assert "Parity on 269 validation examples" in printed
    record = json.loads((run_dir / "export" / "export.json").read_text())
    assert set(record["files"]) == {"model.onnx", "model.pt2"} and record["opset"] >= 17
    assert record["parity"]["max_abs_difference"] <= record["parity"]["tolerance"] == 1e-4
    assert record["preprocessing"] == "digits_mlp.data:pixels_to_images"
    # Checked again here, independently of the kit: the checkpoint against the ONNX file and the program.
    model = DigitsClassifier.load_from_checkpoint(record["checkpoint"], map_location="cpu").eval()
    raw = np.loadtxt(project / "data" / "serving-example.csv", delimiter=",")
    inputs = DigitsDataModule.serving_preprocessing(raw)
    session = onnxruntime.InferenceSession(str(run_dir / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(inputs)
        program = torch.export.load(run_dir / "export" / "model.pt2").module()(inputs)
    assert np.abs(session.run(None, {"inputs": inputs.numpy()})[0] - expected.numpy()).max() <= 1e-4
    assert torch.allclose(program, expected, atol=1e-5)


def test_an_operator_without_onnx_translation_is_named(example_package, tmp_path) -> None:
    from digits_mlp.kit.deployment.export import ExportError, export_onnx

    class Eigenvalues(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvals(images[:, :2, :2]).real

    with pytest.raises(ExportError, match="operator aten.linalg_eig has no ONNX translation"):
        export_onnx(Eigenvalues(), torch.randn(4, 8, 8), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_the_budget_passes_on_the_example_and_fails_on_a_slow_model(
    exported, example_command, example_package, tmp_path
) -> None:
    project, env, run_dir, _ = exported
    done = run([*example_command, "budget", "--run_name", "ship"], cwd=project, env=env)
    assert "onnx: within budget" in done.stdout
    report = json.loads((run_dir / "export" / "budget.json").read_text())
    assert set(report["results"]) == {"onnx", "pytorch (eager)"} and report["within_budget"] is True
    onnx = report["results"]["onnx"]
    assert 0 < onnx["latency"]["1"]["p50_ms"] <= onnx["latency"]["1"]["p95_ms"] and onnx["peak_memory_mb"] > 10
    # ONNX's own process holds no torch: its peak memory is well below eager PyTorch's.
    assert onnx["peak_memory_mb"] < report["results"]["pytorch (eager)"]["peak_memory_mb"]
    from digits_mlp.kit import model_card

    model_card(run_dir, tmp_path / "card.md")  # the model card shows the export and the budget table
    card = (tmp_path / "card.md").read_text()
    assert "**Exported** as model.onnx, model.pt2" in card and "**Inference budget**" in card and "| onnx |" in card

    # 45 ms p50 at batch 256 here: over twice the budget
    slow = ["--model.init_args.hidden_sizes=[4096, 4096]", "--run_name", "slow"]
    run([*example_command, "fit", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", *slow], cwd=project,
        env=env)  # fmt: skip
    run([*example_command, "export", *slow], cwd=project, env=env)
    over = run([*example_command, "budget", *slow], cwd=project, env=env, check=False)
    assert over.returncode == 1 and "onnx: OVER BUDGET" in over.stdout, over.stdout + over.stderr
    onnx_row = next(line for line in over.stdout.splitlines() if line.startswith("| onnx |"))
    assert "over: " in onnx_row and "batch 256 p50" in onnx_row  # the lines it misses, named


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("latency_ms:", "latncy_ms:"), "line 7: unknown key 'latncy_ms'"),
        (("  1: {p50: 2.0, p95: 10.0}", "  1: {p50: 2.0}"), "line 8: batch size 1: write {p50: MS, p95: MS}"),
        (("  256: {", "  512: {"), "line 9: latency for batch size 512, which batch_sizes does not list"),
        (("device: cpu", "device: tpu"), "line 5: device 'tpu'"),
        (("  clients: 8 ", "  clients: 2.5 "), "line 12: write served: {clients: N, p95_ms: MS}, positive numbers"),
        (("  p95_ms: 50.0 ", "  p95_ms: -1 "), "line 12: write served: {clients: N, p95_ms: MS}, positive numbers"),
    ],
    ids=["typo", "no p95", "batch size not served", "device", "served clients", "served p95"],
)
def test_a_bad_budget_file_is_refused_naming_the_line(example_package, tmp_path, change, message) -> None:
    from digits_mlp.kit.deployment.budget import BudgetError, read_budget

    text = (example_package / "configs" / "inference-budget.yaml").read_text()
    assert read_budget(example_package / "configs" / "inference-budget.yaml")["batch_sizes"] == [1, 256]
    bad = tmp_path / "budget.yaml"
    bad.write_text(text.replace(*change))
    with pytest.raises(BudgetError, match=message.replace("{", r"\{").replace("}", r"\}")):
        read_budget(bad)


def test_serving_gives_the_model_the_inputs_training_gave_it(example_package, tmp_path) -> None:
    from digits_mlp.data import DigitsDataModule, digits_features
    from digits_mlp.kit.deployment.batch_inference import batches

    raw = example_package / "data" / "raw" / "digits.csv.gz"
    if not raw.exists():
        run([sys.executable, "-m", "digits_mlp", "data", "fetch"], cwd=example_package)
    training = digits_features([raw], 0.15, 0.15, 0)["images"]
    table = np.loadtxt(raw, delimiter=",")
    served = tmp_path / "rows.csv"
    np.savetxt(served, table[:, :-1], delimiter=",", fmt="%d")  # what a caller sends: pixels, no label
    inputs = torch.cat([chunk for _, chunk in batches([served], DigitsDataModule.serving_preprocessing, set(), 500)])
    assert inputs.shape == training.shape and torch.equal(inputs, training)  # bit for bit, all 1,797


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_predict_files_resumes_and_writes_each_output_once(exported, example_command, example_package, tmp_path):
    from digits_mlp.data import DigitsDataModule
    from digits_mlp.kit.deployment.batch_inference import predict_files

    project, env, run_dir, _ = exported
    inputs = tmp_path / "inputs"
    (inputs / "more").mkdir(parents=True)
    rows = np.loadtxt(project / "data" / "serving-example.csv", delimiter=",")
    np.savetxt(inputs / "a.csv", np.tile(rows, (5, 1)), delimiter=",", fmt="%d")  # 50 samples
    for number, row in enumerate(rows):
        np.save(inputs / "more" / f"{number}.npy", row)  # 10 single samples
    whole = tmp_path / "whole.csv"
    done = run([*example_command, "predict-files", str(inputs), "--output", str(whole), "--run_name", "ship",
                "--batch-size", "8"], cwd=project, env=env)  # fmt: skip
    assert "60 new prediction(s)" in done.stdout

    # Interrupted after two batches, with half a line written: the re-run ends with the same 60 rows.
    files = sorted(p for p in inputs.rglob("*") if p.is_file())
    calls = []

    def dies_on_the_third_batch(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return torch.zeros(len(batch), 10)

    interrupted = tmp_path / "interrupted.csv"
    with pytest.raises(KeyboardInterrupt):
        predict_files(files, interrupted, DigitsDataModule.serving_preprocessing, dies_on_the_third_batch, 8)
    with open(interrupted, "a") as stream:
        stream.write(f"{files[0]},99,3,0.1")  # a write cut short
    assert len(csv_rows(interrupted)) == 17  # two batches of 8, and the half-written line
    rerun = run([*example_command, "predict-files", *map(str, files), "--output", str(interrupted),
                 "--run_name", "ship", "--batch-size", "8"], cwd=project, env=env)  # fmt: skip
    assert "44 new prediction(s)" in rerun.stdout
    after = csv_rows(interrupted)
    keys = [(row["input"], row["row"]) for row in after]
    assert len(keys) == len(set(keys)) == 60  # every sample once, the cut line gone
    expected = {(row["input"], row["row"]): row for row in csv_rows(whole)}
    assert set(expected) == set(keys)
    for row in after[16:]:  # the rows the re-run wrote: as an uninterrupted run wrote them
        assert row == expected[(row["input"], row["row"])]


def test_a_file_of_the_wrong_shape_is_named(exported, example_command, tmp_path) -> None:
    project, env, _, _ = exported
    np.save(tmp_path / "short.npy", np.zeros((3, 63)))
    done = run([*example_command, "predict-files", str(tmp_path / "short.npy"), "--output", str(tmp_path / "o.csv"),
                "--run_name", "ship"], cwd=project, env=env, check=False)  # fmt: skip
    assert done.returncode == 2
    why = "expected rows of 64 pixel values (0-16), got an array of shape (3, 63)"
    assert f"error: {tmp_path / 'short.npy'}: {why}" in done.stderr
    assert not (tmp_path / "o.csv").exists() or not (tmp_path / "o.csv").read_text()
