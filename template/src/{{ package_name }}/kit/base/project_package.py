"""The project's package name and its console script, in one place. Managed by the copier-lightning template.

The kit lives inside the project's package (`<package>/kit/`), and pyproject.toml names the console
script after the package, so both come from this module's own dotted name. Messages that tell the
researcher what to type, the job scripts and the logger's class path ask here instead of guessing.
"""

from __future__ import annotations

PACKAGE = __name__.split(".")[0]
CONSOLE_SCRIPT = PACKAGE  # [project.scripts] in pyproject.toml: `<package> = "<package>.cli:main"`
KIT = f"{PACKAGE}.kit"
