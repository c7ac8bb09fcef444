"""Per-step time of the default `fit` with idle per-batch hooks skipped (as shipped) and with every
hook sent to every callback (as Lightning does by itself), against Lightning's bare Trainer.

kit/training/idle_hooks.py marks the per-batch hooks a callback leaves empty as absent, so that
Lightning does not dispatch them; here that step is switched off for one side. Same model, data
and process; the sides alternate (ABBA) over the repeats; the first epoch of each run is a warm-up.

    .venv/bin/python bench/idle_hooks.py [--repeats 6] [--epochs 6]
"""

from __future__ import annotations

import argparse
import statistics

from example_project import use_rendered_example
from overhead import bare_trainer_epoch_times, lightning_fit_epoch_times, per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    use_rendered_example("bench-idle-hooks-")
    from digits_mlp.kit.training import lightning_cli

    shipped = lightning_cli.skip_idle_batch_hooks
    times: dict[str, list[float]] = {"bare Trainer": [], "fit, idle hooks skipped": [], "fit, every hook sent": []}
    for repeat in range(args.repeats):
        for side in list(times) if repeat % 2 == 0 else reversed(list(times)):
            label = f"{side}-{repeat}"
            if side == "bare Trainer":
                times[side] += per_step(bare_trainer_epoch_times([], args.epochs, label))
                continue
            lightning_cli.skip_idle_batch_hooks = shipped if side == "fit, idle hooks skipped" else (lambda _: None)
            try:
                times[side] += per_step(lightning_fit_epoch_times([], args.epochs, label))
            finally:
                lightning_cli.skip_idle_batch_hooks = shipped
    bare = statistics.median(times["bare Trainer"])
    print(f"per-step time of the example, median of {args.repeats} runs x {args.epochs - 1} timed epochs:")
    for side, values in times.items():
        median = statistics.median(values)
        print(f"  {side:<26} {median * 1e3:7.3f} ms  {median / bare:.3f}x bare")


if __name__ == "__main__":
    main()
