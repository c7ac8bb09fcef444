"""Lightning overhead of a generated project: its default `fit` versus a hand-written PyTorch loop,
and what the kit itself costs: the default `fit` versus Lightning's bare Trainer.

All sides train the same model on the same data with the same batch size and optimizer, in this one
process, alternating in ABBA order (raw, fit, fit, raw, ...) so that drift of the machine's speed
cancels, several repeats. Per-step time = time of an epoch's training batches / steps
(validation excluded on both sides; the first epoch of every repeat is a warm-up and not counted).
The default `fit` runs exactly as a researcher's `<package> fit` does: progress bar, CSV logging,
rolling and best-k checkpoints, RNG capture and the resumable loader included. The bare Trainer is
`lightning.pytorch.Trainer` with the same model and a plain shuffled DataLoader, and no logger,
checkpointing, progress bar, model summary or callbacks (only the timer), no profiler either (the
default fit gets kit.training.no_profiler.NoProfiler): default fit / bare Trainer is the kit's cost.
Also times `copier copy` -> trained example (render, then a full default `fit`, in this process).

    .venv/bin/python bench/overhead.py [--repeats 5] [--epochs 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]

from example_project import use_rendered_example  # noqa: E402

from template_dev import EXAMPLE_ANSWERS  # noqa: E402

PACKAGE = EXAMPLE_ANSWERS["package_name"]
# The template's fit with Lightning's default (pass-through) profiler instead of kit.training.no_profiler.NoProfiler.
LIGHTNING_PROFILER = ["--trainer.profiler=lightning.pytorch.profilers.PassThroughProfiler"]
MODELS = {
    "example MLP (default config)": [],
    "MLP with >= 1M parameters": ["--model.init_args.hidden_sizes=[1024, 1024]"],
}


def model_and_plain_loader(model_args: list[str]):
    """The config's model, and its training split in a plain shuffled DataLoader (seeded)."""
    import torch
    from digits_mlp.kit import load_model_and_data
    from torch.utils.data import DataLoader

    torch.manual_seed(42)
    model, data = load_model_and_data(model_args)
    data.setup("fit")
    return model, DataLoader(data.splits["train"], batch_size=data.hparams.batch_size, shuffle=True)


def raw_pytorch_epoch_times(model_args: list[str], epochs: int) -> list[tuple[float, int]]:
    """The loop one would write by hand: same model, data, batch size, optimizer and schedule."""
    import torch
    import torch.nn.functional as F

    model, loader = model_and_plain_loader(model_args)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=model.hparams.learning_rate, weight_decay=model.hparams.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    times = []
    for _ in range(epochs):
        model.train()
        started, steps = time.perf_counter(), 0
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        times.append((time.perf_counter() - started, steps))
        scheduler.step()
    return times


def bare_trainer(epochs: int, measuring_callback):
    """Lightning's Trainer with nothing of the kit: no logger, checkpointing, progress, summary or
    callbacks besides the one that measures; NoProfiler, as the default fit has."""
    import lightning.pytorch as pl
    from digits_mlp.kit.training.no_profiler import NoProfiler

    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        profiler=NoProfiler(),
        callbacks=[measuring_callback],
    )


def bare_trainer_epoch_times(model_args: list[str], epochs: int, label: str) -> list[tuple[float, int]]:
    """Lightning without the kit: the same model and a plain shuffled DataLoader, nothing else."""
    import step_timer

    model, loader = model_and_plain_loader(model_args)
    step_timer.EPOCH_TIMES.pop(label, None)
    trainer = bare_trainer(epochs, step_timer.StepTimer(label))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(model, train_dataloaders=loader)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # the Trainer resets it
    return step_timer.EPOCH_TIMES[label]


def lightning_fit_epoch_times(model_args: list[str], epochs: int, label: str) -> list[tuple[float, int]]:
    import step_timer
    from digits_mlp.kit.training.lightning_cli import run_lightning_cli

    step_timer.EPOCH_TIMES.pop(label, None)
    args = [
        "fit",
        *model_args,
        f"--trainer.max_epochs={epochs}",
        "--run_name",
        f"bench-{time.monotonic_ns()}",
        "--trainer.callbacks+=step_timer.StepTimer",
        f"--trainer.callbacks.label={label}",
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run_lightning_cli(args) == 0
    return step_timer.EPOCH_TIMES[label]


def per_step(times: list[tuple[float, int]]) -> list[float]:
    return [seconds / steps for seconds, steps in times[1:]]  # the first epoch warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    _, rendered = use_rendered_example("bench-overhead-")
    from digits_mlp.kit.training.lightning_cli import run_lightning_cli

    fit_started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run_lightning_cli(["fit"]) == 0
    full_fit = time.perf_counter() - fit_started

    print(f"copier copy: {rendered:.1f} s; default fit of the example (in-process): {full_fit:.1f} s")
    print(f"per-step time, median over {args.repeats} repeats x {args.epochs - 1} timed epochs (ratio of medians)")
    print(f"{'model':<32} {'raw PyTorch':>12} {'bare Trainer':>13} {'default fit':>12}   ratios")
    for name, model_args in MODELS.items():
        times: dict[str, list[float]] = {"raw": [], "bare": [], "fit": [], "fit, Lightning's profiler": []}
        for repeat in range(args.repeats):
            sides = list(times) if repeat % 2 == 0 else list(reversed(times))
            for side in sides:
                label = f"{name}-{side}-{repeat}"
                if side == "raw":
                    times[side] += per_step(raw_pytorch_epoch_times(model_args, args.epochs))
                elif side == "bare":
                    times[side] += per_step(bare_trainer_epoch_times(model_args, args.epochs, label))
                else:
                    extra = LIGHTNING_PROFILER if side != "fit" else []
                    times[side] += per_step(lightning_fit_epoch_times(model_args + extra, args.epochs, label))
        raw, bare, fit, with_profiler = (statistics.median(times[side]) * 1e3 for side in times)
        fastest = {side: min(values) for side, values in times.items()}  # the least disturbed epochs
        print(
            f"{name:<32} {raw:>9.3f} ms {bare:>10.3f} ms {fit:>9.3f} ms"
            f"   fit/raw {fit / raw:.2f}x, bare/raw {bare / raw:.2f}x, kit (fit/bare) {fit / bare:.3f}x"
            f" (fastest epochs {fastest['fit'] / fastest['bare']:.3f}x); with Lightning's default profiler"
            f" fit/raw {with_profiler / raw:.2f}x"
        )


if __name__ == "__main__":
    main()
