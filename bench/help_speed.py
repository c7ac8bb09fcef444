"""`fit --help`: made (LightningCLI imports Lightning and reads every signature) versus kept.

The kept text (kit/base/help_cache.py) answers when nothing it is made of changed; measured in the
example project, a fresh process each time, the two cases alternating.

    .venv/bin/python bench/help_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from example_project import use_rendered_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work, _ = use_rendered_example("bench-help-")
    cache = Path(tempfile.mkdtemp(prefix="bench-help-cache-"))
    command = [sys.executable, "-c", "import sys; from digits_mlp.cli import main; sys.exit(main(['fit', '--help']))"]
    env = {"XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(Path.cwd() / "src"), "PATH": "/usr/bin:/bin"}

    def timed() -> float:
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        return time.perf_counter() - started

    made, kept = [], []
    for _ in range(args.repeats):
        shutil.rmtree(cache / "digits_mlp", ignore_errors=True)
        made.append(timed())  # nothing kept: LightningCLI makes the text (and keeps it)
        kept.append(timed())  # the same code and configs: the kept text
    print(f"fit --help, median of {args.repeats}, fresh process each:")
    print(f"  made by LightningCLI  {statistics.median(made):6.2f} s  (range {min(made):.2f}-{max(made):.2f})")
    print(f"  kept                  {statistics.median(kept):6.2f} s  (range {min(kept):.2f}-{max(kept):.2f})")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
