"""What this machine has: the GPUs nvidia-smi sees, SLURM's partitions, the installed packages.

Managed by the copier-lightning template. No torch or Lightning import (the torch build is read
from the installed package's files): `doctor` runs on a login node, and run records ask it too.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path


def normal_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def visible_gpus() -> tuple[list[str], str | None]:
    """GPU (or MIG slice) names and the driver version, from nvidia-smi; ([], None) without it."""
    if shutil.which("nvidia-smi") is None:
        return [], None
    done = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    rows = [line.split(", ") for line in done.splitlines() if line.strip()]
    gpus = [row[0] for row in rows]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible.startswith("MIG-"):
        gpus = [f"MIG slice {visible}"]
    return gpus, (rows[0][1] if rows and len(rows[0]) > 1 else None)


def slurm_partitions() -> list[str] | None:
    if shutil.which("sinfo") is None:
        return None
    names = _run(["sinfo", "--noheader", "--format=%P"], timeout=3)  # a controller that is down: no long wait
    return [name.rstrip("*") for name in names.split()] or None


def installed_torch() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_cuda_version() -> str | None:
    """The CUDA version the installed torch was built for ('12.4'; None for a CPU build), from its files."""
    try:
        version_file = importlib.metadata.distribution("torch").locate_file("torch/version.py")
        match = re.search(r"^cuda\b[^=]*=\s*'([\d.]+)'", Path(str(version_file)).read_text(), flags=re.MULTILINE)
    except (importlib.metadata.PackageNotFoundError, OSError):
        return None
    return match.group(1) if match else None


def installed_versions() -> dict[str, str]:
    return {normal_name(d.metadata["Name"] or "?"): d.version for d in importlib.metadata.distributions()}


def _run(command: list[str], timeout: float = 10) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
