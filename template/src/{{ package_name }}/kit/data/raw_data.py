"""The raw data against its record, data/raw.sha256. Managed by the copier-lightning template.

`fit` refuses raw data that differs from the record (unless --allow_changed_data), `data verify`
and `doctor` report the differences. The record uses sha256sum's format, so `sha256sum -c
data/raw.sha256` checks it too. No torch import.
"""

from __future__ import annotations

from pathlib import Path

from ..base.file_hashes import file_sha256
from ..base.project_package import CONSOLE_SCRIPT

MANIFEST = Path("data/raw.sha256")


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            entries[name.strip().lstrip("*")] = digest
    return entries


def recorded_raw_files(path: Path = MANIFEST) -> list[str]:
    """The raw files data/raw.sha256 records ([] before `data record`): the inputs of what is built from them."""
    return sorted(read_manifest(path)) if path.exists() else []


# Raw files' hashes remembered by (size, modification time): `fit` checks the raw data at every
# start without reading unchanged files again.
HASH_MEMO = Path("data/.raw-file-hashes.json")


def differences(recorded: dict[str, str], files: list[Path], memo: dict[str, dict] | None = None) -> list[str]:
    """Human-readable list of files that are missing, changed, or not in the manifest."""
    problems = []
    current = {str(path): path for path in files}
    for name, digest in sorted(recorded.items()):
        path = Path(name)
        if not path.is_file():
            problems.append(f"missing: {name}")
        elif (actual := file_sha256(path, memo)) != digest:
            problems.append(f"changed: {name} (sha256 {actual[:12]}..., recorded {digest[:12]}...)")
    problems += [f"not in the manifest: {name}" for name in sorted(current) if name not in recorded]
    return problems


class RawDataChangedError(RuntimeError):
    """The raw data differs from data/raw.sha256 and no override was given."""


def raw_data_differences(data) -> list[str]:
    """How the data module's raw files differ from data/raw.sha256 ([] if they match or nothing is recorded).

    Fetches missing raw files first (a fresh clone has the checksums, not the data).
    """
    if not MANIFEST.exists() or not hasattr(data, "raw_files"):
        return []
    if hasattr(data, "fetch_raw"):
        data.fetch_raw()
    from .preprocessing_cache import remembered_hashes

    files, recorded = [Path(p) for p in data.raw_files()], read_manifest()
    if not any(str(path) in recorded for path in files):
        # The manifest records another data module's files (an experiment that trains on other data,
        # such as the many-files example): nothing of this data to compare; `data record` records it.
        return []
    with remembered_hashes(HASH_MEMO) as memo:
        return differences(recorded, files, memo)


def refuse_changed_raw_data(problems: list[str]) -> None:
    if problems:
        listed = "\n".join(f"  {problem}" for problem in problems)
        raise RawDataChangedError(
            f"the raw data differs from {MANIFEST}, so this run would train on data other than the recorded:\n"
            f"{listed}\nIf the change is intended, record it (`{CONSOLE_SCRIPT} data record`, then commit "
            f"{MANIFEST}); to restore the recorded data, put the files back (`{CONSOLE_SCRIPT} data fetch` fetches "
            f"missing ones); to train on it anyway, add --allow_changed_data (noted in the run's record.json)."
        )
