"""A command's own cost in CPU time: with and without the kit's garbage-collector settings.

kit/base/garbage_collection.py keeps Python's collector from walking Lightning's import-time
objects again and again (while importing, and at the interpreter's shutdown). Each command runs as
a fresh process of the example project, the two settings alternating; "without" is the same command
with the two helpers replaced by no-ops. User+system CPU of the process (its children included).

    .venv/bin/python bench/command_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

from example_project import command_cost, use_rendered_example

WITHOUT = (
    "import contextlib; import digits_mlp.kit.base.garbage_collection as g; "
    "g.imports_without_collection = contextlib.nullcontext; g.collect_once_at_exit = lambda: None; "
)
COMMANDS = {
    "fit, one epoch": ["fit", "--trainer.max_epochs=1", "--run_name", "bench"],
    "test": ["test", "--run_name", "bench"],
    "evaluate": ["evaluate", "--run_name", "bench"],
}


def cpu_seconds(arguments: list[str], setting: str, env: dict) -> float:
    return command_cost(arguments, env, first="" if setting == "with" else WITHOUT)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work, _ = use_rendered_example("bench-start-")
    env = {**os.environ, "PYTHONPATH": str(Path.cwd() / "src")}
    print(f"CPU seconds per command, median of {args.repeats}, fresh process each (with / without the kit's setting):")
    for name, arguments in COMMANDS.items():
        if name.startswith("fit"):
            shutil.rmtree(Path(env["RUNS_DIR"]) / "bench", ignore_errors=True)
        times: dict[str, list[float]] = {"with": [], "without": []}
        for repeat in range(args.repeats):
            for setting in ("without", "with") if repeat % 2 else ("with", "without"):
                if name.startswith("fit"):
                    shutil.rmtree(Path(env["RUNS_DIR"]) / "bench", ignore_errors=True)
                times[setting].append(cpu_seconds(arguments, setting, env))
        w, wo = statistics.median(times["with"]), statistics.median(times["without"])
        print(f"  {name:16s} {w:5.2f} s / {wo:5.2f} s  ({wo - w:+.2f} s without; ratio {w / wo:.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
