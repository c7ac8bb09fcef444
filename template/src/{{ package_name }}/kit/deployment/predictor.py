"""A trained run as a function from raw samples to outputs. Managed by the copier-lightning template.

`predict-files` and `serve` both answer with it, so a sample gets the same answer from either:
the samples go through the data module's `serving_preprocessing` (the very function its training
features use, data.py), then through the run's best checkpoint (or a named one) in PyTorch, or
through the run's ONNX export (`export` first).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..runs.directory import RunDirectory

if TYPE_CHECKING:
    import torch

ENGINES = ("pytorch", "onnx")


class PredictorError(ValueError):
    """The run cannot predict: no trained checkpoint, no serving preprocessing, other base weights, ..."""


@dataclass(frozen=True)
class Predictor:
    """`preprocess(samples)` -> model inputs (a tensor, one row per sample); `predict(inputs)` -> outputs."""

    run: RunDirectory
    preprocess: Callable[[Any], torch.Tensor]
    predict: Callable[[torch.Tensor], torch.Tensor]
    source: str  # what answers: the checkpoint's path, or the ONNX file's


def add_predictor_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose what answers (`predict-files`, `serve`): the engine and the checkpoint."""
    parser.add_argument("--engine", choices=ENGINES, default="pytorch",
                        help="the checkpoint in PyTorch, or the run's ONNX export (`export` first)")  # fmt: skip
    parser.add_argument("--ckpt_path", default=None, help="this checkpoint instead of the run's best")


def load_predictor(config_args: list[str], engine: str = "pytorch", ckpt_path: str | None = None) -> Predictor:
    """The predictor of the run that `fit` with `config_args` trains; PredictorError when it cannot predict."""
    import torch

    from ..runs.checkpoint_files import MissingTrainedRun, checkpoint_to_use
    from ..training.project_loading import load_project
    from ..weights.cache import WeightsError

    project = load_project(config_args)
    model, data, run = project.model, project.datamodule, project.run
    preprocess = getattr(data, "serving_preprocessing", None)
    if preprocess is None:
        raise PredictorError(
            f"{type(data).__name__} has no `serving_preprocessing`: give it the function that turns raw samples "
            "into model inputs, the one its training features use (see the example's data.py)"
        )
    if engine == "onnx":
        from .onnx_runtime import MissingRuntime, onnx_session

        path = run.export_dir / "model.onnx"
        if not path.is_file():
            raise PredictorError(f"run '{run.name}' has no ONNX export ({path}): run `export` first")
        try:
            session = onnx_session(path)
        except MissingRuntime as missing:
            raise PredictorError(str(missing)) from None

        def predict_onnx(inputs: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"inputs": inputs.numpy()})[0]).float()

        return Predictor(run, preprocess, predict_onnx, str(path))
    try:
        checkpoint = checkpoint_to_use(run, ckpt_path, "predict with")
    except (MissingTrainedRun, WeightsError) as refused:  # no trained run; other base weights than its own
        raise PredictorError(str(refused)) from None
    # On the GPU where there is one (a serving job on a MIG slice), as training would place it.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = type(model).load_from_checkpoint(checkpoint, map_location=device).eval()

    def predict_pytorch(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return trained(inputs.to(device)).float().cpu()

    return Predictor(run, preprocess, predict_pytorch, str(checkpoint))
