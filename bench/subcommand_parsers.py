"""A command with its own subcommand's parser only, against Lightning's four parsers.

LightningCLI builds a parser for each of fit, validate, test and predict whatever runs, each a walk
of the trainer's, the model's and the data module's signatures; the kit's ProjectCLI builds only
the one being run. In one process (imports done once), the example's commands run through the
project's `main`, the two settings alternating; "four" is ProjectCLI with Lightning's own
`subcommands`. Process CPU time per command, median of the repeats.

    .venv/bin/python bench/subcommand_parsers.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import time

from example_project import use_rendered_example

COMMANDS = {
    "fit --print_config": ["fit", "--print_config"],
    "fit, one epoch": ["fit", "--trainer.max_epochs=1", "--run_name", "bench-parsers"],
    "test": ["test", "--run_name", "bench-parsers"],
}


def cpu_seconds(main, arguments: list[str]) -> float:
    started = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(arguments)
        except SystemExit as exit:  # --print_config ends in jsonargparse's exit
            code = exit.code
    assert code == 0, f"{arguments} exited {code}"
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    work, _ = use_rendered_example("bench-parsers-")
    from digits_mlp.cli import main as project_main
    from digits_mlp.kit.training.lightning_cli import LightningCLI, ProjectCLI

    one = ProjectCLI.subcommands
    four = LightningCLI.subcommands  # a staticmethod: as an attribute of ProjectCLI it takes self
    runs = work / "runs"
    project_main(["fit", "--trainer.max_epochs=1", "--run_name", "bench-parsers"])  # for `test`; warms up
    print(f"CPU seconds per command in one process, median of {args.repeats} (one parser / four):")
    for name, arguments in COMMANDS.items():
        times: dict[str, list[float]] = {"one": [], "four": []}
        for repeat in range(args.repeats):
            for setting in ("four", "one") if repeat % 2 else ("one", "four"):
                ProjectCLI.subcommands = one if setting == "one" else lambda self: four()
                if name.startswith("fit,"):
                    shutil.rmtree(runs / "bench-parsers", ignore_errors=True)
                times[setting].append(cpu_seconds(project_main, arguments))
        ProjectCLI.subcommands = one
        o, f = statistics.median(times["one"]), statistics.median(times["four"])
        print(f"  {name:20s} {o:5.3f} s / {f:5.3f} s  ({f - o:.3f} s saved; ratio {o / f:.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
