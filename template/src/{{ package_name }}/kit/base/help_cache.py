"""`fit --help` at once: the help text, kept by what it is made of. Managed by the copier-lightning template.

The help of `fit`, `validate`, `test` and `predict` lists every option of the model, the data
module and the Trainer, which LightningCLI reads from their signatures: importing Lightning and
torch for that takes about 3.5 s. The text changes only when the code or the configs change, so
it is kept in the user's cache folder under a hash of exactly that: the command line, every file
of the project's package and of configs/, and the installed versions of the packages that write it. A later
`--help` with the same hash prints the kept text without importing anything heavy; any change
makes a new one. No torch import here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

HELP_OPTIONS = ("-h", "--help")
# The packages whose versions shape the help text.
WRITERS = ("lightning", "jsonargparse", "torch")


def asks_for_help(argv: list[str]) -> bool:
    return any(arg in HELP_OPTIONS for arg in argv[1:])


def help_key(argv: list[str], package_dir: Path, configs: Path) -> str:
    """A hash of what the help text is made of (see the module's docstring)."""
    digest = hashlib.sha256("\0".join(argv).encode())
    for folder in (package_dir, configs):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                digest.update(f"{path.relative_to(folder)}\0".encode())
                digest.update(path.read_bytes())
    for package in WRITERS:
        try:
            digest.update(f"{package}=={importlib.metadata.version(package)}\0".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package} missing\0".encode())
    return digest.hexdigest()[:20]


def cache_folder(package: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / package / "help"


def cached_help(argv: list[str], package_dir: Path, make_help: Callable[[], int]) -> int:
    """Print the kept help text for `argv`, or make it with `make_help()` (which prints it) and keep it."""
    kept = cache_folder(package_dir.name) / f"{help_key(argv, package_dir, Path.cwd() / 'configs')}.txt"
    if kept.is_file():
        sys.stdout.write(kept.read_text())
        return 0
    captured = StringIO()
    try:
        with redirect_stdout(captured):
            code = make_help()
    except SystemExit as done:  # argparse ends with the help it printed
        code = done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    text = captured.getvalue()
    sys.stdout.write(text)
    if code == 0 and text:
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            partial = kept.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(text)
            os.replace(partial, kept)
        except OSError:
            pass  # a read-only home: the help is only slower next time
    return code
