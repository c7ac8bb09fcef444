"""`<package> predict-files INPUT... --output FILE`: batch inference over files, resumable.

Managed by the copier-lightning template.

Inputs: files or folders of them, `.npy` (one sample, or one per row), `.csv` / `.csv.gz` /
`.txt` (one sample per comma-separated row) or `.jsonl` (one JSON value per line: a text, a list
of numbers, ...), read in sorted order. Each sample goes through the
data module's `serving_preprocessing`, the very function its training features use (data.py), so
the model sees in serving what it saw in training; then through the run's best checkpoint (or,
with `--engine onnx`, its export), in batches of `--batch-size`.

Output: a CSV with one row per sample (`input`, `row`, `prediction`: the largest output's index,
then the model's outputs, `output_0`...), appended batch by batch and flushed to disk after each.
An interrupted job run again with the same output continues after the last complete row: a
half-written last line is cut off, and no sample is written twice. A file that cannot be read or
has the wrong shape stops the job before anything of it is written, with the file and the reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .predictor import add_predictor_options

SUFFIXES = (".npy", ".csv", ".csv.gz", ".txt", ".jsonl")
# Raw samples as serving receives them (the template writes one of them): `serve`'s page offers
# them to try, `load-test` sends them.
SERVING_EXAMPLES = (Path("data/serving-example.csv"), Path("data/serving-example.jsonl"))


class InputError(ValueError):
    """An input that cannot be predicted; the message names the file and why."""


def input_files(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    if not found:
        raise InputError(f"no input files ({', '.join(SUFFIXES)}) in {', '.join(map(str, paths))}")
    return found


def read_samples(path: Path) -> np.ndarray | list:
    """The file's samples, one per row (a 1-D .npy is one sample; a .jsonl file's lines, as a list)."""
    try:
        if path.name.endswith(".jsonl"):
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.name.endswith(".npy"):
            samples = np.load(path, allow_pickle=False)
            return samples[None] if samples.ndim == 1 else samples
        return np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as bad:  # json's JSONDecodeError is a ValueError
        raise InputError(f"{path}: cannot read it: {bad}") from None


def serving_examples(path: Path | None = None) -> list:
    """The samples of `path`, else of the first SERVING_EXAMPLES file there is, as JSON holds them
    (a row of numbers as a list); [] when there is no such file."""
    path = path or next((candidate for candidate in SERVING_EXAMPLES if candidate.is_file()), None)
    if path is None:
        return []
    return [sample.tolist() if hasattr(sample, "tolist") else sample for sample in read_samples(path)]


def done_rows(output: Path) -> set[tuple[str, int]]:
    """(input, row) already in `output`; a half-written last line (an interrupted write) is cut off."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(output, "r+b") as stream:
            stream.truncate(cut)
    with open(output, newline="") as stream:
        return {(row["input"], int(row["row"])) for row in csv.DictReader(stream)}


def batches(
    files: list[Path], preprocess: Callable, done: set[tuple[str, int]], batch_size: int
) -> Iterator[tuple[list[tuple[str, int]], object]]:
    """(keys, model inputs) for every sample not done yet, `batch_size` at a time, across files."""
    import torch

    keys: list[tuple[str, int]] = []
    pending: list = []
    for path in files:
        samples = read_samples(path)
        try:
            inputs = preprocess(samples)
        except (ValueError, TypeError) as bad:
            raise InputError(f"{path}: {bad}") from None
        for row in range(len(inputs)):
            if (str(path), row) in done:
                continue
            keys.append((str(path), row))  # the path as given: re-run with the same inputs to resume
            pending.append(inputs[row])
            if len(keys) == batch_size:
                yield keys, torch.stack(pending)
                keys, pending = [], []
    if keys:
        yield keys, torch.stack(pending)


def predict_files(
    files: list[Path], output: Path, preprocess: Callable, predict: Callable, batch_size: int,
    progress: Callable[[int, int, int], None] = lambda done, file_number, files: None,
) -> int:  # fmt: skip
    """Predict every sample not yet in `output`; returns how many were predicted now.

    progress(samples in the output, number of the file being read, number of files): each file is
    read once, so the sample count of the files ahead is not known.
    """
    done = done_rows(output)
    file_numbers = {str(path): number for number, path in enumerate(files, start=1)}
    new_file = not output.exists() or output.stat().st_size == 0
    output.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(output, "a", newline="") as stream:
        writer = csv.writer(stream)
        for keys, inputs in batches(files, preprocess, done, batch_size):
            scores = predict(inputs)
            if new_file:
                writer.writerow(["input", "row", "prediction", *(f"output_{i}" for i in range(scores.shape[1]))])
                new_file = False
            for (name, row), score in zip(keys, scores, strict=True):
                writer.writerow([name, row, int(score.argmax()), *(f"{float(v):.6g}" for v in score)])
            stream.flush()
            os.fsync(stream.fileno())  # a batch is on disk before the next one starts
            written += len(keys)
            progress(len(done) + written, file_numbers[keys[-1][0]], len(files))
    return written


def predict_files_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="predict-files",
        description="Batch inference over files with the training preprocessing; resumable. Other options go to "
        "the config parser (--config, --run_name, ...), as for `fit`.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="files or folders (.npy, .csv, .csv.gz, .txt, .jsonl)")
    parser.add_argument("--output", type=Path, required=True, help="the CSV of predictions (appended to on a re-run)")
    parser.add_argument("--batch-size", type=int, default=256)
    add_predictor_options(parser)
    args, config_args = parser.parse_known_args(argv)
    try:
        files = input_files(args.inputs)
    except InputError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    from .predictor import PredictorError, load_predictor

    try:
        predictor = load_predictor(config_args, args.engine, args.ckpt_path)
    except PredictorError as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2

    def progress(done: int, file_number: int, files: int) -> None:
        print(f"\rpredicted {done} (file {file_number} of {files})", end="", flush=True)

    try:
        written = predict_files(files, args.output, predictor.preprocess, predictor.predict, args.batch_size, progress)
    except InputError as bad:
        print(f"\nerror: {bad}", file=sys.stderr)
        return 2
    print(f"\n{written} new prediction(s) in {args.output} ({len(files)} input file(s))")
    return 0
