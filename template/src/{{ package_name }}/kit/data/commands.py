"""`<package> data fetch | record | verify | prepare`: raw data, its checksums, its features.

Managed by the copier-lightning template. It drives the configured DataModule through three
optional methods: `raw_files()` (the raw input paths), `fetch_raw()` (get them) and
`prepare_features()` (compute or load the cached features; returns a CacheResult). The checksum
manifest `data/raw.sha256` uses sha256sum's format, so `sha256sum -c data/raw.sha256` checks it too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..base.file_hashes import file_sha256
from .raw_data import MANIFEST, differences, read_manifest


def data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="data", description=__doc__)
    parser.add_argument("action", choices=["fetch", "record", "verify", "prepare"])
    args, options = parser.parse_known_args(argv)
    from ..training.project_loading import load_model_and_data

    _, data = load_model_and_data(options)
    needed = {
        "fetch": ["fetch_raw", "raw_files"],
        "record": ["raw_files"],
        "verify": ["raw_files"],
        "prepare": ["prepare_features"],
    }
    if missing := [name for name in needed[args.action] if not callable(getattr(data, name, None))]:
        print(
            f"error: `data {args.action}` calls the data module's {' and '.join(f'{name}()' for name in missing)}, "
            f"which {type(data).__name__} does not define (see the example's data.py for what each returns)",
            file=sys.stderr,
        )
        return 2
    if args.action == "fetch":
        data.fetch_raw()  # first: a data module that writes its raw files has none to list before
    files = [Path(p) for p in data.raw_files()]
    if args.action == "fetch":
        lines = [f"present: {path}" for path in files]
        if len(lines) > 20:  # a data set of many small files: the first few, the last, and the count
            lines = [*lines[:3], f"  ... and {len(lines) - 4:,} more", lines[-1]]
        print("\n".join(lines))
    elif args.action == "record":
        MANIFEST.parent.mkdir(parents=True, exist_ok=True)
        MANIFEST.write_text("".join(f"{file_sha256(path)}  {path}\n" for path in files))
        print(f"Recorded the checksums of {len(files)} raw file(s) in {MANIFEST}; commit it.")
    elif args.action == "verify":
        if not MANIFEST.exists():
            print(f"error: no checksum manifest at {MANIFEST}; create it with `data record`")
            return 2
        problems = differences(read_manifest(), files)
        for problem in problems:
            print(problem)
        if problems:
            print(f"Raw data differs from {MANIFEST}: {len(problems)} problem(s).")
            return 1
        print(f"All {len(files)} raw file(s) match {MANIFEST}.")
    else:
        result = data.prepare_features()
        print(f"Features {'loaded from the cache' if result.hit else 'computed and cached'}: {result.path}")
    return 0
