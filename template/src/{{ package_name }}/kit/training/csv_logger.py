"""A CSV logger that continues a resumed run's metrics.csv. Managed by the copier-lightning template.

Lightning's CSVLogger deletes an existing metrics.csv when a new process starts logging into the
same directory, so a resumed run would lose every row written before the crash. `fit` uses this
subclass instead whenever the config names CSVLogger: it keeps the file, learns its columns, and
appends (rewriting the header only when a new column appears, as CSVLogger does).
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as stream:
                self.metrics_keys = list(csv.DictReader(stream).fieldnames or [])


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
