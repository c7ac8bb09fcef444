"""The CSV logger that `fit` uses (kit/training/csv_logger.py): a resumed run keeps its earlier rows,
even when the previous start was killed while it moved the file aside. In-process."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def AppendingCSVLogger(example_package):
    from digits_mlp.kit.training.csv_logger import AppendingCSVLogger

    return AppendingCSVLogger


def log_rows(logger_class, save_dir: Path, rows: list[dict]) -> None:
    logger = logger_class(save_dir=save_dir, name="logs", version="")
    for step, row in enumerate(rows):
        logger.log_metrics(row, step=step)
    logger.save()


def rows_of(save_dir: Path) -> list[dict]:
    with open(save_dir / "logs" / "metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_a_second_start_appends_to_the_first_ones_rows(AppendingCSVLogger, tmp_path: Path) -> None:
    log_rows(AppendingCSVLogger, tmp_path, [{"train/loss": 2.0}, {"train/loss": 1.5}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "previous log files will be deleted"
        log_rows(AppendingCSVLogger, tmp_path, [{"train/loss": 1.0, "val/acc": 0.5}])

    rows = rows_of(tmp_path)
    assert [row["train/loss"] for row in rows] == ["2.0", "1.5", "1.0"]
    assert [row["val/acc"] for row in rows] == ["", "", "0.5"]  # a new column: the header was rewritten


def test_rows_moved_aside_by_a_killed_start_come_back(AppendingCSVLogger, tmp_path: Path) -> None:
    log_rows(AppendingCSVLogger, tmp_path, [{"train/loss": 2.0}])
    metrics = tmp_path / "logs" / "metrics.csv"
    metrics.rename(metrics.with_name("metrics.csv.kept"))  # as a kill between the two renames leaves it

    log_rows(AppendingCSVLogger, tmp_path, [{"train/loss": 1.0}])

    assert [row["train/loss"] for row in rows_of(tmp_path)] == ["2.0", "1.0"]
    assert not (tmp_path / "logs" / "metrics.csv.kept").exists()
