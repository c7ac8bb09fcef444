"""`<package> readme [--check]`: regenerate README.md's artifact table from artifacts.py.

Managed by the copier-lightning template. The table between the `artifacts:begin` and
`artifacts:end` markers is generated, so that it cannot drift from the declarations; `--check`
exits with 1 (and says so) when README.md is out of date, for tests and pre-commit.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..base.project_package import PACKAGE

README = Path("README.md")
BEGIN = "<!-- artifacts:begin: generated from artifacts.py by `{package} readme`; edit artifacts.py instead -->"
END = "<!-- artifacts:end -->"


def shown_path(path: str) -> str:
    """Paths under the runs directory as runs/..., whatever RUNS_DIR is."""
    from ..runs.root import runs_root

    try:
        return "runs/" + str(Path(path).resolve().relative_to(runs_root()))
    except ValueError:
        return path


def artifact_table(package: str, artifacts) -> str:
    lines = [
        BEGIN.format(package=package),
        "| artifact | kind | what it is | command | files |",
        "|---|---|---|---|---|",
    ]
    for artifact in artifacts:
        files = ", ".join(f"`{shown_path(output)}`" for output in artifact.outputs)
        command = f"`{package} {artifact.command}`"
        lines.append(f"| {artifact.name} | {artifact.kind} | {artifact.description} | {command} | {files} |")
    lines.append(END)
    return "\n".join(lines)


def readme_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="readme", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    artifacts = __import__(f"{PACKAGE}.artifacts", fromlist=["ARTIFACTS"]).ARTIFACTS
    text = README.read_text()
    pattern = re.compile(r"<!-- artifacts:begin.*?<!-- artifacts:end -->", re.S)
    if not pattern.search(text):
        print(f"error: {README} has no artifacts:begin / artifacts:end markers")
        return 2
    updated = pattern.sub(lambda _: artifact_table(PACKAGE, artifacts), text)
    if args.check:
        if updated != text:
            print(f"{README} is out of date with artifacts.py: run `{PACKAGE} readme`")
            return 1
        print(f"{README} is up to date with artifacts.py")
        return 0
    README.write_text(updated)
    print(f"{'Updated' if updated != text else 'Already current:'} {README}")
    return 0
