"""`<package> doctor`: is this machine ready to run the project? Managed by the copier-lightning template.

One line per check, PASS, FAIL, WARN or SKIP; every FAIL with the command that fixes it; exit code 1
when something failed. Safe on a login node: it imports neither torch nor Lightning (the torch
build is read from the installed package's version, `2.13.0+cpu` or `2.5.1+cu124`), starts no job
and makes no network call. It checks:
- Python against the project's `requires-python`;
- every dependency of pyproject.toml installed, at a version it allows;
- no release published with malware installed (kit/cluster/compromised_releases.py);
- the lock (`locks/<build>.txt` for the installed torch build, kit/cluster/environment_lock.py):
  made for this Python, from the current pyproject.toml, and every package it pins installed at that version;
- the torch build against the GPUs `nvidia-smi` sees: a CPU build on a GPU node, or a CUDA build
  newer than the driver supports (the build's CUDA version is read from torch's files, so PyPI's
  untagged builds are checked too); which GPU or MIG slice this process sees;
- `configs/slurm/site.yaml` complete, and its partition known to `sinfo` when SLURM answers;
- W&B, when the config logs to it: offline or online, and whether a key is there (`~/.netrc`,
  WANDB_API_KEY), without asking the server;
- the runs directory writable, and its free space;
- the raw data present and matching data/raw.sha256.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..base.machine import (
    installed_torch,
    installed_versions,
    slurm_partitions,
    torch_cuda_version,
    visible_gpus,
)
from ..base.project_package import CONSOLE_SCRIPT
from ..data.raw_data import MANIFEST, differences, read_manifest
from ..runs.root import runs_root
from .compromised_releases import RELEASES_FILE, installed_compromised
from .environment_lock import (
    LOCKS,
    inputs_sha256,
    lock_for_torch,
    lock_header_field,
    pins,
    read_pyproject,
)

# The oldest NVIDIA driver each CUDA major version runs on (NVIDIA's CUDA toolkit release notes,
# minor version compatibility): a torch build for CUDA 12 needs a driver of at least 525.60.13.
MINIMUM_DRIVER = {11: (450, 80), 12: (525, 60), 13: (580, 65)}
LOW_DISK_GIB = 10


@dataclass
class Finding:
    check: str
    verdict: str  # PASS, FAIL, WARN, SKIP
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.verdict}] {self.check}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if self.fix and self.verdict in ("FAIL", "WARN") else "")


def check_python(requires: str | None, version: str | None = None) -> Finding:
    from packaging.specifiers import SpecifierSet

    version = version or ".".join(map(str, sys.version_info[:3]))
    if not requires:
        return Finding("python", "SKIP", f"{version}; pyproject.toml states no requires-python")
    if version in SpecifierSet(requires):
        return Finding("python", "PASS", f"{version} meets {requires}")
    return Finding(
        "python",
        "FAIL",
        f"{version} does not meet the project's {requires}",
        f"create the environment with a matching Python: python{requires.lstrip('>=~ ').split(',')[0]} -m venv .venv",
    )


def check_packages(requirements: list[str]) -> Finding:
    """Each requirement of pyproject.toml installed at a version it allows."""
    from packaging.requirements import Requirement

    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} is not installed")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} is not {requirement.specifier}")
    if problems:
        return Finding(
            "packages", "FAIL", "; ".join(problems), 'pip install -e ".[example,dev]" (torch first, as the README says)'
        )
    return Finding("packages", "PASS", f"all {len(requirements)} dependencies of pyproject.toml installed")


def check_compromised(installed: dict[str, str], console_script: str) -> Finding:
    """No installed release is on the list of compromised ones."""
    if not RELEASES_FILE.is_file():
        return Finding(
            "compromised releases",
            "WARN",
            f"the list of compromised releases is missing ({RELEASES_FILE}): nothing was checked",
            "`copier update` brings it back (or `pip install -e .`: it is package data)",
        )
    found = installed_compromised(installed)
    if not found:
        return Finding("compromised releases", "PASS", "none of the listed compromised releases is installed")
    return Finding(
        "compromised releases",
        "FAIL",
        f"installed: {'; '.join(found)}",
        f"its code has already run on this machine: remove the environment and install it again from the lock "
        f"(README.md, 'Quick start'; `{console_script} lock` never pins a listed release), then follow the "
        f"advisory: treat the credentials this machine holds (SSH keys, cloud and git tokens) as stolen: rotate them",
    )


def check_lock(
    lock: Path | None, current_inputs: str, installed: dict[str, str], console_script: str, torch_version: str | None
) -> Finding:
    """The lock for the installed torch build: made from today's pyproject.toml, and what is installed."""
    if lock is None:
        build = (torch_version or "").partition("+")[2] or "PyPI's (cuda)"
        return Finding(
            "lock",
            "WARN",
            f"no lock in {LOCKS}/ for the installed torch build ({build}): versions are not pinned",
            f"{console_script} lock (then commit {LOCKS}/)",
        )
    text = lock.read_text()
    locked_python, running = lock_header_field(text, "python"), "{}.{}".format(*sys.version_info[:2])
    if locked_python and locked_python != running:
        return Finding(
            "lock",
            "FAIL",
            f"{lock} is for Python {locked_python}, this is Python {running}: its wheels and versions may not fit",
            f"use Python {locked_python} (python{locked_python} -m venv .venv), or make a lock for this one: "
            f"{console_script} lock (then commit {LOCKS}/)",
        )
    if lock_header_field(text, "inputs-sha256") != current_inputs:
        return Finding(
            "lock",
            "FAIL",
            f"{lock} was made from another pyproject.toml (its dependencies changed since)",
            f"{console_script} lock, then commit {LOCKS}/",
        )
    wrong = []
    for name, version in sorted(pins(text).items()):
        have = installed.get(name)
        if have is None:
            wrong.append(f"{name} missing (the lock pins {version})")
        elif have != version and have.split("+")[0] != version:
            wrong.append(f"{name} {have} (the lock pins {version})")
    if wrong:
        return Finding(
            "lock",
            "FAIL",
            f"{len(wrong)} package(s) differ from {lock}: " + "; ".join(wrong[:4]) + ("; ..." * (len(wrong) > 4)),
            f"pip install --require-hashes --no-deps -r {lock}",
        )
    return Finding("lock", "PASS", f"all {len(pins(text))} packages at the versions {lock} pins")


