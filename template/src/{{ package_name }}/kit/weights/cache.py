"""Pretrained weights from a cache, never downloaded by a training job. Managed by the copier-lightning template.

A base model is named by its hub id and a pinned revision, a commit hash (`PretrainedSource`): a
branch or tag moves, and a run must say which weights it started from. `weights fetch` downloads
a snapshot on a machine that reaches the hub (a login node); everything else resolves it from the
cache only (`local_files_only`), so no job downloads 100 GB again and a model that is not there
ends in one line naming the fetch command. The cache is huggingface_hub's own
(`models--org--name/snapshots/<commit>/`, at HF_HUB_CACHE, else HF_HOME/hub), so that
transformers, peft and the hub's own tools see the same files; `weights_cache:` in
configs/slurm/site.yaml points jobs at the shared one.

Each source resolved in this process is remembered (`resolved_sources`): `fit` records the
sources and their files' content hashes in record.json, and a resume on other weights is refused.
The hashes come from the cache's own file names (a snapshot's files link to blobs named by their
sha256, or git's sha1 for small files), so a start does not re-read 100 GB; `weights verify`
re-reads them when a cache is in doubt. That check is written here: huggingface_hub's own
(`HfApi.verify_repo_checksums`) asks the hub for the checksums, which a compute node cannot reach.

A snapshot that resolves but does not load (a copy of the shared cache cut short, a blob deleted, a
file edited by hand) fails deep inside transformers, and jsonargparse wraps that in seventy lines:
`unloadable_weights_message` finds it in the error's chain and says it in one line, with the commands
that check and mend the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..base.project_package import CONSOLE_SCRIPT

COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
MISSING_EXTRA = "pretrained weights need the `finetune` extra: pip install -e '.[finetune]'"
_RESOLVED: dict[str, dict] = {}  # model id -> what this process loaded (resolved_sources)
_SNAPSHOTS: dict[Path, PretrainedSource] = {}  # snapshot folder -> its source (unloadable_weights_message)


class WeightsError(Exception):
    """A base model that cannot be used as named: the message is one line that says what to do."""


@dataclass(frozen=True)
class PretrainedSource:
    """A base model on the hub: its id (`org/name`) and the commit it is pinned to."""

    model_id: str
    revision: str

    def __post_init__(self) -> None:
        if not COMMIT_HASH.match(self.revision):
            raise WeightsError(
                f"{self.model_id}: revision {self.revision!r} is not a commit hash; pin one (a branch or tag "
                f"moves under a run): `{CONSOLE_SCRIPT} weights fetch {self.model_id} --revision {self.revision}` "
                "prints the commit it is now"
            )

    def local_path(self, cache: Path | None = None) -> Path:
        """The snapshot's folder in `cache` (default: this environment's, `cache_dir`), found without the
        network; remembered for the run's record."""
        cache = cache or cache_dir()
        try:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError
        except ImportError:
            raise WeightsError(MISSING_EXTRA) from None

        fetch = f"`{CONSOLE_SCRIPT} weights fetch {self.model_id} --revision {self.revision}`"
        try:
            path = Path(
                snapshot_download(self.model_id, revision=self.revision, cache_dir=cache, local_files_only=True)
            )
        except IncompleteSnapshotError as incomplete:  # the fetch's tree listing names files the snapshot lacks
            missing = self.files_missing_from(Path(incomplete.snapshot_path), cache)
            raise WeightsError(
                f"{self.model_id} at {self.revision[:12]} is incomplete in the weight cache ({cache}): "
                f"{len(missing)} file(s) the hub lists are not there ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}; an interrupted fetch or copy?): run {fetch} on a machine "
                "that reaches the hub to complete it"
            ) from None
        except (LocalEntryNotFoundError, HFValidationError) as missing:
            raise WeightsError(
                f"{self.model_id} at {self.revision[:12]} is not in the weight cache ({cache}): run "
                f"{fetch} on a machine that reaches the hub ({type(missing).__name__})"
            ) from None
        # Read once, when resolved: the files this process loads from (names only, for linked blobs).
        _RESOLVED[self.model_id] = {
            "revision": self.revision,
            "license": model_license(path),
            "files": snapshot_files(path),
        }
        _SNAPSHOTS[path] = self
        return path

    def files_missing_from(self, snapshot: Path, cache: Path | None = None) -> list[str]:
        """The files huggingface_hub's cached tree listing of this commit names (written when `weights fetch`
        downloads) that `snapshot` lacks, or whose link's blob is gone; `cache` as for `local_path`."""
        from huggingface_hub import get_cached_repo_tree

        listed = get_cached_repo_tree(self.model_id, revision=self.revision, cache_dir=cache or cache_dir())
        return sorted(file.path for file in listed if not (snapshot / file.path).is_file())

    def file_hashes(self) -> dict[str, str]:
        """Each file of the snapshot and its content hash (what record.json keeps): as read when this process
        resolved it, else resolved from the cache now (once, not at each call)."""
        entry = _RESOLVED.get(self.model_id)
        if entry is None or entry["revision"] != self.revision:
            self.local_path()
            entry = _RESOLVED[self.model_id]
        return dict(entry["files"])


def base_weights_named_by(model_settings) -> PretrainedSource | None:
    """The base model a model's settings (a dict, or jsonargparse's Namespace of its init_args) name by the
    examples' convention: `base_model`, a hub id, and `revision`, the commit pinned (a branch is refused, as
    the model's own PretrainedSource would refuse it). None when they name none: a model of your own that
    names its weights otherwise is not looked up."""
    model_id, revision = model_settings.get("base_model"), model_settings.get("revision")
    if not isinstance(model_id, str) or not isinstance(revision, str):
        return None
    return PretrainedSource(model_id, revision)


