"""The `evaluate` subcommand. Managed by the copier-lightning template."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="evaluate",
        description="The full evaluation of a run's best checkpoint on a split: predictions once, saved, every "
        "metric derived from them. Other options go to the config parser (--config, --run_name, ...).",
    )
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--ckpt_path", default=None, help="evaluate this checkpoint instead of the run's best")
    args, config_args = parser.parse_known_args(argv)

    from ..base.task_kinds import TaskKindError
    from ..runs.checkpoint_files import MissingTrainedRun, checkpoint_to_use
    from ..training.project_loading import load_project
    from ..training.refused_inputs import checkpoint_mismatch_message
    from ..weights.cache import WeightsError
    from .evaluation import NotEvaluable, evaluate_checkpoint

    project = load_project(config_args)
    model, data, run = project.model, project.datamodule, project.run
    try:
        checkpoint = checkpoint_to_use(run, args.ckpt_path, "evaluate", data=data, model=model)
    except (MissingTrainedRun, WeightsError) as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    data.setup("fit" if args.split == "val" else "test")
    loader = data.val_dataloader() if args.split == "val" else data.test_dataloader()
    directory = run.evaluation_dir(args.split)
    try:
        metrics = evaluate_checkpoint(type(model), Path(checkpoint), loader, directory)
    except (NotEvaluable, TaskKindError) as refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as error:  # weights that do not fit the model: torch's refusal
        refused = checkpoint_mismatch_message(error)
        if refused is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        return 2
    print(f"Evaluated {checkpoint} on the {args.split} split ({metrics['examples']} examples):")
    print((directory / "metrics.md").read_text().rstrip())
    print(f"Predictions, tables and plot: {directory}")
    return 0