def check_torch_build(
    torch_version: str | None, gpus: list[str], driver: str | None, cuda_version: str | None = None
) -> Finding:
    if torch_version is None:
        return Finding(
            "torch build", "FAIL", "torch is not installed", "pip install torch==VERSION (README, Quick start)"
        )
    build = torch_version.partition("+")[2]  # "cpu", "cu124", or "" (a default wheel from PyPI)
    if not gpus:
        return Finding("torch build", "PASS", f"torch {torch_version}; no GPU visible (nvidia-smi), CPU only")
    if build == "cpu":
        return Finding(
            "torch build",
            "FAIL",
            f"torch {torch_version} is a CPU build on a machine with {len(gpus)} GPU(s)",
            f"pip install --require-hashes --no-deps -r {LOCKS}/cuda.txt (or {LOCKS}/cu126.txt for an older "
            "driver), or: pip install --force-reinstall torch==VERSION --index-url https://download.pytorch.org/whl/cu126",
        )
    tagged = re.fullmatch(r"cu(\d+?)(\d)", build)
    major = int(tagged.group(1)) if tagged else int(cuda_version.split(".")[0]) if cuda_version else None
    if major and driver:
        needed = MINIMUM_DRIVER.get(major)
        have = tuple(int(part) for part in driver.split(".")[:2])
        if needed and have < needed:
            return Finding(
                "torch build",
                "FAIL",
                f"torch {torch_version} needs an NVIDIA driver >= {needed[0]}.{needed[1]}; this node has {driver}",
                "install a torch build for an older CUDA (e.g. --index-url https://download.pytorch.org/whl/cu118)",
            )
    return Finding("torch build", "PASS", f"torch {torch_version}; driver {driver or '?'}; {', '.join(gpus)}")


def check_site(site_path: Path, partitions: list[str] | None) -> Finding:
    from .slurm import SlurmSetupError, load_site

    if not site_path.exists():
        return Finding("slurm site", "SKIP", f"no {site_path}: `submit` is not set up for a cluster")
    try:
        site = load_site(site_path)
    except SlurmSetupError as bad:
        return Finding("slurm site", "FAIL", str(bad), f"edit {site_path} (comments there say what each setting is)")
    except Exception as bad:  # noqa: BLE001 - YAML errors: any parse failure is the finding
        return Finding("slurm site", "FAIL", f"{site_path} does not parse: {bad}".splitlines()[0], f"fix {site_path}")
    wanted = [name.strip() for name in str(site["partition"]).split(",")]
    if partitions is None:
        return Finding(
            "slurm site", "PASS", f"{site_path} complete (partition not checked: SLURM does not answer here)"
        )
    unknown = [name for name in wanted if name not in partitions]
    if unknown:
        return Finding(
            "slurm site",
            "FAIL",
            f"partition {', '.join(unknown)} is not one of this cluster's: {', '.join(partitions)}",
            f"set `partition:` in {site_path} (sinfo -o '%P %G' lists them)",
        )
    return Finding("slurm site", "PASS", f"{site_path} complete; partition {', '.join(wanted)} exists")


