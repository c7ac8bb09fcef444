"""Migration for 0.3.0: `checkpointing.monitor` and `mode` default to `auto`; a metric the researcher named stays.

Run by `copier update` after it crosses 0.3.0 (copier.yml, `_migrations`), in the project's root.
The new configs/default.yaml says `monitor: auto` and `mode: auto` (chosen at the first validation
from what it logs) where 0.2.0 said `val/acc` and `max`. A project that kept val/acc takes the new
lines without a word: for a model that logs val/acc, "auto" chooses it. A project that named its
own metric (val/loss, min) meets the new lines on the same two lines, and copier writes conflict
markers there; the researcher's choice was deliberate, so this keeps it and removes the markers,
and says so. A conflict anywhere else is left for the researcher, as copier leaves every conflict.

Idempotent: a second run finds no such conflict and changes nothing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("configs/default.yaml")
CONFLICT = re.compile(r"<<<<<<< before updating\n(?P<mine>.*?)=======\n(?P<new>.*?)>>>>>>> after updating\n", re.S)
MONITOR_LINE = re.compile(r"  (monitor|mode): \S.*\n")
NEW_LINES = "  monitor: auto\n  mode: auto\n"


def keep_named_monitor(text: str) -> tuple[str, list[str]]:
    """`text` with each monitor/mode-only conflict resolved to the researcher's lines, and those lines."""
    kept: list[str] = []

    def resolve(conflict: re.Match) -> str:
        mine = conflict["mine"]
        only_monitor = mine and not MONITOR_LINE.sub("", mine)
        if conflict["new"] != NEW_LINES or not only_monitor:
            return conflict[0]
        kept.extend(line.strip() for line in mine.splitlines())
        return mine

    return CONFLICT.sub(resolve, text), kept


def main() -> int:
    if not DEFAULT_CONFIG.is_file():
        return 0
    text, kept = keep_named_monitor(DEFAULT_CONFIG.read_text())
    if kept:
        DEFAULT_CONFIG.write_text(text)
        print(
            f"keep_named_monitor: {DEFAULT_CONFIG} keeps your {', '.join(kept)} (the new default is auto: the "
            f"metric chosen from what validation logs; see `git diff {DEFAULT_CONFIG}`)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
