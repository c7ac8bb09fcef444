"""Run every benchmark in bench/, one after another: `.venv/bin/python bench/run_all.py`."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = [
    "overhead.py",
    "kit_calls.py",
    "idle_hooks.py",
    "finetune_overhead.py",
    "ddp_overhead.py",
    "ddp_overhead.py --strategy fsdp2",
    "sharded_checkpointing.py",
    "hook_calls.py",
    "checkpointing.py",
    "copier_speed.py",
    "inference.py",
    "serving.py",
    "runs_report.py",
    "run_integrity.py",
    "help_speed.py",
    "command_start.py",
    "subcommand_parsers.py",
    "omp_wait.py",
]

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for benchmark in BENCHMARKS:
        name, *options = benchmark.split()
        print(f"== {benchmark}", flush=True)
        subprocess.run([sys.executable, str(here / name), *options], check=True)
