"""What the kit adds to each training step, counted rather than timed: Python function calls and
callback hook calls per step, the default `fit` of the example versus Lightning's bare Trainer.

Counts do not depend on how busy the machine is, so they show a change in the kit's per-step
work that the timed benchmark (overhead.py, noise about +-10 %) cannot resolve. Both sides train
the example model on its training split for a few epochs in this process; the count covers the
training batches of every epoch after the first (validation and epoch-end work excluded), as
overhead.py's timer does. The bare side is overhead.py's: a plain shuffled DataLoader, no logger,
checkpointing, progress, model summary or callbacks. The table lists where the extra calls go.

    .venv/bin/python bench/kit_calls.py [--epochs 4] [--top 12]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import time

import lightning.pytorch as pl
from example_project import use_rendered_example

# Filled by CallCounter during the fits: label -> (profile, steps counted).
COUNTS: dict[str, tuple[cProfile.Profile, int]] = {}


class CallCounter(pl.Callback):
    """Profiles the training batches of the epochs after the first; stops where validation starts."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.profile = cProfile.Profile()
        self.steps = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= 1:
            self.profile.enable()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch >= 1:
            self.steps += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        self.profile.disable()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.profile.disable()
        COUNTS[self.label] = (self.profile, self.steps)


def count_default_fit(epochs: int) -> None:
    from digits_mlp.kit.training.lightning_cli import run_lightning_cli

    args = [
        "fit",
        f"--trainer.max_epochs={epochs}",
        "--run_name",
        f"bench-calls-{time.monotonic_ns()}",
        "--trainer.callbacks+=kit_calls.CallCounter",
        "--trainer.callbacks.label=fit",
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run_lightning_cli(args) == 0


def count_bare_trainer(epochs: int) -> None:
    from overhead import bare_trainer, model_and_plain_loader

    model, loader = model_and_plain_loader([])
    trainer = bare_trainer(epochs, CallCounter("bare"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(model, train_dataloaders=loader)


def per_step(label: str) -> dict[str, float]:
    """Calls per step of each function, by a short name."""
    profile, steps = COUNTS[label]
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    calls: dict[str, float] = {}
    for (path, line, function), (_, ncalls, *_rest) in stats.items():
        short = path.split("site-packages/")[-1].split("/src/")[-1]
        calls[f"{short}:{line} {function}"] = ncalls / steps
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    use_rendered_example("bench-kit-calls-")
    sys.modules.setdefault("kit_calls", sys.modules[__name__])  # the fit's config names kit_calls.CallCounter
    count_default_fit(args.epochs)
    count_bare_trainer(args.epochs)
    fit, bare = per_step("fit"), per_step("bare")
    fit_total, bare_total = sum(fit.values()), sum(bare.values())
    print(f"per training step, over {COUNTS['fit'][1]} steps ({args.epochs - 1} epochs after the first):")
    print(f"  Python function calls: bare Trainer {bare_total:.0f}, default fit {fit_total:.0f} "
          f"(+{fit_total - bare_total:.0f}, {fit_total / bare_total:.2f}x)")  # fmt: skip
    # NoProfiler.profile runs once per hook dispatched: to each callback that gets it, and to the model and strategy.
    fit_dispatches = sum(n for name, n in fit.items() if "no_profiler.py" in name and name.endswith(" profile"))
    bare_dispatches = sum(n for name, n in bare.items() if "no_profiler.py" in name and name.endswith(" profile"))
    print(f"  hooks dispatched (to a callback, the model or the strategy): bare {bare_dispatches:.0f}, "
          f"fit {fit_dispatches:.0f}")  # fmt: skip
    extra = sorted(((n - bare.get(name, 0.0), name) for name, n in fit.items()), reverse=True)
    print(f"  the {args.top} functions with the most extra calls per step:")
    for count, name in extra[: args.top]:
        print(f"    {count:+7.1f}  {name}")


if __name__ == "__main__":
    main()
