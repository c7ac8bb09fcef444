"""How long `copier copy` and `copier update` take on the real template.

A throwaway template repository gets release 1.0.0 (this working tree) and 1.1.0 (the next-release
changes the update tests use: edits, a moved file with its migration). A "realistic project" is the
example at 1.0.0 with a researcher's edits committed (model, data, configs, README, a new module).
Medians over several repeats, in one process:

    .venv/bin/python bench/copier_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]

from test_update import NEW, OLD, edit, make_next_release, update  # noqa: E402

from template_dev import EXAMPLE_ANSWERS, commit_all, git, render, snapshot_template  # noqa: E402


def realistic_project(template: Path, destination: Path) -> Path:
    render(template, destination, vcs_ref=OLD)
    src = destination / "src" / EXAMPLE_ANSWERS["package_name"]
    edit(src / "model.py", "dropout: float = 0.1", "dropout: float = 0.25")
    edit(destination / "configs" / "default.yaml", "seed_everything: 42", "seed_everything: 7")
    (src / "augment.py").write_text('"""My own module."""\n')
    with open(destination / "README.md", "a") as stream:
        stream.write("\n## Notes\n\nMy notes.\n")
    commit_all(destination, "my edits")
    return destination


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-copier-"))
    template = snapshot_template(work / "template")
    git(template, "tag", OLD)
    make_next_release(template)

    copies, updates = [], []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        render(template, work / f"copy-{repeat}", vcs_ref=NEW)
        copies.append(time.perf_counter() - started)
        project = realistic_project(template, work / f"project-{repeat}")
        started = time.perf_counter()
        update(project)
        updates.append(time.perf_counter() - started)
    copy_s, update_s = statistics.median(copies), statistics.median(updates)
    print(f"copier copy (release {NEW}): median {copy_s:.2f} s over {args.repeats} repeats")
    print(f"copier update {OLD} -> {NEW} of an edited project: median {update_s:.2f} s over {args.repeats} repeats")
    print(f"update / copy: {update_s / copy_s:.1f}x")


if __name__ == "__main__":
    main()
