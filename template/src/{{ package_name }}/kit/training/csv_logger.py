"""A CSV logger that continues a resumed run's metrics.csv. Managed by the copier-lightning template.

Lightning's CSVLogger deletes an existing metrics.csv when a new process starts logging into the
same directory, so a resumed run would lose every row written before the crash. `fit` uses this
subclass instead whenever the config names CSVLogger. Through public names only: the file is moved
aside (one rename) while Lightning makes its writer, moved back, and the writer learns its columns,
so that it appends (and rewrites the header only when a new column appears, as CSVLogger does).
A start killed between the two renames leaves `metrics.csv.kept`, which the next start moves back.
Run directories are local: this logger does not handle remote (fsspec) paths.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingCSVLogger(CSVLogger):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._appending_writer: ExperimentWriter | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._appending_writer is None:
            self._appending_writer = self._writer_after_earlier_rows()
        return self._appending_writer

    def _writer_after_earlier_rows(self) -> ExperimentWriter:
        metrics = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        kept = metrics.with_name(metrics.name + ".kept")
        if metrics.is_file():
            os.replace(metrics, kept)  # out of reach of the writer's clean-up
        with warnings.catch_warnings():
            # "Previous log files in this directory will be deleted": not here, they are kept.
            warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
            writer = super().experiment
        if kept.is_file():  # moved aside above, or by a start killed before it moved it back
            os.replace(kept, metrics)
            with metrics.open(newline="") as stream:
                writer.metrics_keys = list(csv.DictReader(stream).fieldnames or [])
        return writer
