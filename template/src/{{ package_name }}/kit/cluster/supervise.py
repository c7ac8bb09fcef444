"""Restart a crashed training command. Managed by the copier-lightning template.

`<package> supervise --max-restarts 3 -- fit --config configs/default.yaml` runs the command and,
if it dies (an exception, a segfault, an out-of-memory kill), waits a little and runs it again; the
run resumes from its newest checkpoint each time. Outside SLURM only: there, requeueing does this.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from ..base.project_package import PACKAGE
from ..runs.directory import DIVERGED_EXIT_CODE


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="supervise",
        description="Run a subcommand; after a crash, run it again (it resumes), up to --max-restarts times.",
    )
    parser.add_argument("--max-restarts", type=int, default=3, help="restarts after a crash (default 3)")
    parser.add_argument("--backoff-seconds", type=float, default=10.0, help="wait before the first restart")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the subcommand and its options, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the subcommand to run after --, e.g. supervise -- fit --config configs/default.yaml")
    if args.max_restarts < 0:
        parser.error("--max-restarts must be 0 or more")

    full_command = [sys.executable, "-m", PACKAGE, *command]
    for attempt in range(args.max_restarts + 1):
        returncode = subprocess.call(full_command)
        if returncode in (0, 2, DIVERGED_EXIT_CODE):  # finished, or what a restart cannot fix
            return returncode
        if attempt == args.max_restarts:
            break
        wait = args.backoff_seconds * 2**attempt
        print(
            f"supervise: command exited with {returncode}; restart {attempt + 1} of {args.max_restarts} "
            f"in {wait:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(wait)
    print(f"supervise: giving up after {args.max_restarts} restarts (last exit code {returncode})", file=sys.stderr)
    return returncode
