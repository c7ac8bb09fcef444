"""`<package> lock`: the project's environment as hash-pinned lock files, one per torch build.

Managed by the copier-lightning template.

`locks/<variant>.txt` pins every package the project installs (its dependencies, the `example`,
`dev`, `export` and `serve` extras, and torch in the variant's build), each with its sha256 hashes, for Linux x86_64 and
the project's Python. pip installs one and checks every hash:

    pip install --require-hashes --no-deps -r locks/cpu.txt && pip install --no-deps -e .

Variants: `cpu` (torch from PyTorch's CPU index), `cuda` (PyPI's torch: the CUDA build PyPI ships
for Linux), `cu126` and `cu128` (PyTorch's CUDA indexes, for clusters whose driver is older).
All variants pin the same versions of everything except torch's build and the CUDA libraries that
build brings; `lock --check` checks that, and that pyproject.toml has not changed since.

Why requirement files resolved by `uv pip compile` rather than a `uv.lock`: pip is the installer
that sees a folder of local wheels (clusters and air-gapped machines often mirror torch that way),
and a torch build is chosen per machine, which one file per build says plainly. uv resolves, pip
installs; doctor compares what is installed with the lock that matches the installed torch build.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..base.machine import normal_name
from ..runs.atomic_files import atomic_write_text
from .compromised_releases import compromised_releases

LOCKS = Path("locks")
EXTRAS = ("example", "dev", "export", "serve")
PLATFORM = "x86_64-manylinux_2_28"
# Packages whose versions depend on the torch build: they may differ between variants.
BUILD_PACKAGES = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


@dataclass(frozen=True)
class Variant:
    local_tag: str  # the torch version's local part: 2.13.0+cpu; "" for PyPI's build
    index: str | None  # where that build lives (None: PyPI)


VARIANTS = {
    "cpu": Variant("cpu", "https://download.pytorch.org/whl/cpu"),
    "cuda": Variant("", None),
    "cu126": Variant("cu126", "https://download.pytorch.org/whl/cu126"),
    "cu128": Variant("cu128", "https://download.pytorch.org/whl/cu128"),
}
DEFAULT_VARIANTS = ("cpu", "cuda")


class LockError(RuntimeError):
    """A lock that cannot be made or does not match the project; the message says what to do."""


def inputs_sha256(pyproject: Path) -> str:
    """The hash of what a lock is resolved from: requires-python, dependencies and the locked extras."""
    project = read_pyproject(pyproject)["project"]
    extras = project.get("optional-dependencies", {})
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "extras": {name: extras.get(name, []) for name in EXTRAS},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def read_pyproject(pyproject: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(pyproject.read_text())


def python_version(pyproject: Path) -> str:
    """The lowest Python the project allows (`>=3.11` -> 3.11): the one the lock is resolved for."""
    requires = read_pyproject(pyproject)["project"].get("requires-python", "")
    match = re.search(r"(\d+\.\d+)", requires)
    if not match:
        raise LockError(f"{pyproject} states no requires-python (e.g. '>=3.11'): the lock needs one Python")
    return match.group(1)


def torch_requirement(variant: str, torch_version: str) -> str:
    tag = VARIANTS[variant].local_tag
    return f"torch=={torch_version}" + (f"+{tag}" if tag else "")


def header(variant: str, torch_version: str, python: str, inputs: str) -> str:
    index = VARIANTS[variant].index
    lines = [
        f"# {LOCKS}/{variant}.txt: made by the project's `lock` subcommand (uv pip compile); do not edit, re-run it.",
        f"# variant: {variant}   torch: {torch_requirement(variant, torch_version)}   python: {python}"
        f"   platform: {PLATFORM}",
        f"# inputs-sha256: {inputs}",
        f"# install: pip install --require-hashes --no-deps -r {LOCKS}/{variant}.txt && pip install --no-deps -e .",
    ]
    if index:
        lines.append(f"--extra-index-url {index}")
    return "\n".join(lines) + "\n"


def compile_lock(project: Path, variant: str, torch_version: str, torch_wheels: str | None = None) -> str:
    """Resolve the project for one torch build with uv; the lock file's text."""
    pyproject = project / "pyproject.toml"
    python = python_version(pyproject)
    index = VARIANTS[variant].index
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch, "constraints.txt")
        # The torch build, and never a release published with malware (kit/cluster/compromised_releases.py).
        excluded = [
            f"{package}!={release['version']}"
            for package, releases in compromised_releases().items()
            for release in releases
        ]
        constraints.write_text("\n".join([torch_requirement(variant, torch_version), *excluded]) + "\n")
        output = Path(scratch, "lock.txt")
        existing = project / LOCKS / f"{variant}.txt"
        if existing.exists():
            # uv keeps the versions an existing output file pins, where they still fit: a new dependency
            # does not upgrade everything else. (`--upgrade`-style refreshes: delete the lock first.)
            body = [line for line in existing.read_text().splitlines() if not line.startswith("--")]
            output.write_text("\n".join(body) + "\n")
        command = [sys.executable, "-m", "uv", "pip", "compile", str(pyproject), "--quiet", "--no-header"]
        command += [arg for extra in EXTRAS for arg in ("--extra", extra)]
        command += ["--generate-hashes", "--python-version", python, "--python-platform", PLATFORM]
        command += ["--constraint", str(constraints), "--output-file", str(output)]
        if index and torch_wheels:
            command += ["--find-links", torch_wheels]  # a local mirror of the variant's index
        elif index:
            command += ["--extra-index-url", index, "--index-strategy", "unsafe-best-match"]
        try:
            done = subprocess.run(command, cwd=project, capture_output=True, text=True)
        except FileNotFoundError as error:
            raise LockError(f"cannot run {sys.executable}: {error}") from error
        if done.returncode != 0:
            if "No module named uv" in done.stderr:
                raise LockError('uv is not installed: pip install uv (it is in the "dev" extra)')
            raise LockError(f"uv could not resolve the {variant} lock:\n{done.stderr.strip()}")
        # The constraints file's temporary path would change the lock at every run: named by what it holds.
        body = re.sub(r"-c \S*constraints\.txt", "-c (the torch build; no compromised release)", output.read_text())
    return header(variant, torch_version, python, inputs_sha256(pyproject)) + body