def cache_dir() -> Path:
    """huggingface_hub's cache folder (HF_HUB_CACHE, HF_HOME/hub, or the default), read at each call:
    huggingface_hub reads the variable once, at import."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def resolved_sources() -> dict[str, dict]:
    """What this process resolved, for record.json and the model card:
    {model id: {revision, license, files: {name: content hash}}}."""
    return {model_id: dict(_RESOLVED[model_id]) for model_id in sorted(_RESOLVED)}


def model_license(snapshot: Path) -> str | None:
    """The `license:` of the model's own card (README.md's front matter on the hub), if it says one."""
    import yaml

    card = snapshot / "README.md"
    text = card.read_text(errors="replace") if card.is_file() else ""
    if not text.startswith("---"):
        return None
    front, _, _ = text[3:].partition("\n---")
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return None
    license_name = meta.get("license") if isinstance(meta, dict) else None
    return str(license_name) if license_name else None


def snapshot_files(snapshot: Path) -> dict[str, str]:
    """Each file of a snapshot and its content hash: the name of the blob it links to (a link whose blob is
    gone included: verify_snapshot names it), else its sha256."""
    files = {}
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file() or p.is_symlink()):
        name = path.relative_to(snapshot).as_posix()
        files[name] = Path(os.readlink(path)).name if path.is_symlink() else _sha256(path)
    return files


def verify_snapshot(snapshot: Path) -> dict[str, str]:
    """The files whose content does not match the hash the cache names them by, whose blob is gone, or that
    are plain files where the cache keeps a link to a blob (nothing names what they should hold): file
    name -> what is wrong (reads every byte)."""
    damaged = {}
    for name, recorded in snapshot_files(snapshot).items():
        path = snapshot / name
        if not path.exists():
            damaged[name] = f"its blob {recorded[:12]} is missing from the cache"
            continue
        if not path.is_symlink():  # a hand copy into the snapshot: hashed as itself, it would always "match"
            damaged[name] = "a plain file, not a link to one of the cache's blobs: its content cannot be checked"
            continue
        actual = _sha256(path) if len(recorded) == 64 else _git_blob_sha1(path)
        if actual != recorded:
            damaged[name] = f"content hash {actual[:12]}, named {recorded[:12]}"
    return damaged


def changed_sources(recorded: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """How the base weights of this start differ from those the run started from, one line each."""
    lines = []
    for model_id in sorted(set(recorded) | set(now)):
        before, after = recorded.get(model_id), now.get(model_id)
        if before is None or after is None:
            lines.append(f"{model_id}: {'not used' if after is None else 'new'} in this start")
        elif before["revision"] != after["revision"]:
            lines.append(f"{model_id}: revision {before['revision'][:12]} then, {after['revision'][:12]} now")
        elif before["files"] != after["files"]:
            changed = sorted(
                n for n in set(before["files"]) | set(after["files"]) if before["files"].get(n) != after["files"].get(n)
            )
            lines.append(f"{model_id}: files changed in the cache: {', '.join(changed)}")
    return lines


def refuse_other_base_weights(run_name: str, recorded: dict[str, dict] | None, action: str) -> None:
    """Raise WeightsError when this process's base weights differ from those the run trained from.

    Only where this process has resolved its sources already (the model built from the config): a
    process that has not cannot tell, and is let through.
    """
    now = resolved_sources()
    differences = changed_sources(recorded, now) if recorded is not None and now else []
    if differences:
        raise WeightsError(
            f"Run '{run_name}' was trained from other base weights than those in the cache now: "
            + "; ".join(differences)
            + f". To {action} it on these would mix two models. Fetch the run's revision again "
            f"(`{CONSOLE_SCRIPT} weights fetch ID --revision COMMIT`), or start a new run for these weights."
        )


def unloadable_weights_message(error: BaseException | None) -> str | None:
    """One line for base weights that resolved from the cache but did not load, found in `error`'s chain: an
    exception raised inside a `from_pretrained` (transformers' model, tokenizer or config, peft's adapters)
    that was given a snapshot this process resolved. Any other error: None (it keeps its traceback)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        source = _source_loading_in(error)
        if source is not None:
            lines = str(error).strip().splitlines()
            cause = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
            check = f"{CONSOLE_SCRIPT} weights verify {source.model_id} --revision {source.revision}"
            fetch = f"{CONSOLE_SCRIPT} weights fetch {source.model_id} --revision {source.revision}"
            return (
                f"{source.model_id} at {source.revision[:12]} is in the weight cache ({cache_dir()}) but does not "
                f"load ({cause}): a file of it is missing or damaged (a copy cut short?). `{check}` names damaged "
                f"files; `{fetch}`, on a machine that reaches the hub, fetches what is missing."
            )
        error = error.__cause__ or error.__context__
    return None


def _source_loading_in(error: BaseException) -> PretrainedSource | None:
    """The resolved source that a `from_pretrained` frame in `error`'s traceback was loading, if any."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name != "from_pretrained":
            continue
        for value in frame.f_locals.values():
            if isinstance(value, str | Path):
                for snapshot, source in _SNAPSHOTS.items():
                    if Path(value) == snapshot or snapshot in Path(value).parents:
                        return source
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """The hub names small (non-LFS) files by git's blob hash: sha1 of "blob <size>\\0" and the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    digest.update(path.read_bytes())
    return digest.hexdigest()