def check_wandb(config_text: str, environment: dict[str, str], home: Path) -> Finding:
    if "WandbLogger" not in config_text:
        return Finding("wandb", "SKIP", "the config does not log to W&B")
    offline = environment.get("WANDB_MODE") in ("offline", "disabled") or re.search(r"offline:\s*true", config_text)
    netrc = home / ".netrc"
    has_key = bool(environment.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    if offline:
        return Finding("wandb", "PASS", "offline: runs stay on disk (`wandb sync` uploads them later)")
    if not has_key:
        return Finding("wandb", "FAIL", "online, but no W&B key here (~/.netrc, WANDB_API_KEY)", "wandb login")
    return Finding("wandb", "PASS", "online, and a key is there")


def check_runs_dir(root: Path) -> Finding:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
    except OSError as cannot:
        return Finding(
            "runs directory",
            "FAIL",
            f"cannot write to {root}: {cannot.strerror or cannot}",
            "set RUNS_DIR to a writable directory (a scratch filesystem on a cluster)",
        )
    free_gib = shutil.disk_usage(root).free / 1024**3
    if free_gib < LOW_DISK_GIB:
        return Finding("runs directory", "WARN", f"{root}: only {free_gib:.1f} GiB free", "free space or set RUNS_DIR")
    return Finding("runs directory", "PASS", f"{root} writable, {free_gib:.0f} GiB free")


def check_raw_data(manifest: Path, console_script: str) -> Finding:
    if not manifest.exists():
        return Finding("raw data", "SKIP", f"no {manifest} (nothing recorded yet: `{console_script} data record`)")
    recorded = read_manifest(manifest)
    problems = differences(recorded, [Path(name) for name in recorded])
    if problems:
        return Finding(
            "raw data",
            "FAIL",
            "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""),
            f"{console_script} data fetch (missing files); put the recorded files back, or record the change: "
            f"{console_script} data record",
        )
    return Finding("raw data", "PASS", f"{len(recorded)} file(s) match {manifest}")


# -- what the checks read from this machine ------------------------------------------------------
def project_metadata(project: Path) -> tuple[str | None, list[str]]:
    """requires-python and the dependencies, from pyproject.toml."""
    data = read_pyproject(project / "pyproject.toml")["project"]
    return data.get("requires-python"), list(data.get("dependencies", []))


def doctor_main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="doctor", description=__doc__.split("\n\n")[0]).parse_args(argv)
    project = Path.cwd()
    requires, dependencies = project_metadata(project)
    gpus, driver = visible_gpus()
    torch = installed_torch()
    config = project / "configs" / "default.yaml"
    checks: list[Callable[[], Finding]] = [
        lambda: check_python(requires),
        lambda: check_packages(dependencies),
        lambda: check_compromised(installed_versions(), CONSOLE_SCRIPT),
        lambda: check_lock(
            lock_for_torch(torch),  # relative to the project root, where doctor runs
            inputs_sha256(project / "pyproject.toml"),
            installed_versions(),
            CONSOLE_SCRIPT,
            torch,
        ),
        lambda: check_torch_build(torch, gpus, driver, torch_cuda_version()),
        lambda: check_site(project / "configs" / "slurm" / "site.yaml", slurm_partitions()),
        lambda: check_wandb(config.read_text() if config.exists() else "", dict(os.environ), Path.home()),
        lambda: check_runs_dir(runs_root()),
        lambda: check_raw_data(MANIFEST, CONSOLE_SCRIPT),
    ]
    findings = [check() for check in checks]
    for finding in findings:
        print(finding.line())
    failed = [finding for finding in findings if finding.verdict == "FAIL"]
    print(f"{len(findings) - len(failed)} of {len(findings)} checks passed, warned or did not apply.")
    return 1 if failed else 0
