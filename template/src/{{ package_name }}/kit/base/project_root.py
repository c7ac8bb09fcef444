"""Where the project's commands run from. Managed by the copier-lightning template.

Every command reads `configs/default.yaml`, `data/` and `runs/` relative to the directory it runs
in, the project's root. Run from below it (`src/`, `runs/<run>/`), `fit` used to stop with "the
following arguments are required: fit.data, fit.model", since the default config was not found.
The commands then refuse in one line naming the root. They do not move there themselves: paths
given on the command line (`--config`, `--ckpt_path`) are meant relative to where they were typed.
"""

from __future__ import annotations

from pathlib import Path

MARKERS = ("configs/default.yaml", "pyproject.toml")


def is_project_root(directory: Path) -> bool:
    return all((directory / marker).is_file() for marker in MARKERS)


def project_root_above(directory: Path) -> Path | None:
    """The project's root when `directory` is below it (not the root itself); None otherwise."""
    if is_project_root(directory):
        return None
    return next((parent for parent in directory.parents if is_project_root(parent)), None)