def pins(lock_text: str) -> dict[str, str]:
    """package -> pinned version, from a lock's `name==version` lines (markers ignored)."""
    found = {}
    for line in lock_text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            found[normal_name(match.group(1))] = match.group(2)
    return found


def lock_header_field(lock_text: str, field: str) -> str | None:
    match = re.search(rf"^# .*\b{field}: (\S+)", lock_text, flags=re.MULTILINE)
    return match.group(1) if match else None


def lock_for_torch(torch_version: str | None, locks: Path = LOCKS) -> Path | None:
    """The lock file that matches an installed torch build (2.13.0+cpu -> locks/cpu.txt)."""
    if torch_version is None:
        return None
    tag = torch_version.partition("+")[2]
    for name, variant in VARIANTS.items():
        if variant.local_tag == tag and (locks / f"{name}.txt").exists():
            return locks / f"{name}.txt"
    return None


def check_locks(project: Path) -> list[str]:
    """What is wrong with the project's locks: stale against pyproject.toml, or variants that disagree."""
    locks = sorted((project / LOCKS).glob("*.txt"))
    if not locks:
        return [f"no lock files in {LOCKS}/: run the project's `lock` subcommand"]
    current = inputs_sha256(project / "pyproject.toml")
    problems = []
    texts = {lock.stem: lock.read_text() for lock in locks}
    for name, text in texts.items():
        if lock_header_field(text, "inputs-sha256") != current:
            problems.append(f"{LOCKS}/{name}.txt is stale: pyproject.toml's dependencies changed since it was made")
    shared = {
        name: {package: version for package, version in pins(text).items() if not BUILD_PACKAGES.match(package)}
        for name, text in texts.items()
    }
    first, *others = sorted(shared)
    for other in others:
        differing = sorted(
            f"{package} {shared[first].get(package, '-')} vs {shared[other].get(package, '-')}"
            for package in set(shared[first]) | set(shared[other])
            if shared[first].get(package) != shared[other].get(package)
        )
        if differing:
            problems.append(f"{first}.txt and {other}.txt pin different versions: {'; '.join(differing)}")
    torches = {name: pins(text).get("torch", "-").partition("+")[0] for name, text in texts.items()}
    if len(set(torches.values())) > 1:
        problems.append(f"the locks pin different torch versions: {torches}")
    return problems


def default_torch_version(project: Path) -> str:
    """The torch version to lock: the one the existing locks pin, else the installed one."""
    for lock in sorted((project / LOCKS).glob("*.txt")):
        pinned = pins(lock.read_text()).get("torch")
        if pinned:
            return pinned.partition("+")[0]
    try:
        return importlib.metadata.version("torch").partition("+")[0]
    except importlib.metadata.PackageNotFoundError as error:
        raise LockError("no lock pins torch and torch is not installed: say which with --torch 2.13.0") from error


def lock_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lock", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "variants",
        nargs="*",
        metavar="VARIANT",
        help=f"torch builds to lock: {', '.join(VARIANTS)} (default: the locks already in {LOCKS}/, "
        f"else {' and '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument("--torch", help="torch version to lock (default: the locks' torch, else the installed one)")
    parser.add_argument(
        "--torch-wheels", metavar="DIR", help="a folder of torch wheels to use instead of PyTorch's index (a mirror)"
    )
    parser.add_argument("--check", action="store_true", help="only check: locks up to date and consistent")
    args = parser.parse_args(argv)
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    project = Path.cwd()
    try:
        if args.check:
            problems = check_locks(project)
            for problem in problems:
                print(f"lock: {problem}")
            if not problems:
                print(f"lock: {len(list((project / LOCKS).glob('*.txt')))} lock file(s) up to date and consistent")
            return 1 if problems else 0
        existing = sorted(lock.stem for lock in (project / LOCKS).glob("*.txt") if lock.stem in VARIANTS)
        variants = args.variants or existing or list(DEFAULT_VARIANTS)
        torch_version = args.torch or default_torch_version(project)
        (project / LOCKS).mkdir(exist_ok=True)
        for variant in variants:
            text = compile_lock(project, variant, torch_version, args.torch_wheels)
            atomic_write_text(project / LOCKS / f"{variant}.txt", text)
            print(f"lock: wrote {LOCKS}/{variant}.txt ({len(pins(text))} packages, torch {pins(text).get('torch')})")
        problems = check_locks(project)
    except LockError as error:
        print(f"lock: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"lock: {problem}")
    return 1 if problems else 0
