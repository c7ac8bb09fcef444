"""The example's `fit` with OpenMP's defaults, with OMP_WAIT_POLICY=PASSIVE and on one thread, on a busy machine.

scripts/test.sh sets OMP_WAIT_POLICY=PASSIVE for the test suite: its three test processes share two
cores, and torch's OpenMP threads that wait for work spin by default, taking CPU time that the other
processes need. One thread instead is measured beside it (not chosen: it changes the thread count,
and with it the numbers a run computes, and gained no more here). The same command, a fresh process
each, the settings alternating, while `--busy` processes keep the cores loaded (0: a quiet machine).
User+system CPU of the command (its children included) and its wall time.

    .venv/bin/python bench/omp_wait.py [--repeats 3] [--busy 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from example_project import command_cost, use_rendered_example

# The environment each setting adds.
SETTINGS = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "one thread": {"OMP_NUM_THREADS": "1"}}


def fit_once(setting: str, epochs: int, env: dict) -> tuple[float, float]:
    """CPU and wall seconds of one `fit` of the example in a fresh process."""
    shutil.rmtree(Path(env["RUNS_DIR"]) / "bench-omp", ignore_errors=True)
    run_env = {k: v for k, v in env.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    run_env.update(SETTINGS[setting])
    return command_cost(["fit", f"--trainer.max_epochs={epochs}", "--run_name", "bench-omp"], run_env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes beside it")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    use_rendered_example("bench-omp-")
    env = {**os.environ, "PYTHONPATH": str(Path.cwd() / "src")}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
        for repeat in range(args.repeats):
            for setting in SETTINGS if repeat % 2 == 0 else reversed(list(SETTINGS)):
                results[setting].append(fit_once(setting, args.epochs, env))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print(
        f"`fit --trainer.max_epochs={args.epochs}` of the example, fresh process, {args.busy} busy processes "
        f"beside it on {os.cpu_count()} CPUs, median of {args.repeats}:"
    )
    cpu = {name: statistics.median(c for c, _ in runs) for name, runs in results.items()}
    wall = {name: statistics.median(w for _, w in runs) for name, runs in results.items()}
    for name in SETTINGS:
        cpu_ratio, wall_ratio = cpu[name] / cpu["default"], wall[name] / wall["default"]
        figures = f"CPU {cpu[name]:6.2f} s   wall {wall[name]:6.2f} s"
        print(f"  {name:10s} {figures}   against the default: CPU {cpu_ratio:.2f}, wall {wall_ratio:.2f}")


if __name__ == "__main__":
    main()
