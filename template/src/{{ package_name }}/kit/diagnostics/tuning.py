"""Learning-rate range test and batch-size search. Managed by the copier-lightning template.

`<package> find-lr [config options]` runs Lightning's LR finder (an LR range test: the learning
rate grows exponentially over a short run while the loss is recorded) and writes the plot and the
suggested learning rate to runs/<run>/tuning/. `<package> find-batch-size` doubles the batch size
until memory runs out (or the data does) and reports the largest that fits.
The model needs a `learning_rate` (or `lr`) hyperparameter, the data module a `batch_size`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings

import lightning.pytorch as pl
from lightning.pytorch.tuner import Tuner

from ..training.project_loading import load_project
from ..training.scratch_trainer import scratch_trainer


def _scratch_trainer(directory: str) -> pl.Trainer:
    return scratch_trainer(accelerator="auto", default_root_dir=directory)


def find_lr_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="find-lr", description=__doc__)
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--max-lr", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=100, help="training steps of the range test")
    args, options = parser.parse_known_args(argv)
    project = load_project(options)
    model, data, run = project.model, project.datamodule, project.run
    output = run.tuning_dir
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finder = Tuner(_scratch_trainer(scratch)).lr_find(
            model, datamodule=data, min_lr=args.min_lr, max_lr=args.max_lr, num_training=args.steps, update_attr=False
        )
    suggestion = finder.suggestion()
    figure = finder.plot(suggest=True)
    figure.savefig(output / "lr_find.png", dpi=110)
    record = {
        "suggested_learning_rate": suggestion,
        "learning_rates": finder.results["lr"],
        "losses": finder.results["loss"],
    }
    (output / "lr_find.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"Suggested learning rate: {suggestion:.3g} (set model.init_args.learning_rate in your config)")
    print(f"Plot and numbers: {output / 'lr_find.png'}, {output / 'lr_find.json'}")
    return 0


def find_batch_size_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="find-batch-size", description=__doc__)
    parser.add_argument("--max-trials", type=int, default=12)
    args, options = parser.parse_known_args(argv)
    project = load_project(options)
    model, data, run = project.model, project.datamodule, project.run
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        largest = Tuner(_scratch_trainer(scratch)).scale_batch_size(
            model, datamodule=data, mode="power", init_val=data.hparams.batch_size, max_trials=args.max_trials
        )
    output = run.tuning_dir
    output.mkdir(parents=True, exist_ok=True)
    (output / "batch_size.json").write_text(json.dumps({"largest_batch_size": largest}) + "\n")
    print(f"Largest batch size that ran: {largest} (set data.init_args.batch_size; keep some memory headroom)")
    return 0
