"""Cost of one Lightning hook call with the template's NoProfiler versus Lightning's default profiler.

A default `fit` of the generated project runs one epoch; at its third training batch a callback
times, in that process and on that trainer, Lightning's own hook dispatch (a callback hook sent to
every callback, and a LightningModule hook) with each profiler in turn, alternating ABAB so that
the machine's drift cancels. The per-step benchmark (overhead.py) cannot resolve this difference
from its noise; the per-call figures can.

    .venv/bin/python bench/hook_calls.py [--calls 20000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]

import lightning.pytorch as pl  # noqa: E402
from example_project import use_rendered_example  # noqa: E402

OPTIONS = {"calls": 20000, "rounds": 6}
# Microseconds per call, per (hook kind, profiler name); filled by HookTimer during the fit.
TIMES: dict[tuple[str, str], list[float]] = {}


def microseconds_per_call(call, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


class HookTimer(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx != 2:
            return
        from digits_mlp.kit.training.no_profiler import NoProfiler
        from lightning.pytorch.profilers import PassThroughProfiler
        from lightning.pytorch.trainer import call

        loss = outputs["loss"]
        hooks = {
            f"callback hook, {len(trainer.callbacks)} callbacks": lambda: call._call_callback_hooks(
                trainer, "on_before_backward", loss
            ),
            "LightningModule hook": lambda: call._call_lightning_module_hook(trainer, "on_before_backward", loss),
        }
        kept = trainer.profiler
        profilers = {"NoProfiler": NoProfiler(), "Lightning's default": PassThroughProfiler()}
        try:
            for _ in range(OPTIONS["rounds"]):
                for name, profiler in profilers.items():
                    trainer.profiler = profiler
                    for kind, hook in hooks.items():
                        TIMES.setdefault((kind, name), []).append(microseconds_per_call(hook, OPTIONS["calls"]))
        finally:
            trainer.profiler = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=OPTIONS["calls"])
    parser.add_argument("--rounds", type=int, default=OPTIONS["rounds"])
    OPTIONS.update(vars(parser.parse_args()))
    # The config names the callback as hook_calls.HookTimer: let that be this running module.
    sys.modules.setdefault("hook_calls", sys.modules[__name__])

    use_rendered_example("bench-hooks-")
    from digits_mlp.kit.training.lightning_cli import run_lightning_cli

    args = ["fit", "--trainer.max_epochs=1", "--run_name", "hooks", "--trainer.callbacks+=hook_calls.HookTimer"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run_lightning_cli(args) == 0

    print(f"one hook call, median of {OPTIONS['rounds']} rounds x {OPTIONS['calls']} calls")
    print(f"{'hook':<28} {'NoProfiler':>11} {'Lightning default':>18} {'ratio':>7}")
    for kind in dict.fromkeys(kind for kind, _ in TIMES):
        ours = statistics.median(TIMES[(kind, "NoProfiler")])
        theirs = statistics.median(TIMES[(kind, "Lightning's default")])
        print(f"{kind:<28} {ours:>8.2f} us {theirs:>15.2f} us {ours / theirs:>6.2f}x")


if __name__ == "__main__":
    main()
