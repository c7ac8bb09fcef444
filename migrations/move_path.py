"""A migration pair that moves a project file to a new path and keeps the user's edits.

Without it, `copier update` deletes a file the template moved (edits and all) and creates the new
one from scratch. A plain `git mv` before the update keeps the edits only as conflict hunks: copier
then sees the moved file as added by both sides and merges it against an empty base, so even an
untouched file conflicts wherever the template also changed it. Here instead:

* before the update (`--stage before`): save the user's OLD file and the old template's version of
  it (rendered from the recorded `_commit` and answers) under .git/copier-moves/;
* after the update (`--stage after`): three-way merge the user's edits into NEW with
  `git merge-file` (base: old template version), exactly as copier merges files that did not move.
  Conflicts get copier's markers and the file is marked unmerged, so `git status` shows it.

Several OLD NEW pairs may be given at once (the old template is rendered once for all of them).
Idempotent: nothing is saved if OLD does not exist or is untouched; nothing is merged if nothing was saved.
Use it from copier.yml, both stages:
  - version: "X.Y.Z"
    when: "{{ _stage == 'before' }}"
    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/migrations/move_path.py",
              "--stage", "before", "--template", "{{ _copier_conf.src_path }}", "OLD", "NEW", ...]
  - version: "X.Y.Z"
    when: "{{ _stage == 'after' }}"
    command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/migrations/move_path.py",
              "--stage", "after", "OLD", "NEW", ...]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ANSWERS_FILE = ".copier-answers.yml"


def saved_dir(old: str, new: str) -> Path:
    git_dir = Path(subprocess.run(["git", "rev-parse", "--git-dir"], capture_output=True, text=True).stdout.strip())
    return git_dir / "copier-moves" / hashlib.sha1(f"{old}->{new}".encode()).hexdigest()[:12]


def render_old_versions(template: str, relatives: list[str]) -> dict[str, str | None]:
    """The files as the project's recorded template version rendered them (None: it did not). One render."""
    import yaml
    from copier import run_copy

    answers = yaml.safe_load(Path(ANSWERS_FILE).read_text())
    data = {key: value for key, value in answers.items() if not key.startswith("_")}
    with tempfile.TemporaryDirectory() as scratch:
        run_copy(template, scratch, data=data, vcs_ref=answers["_commit"], defaults=True, quiet=True, skip_tasks=True)
        rendered = {relative: Path(scratch, relative) for relative in relatives}
        return {relative: path.read_text() if path.exists() else None for relative, path in rendered.items()}


def before(template: str, pairs: list[tuple[str, str]]) -> None:
    """Save each OLD file that exists, with its old template version, to merge into NEW after the update."""
    present = [(old, new) for old, new in pairs if Path(old).is_file()]
    for old, _ in sorted(set(pairs) - set(present)):
        print(f"move_path: {old} not found, nothing to carry over")
    if not present:
        return
    bases = render_old_versions(template, [old for old, _ in present])
    for old, new in present:
        base = bases[old]
        if base is not None and Path(old).read_text() == base:
            continue  # untouched: the new template's NEW is all there is to have
        store = saved_dir(old, new)
        store.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old, store / "yours")
        (store / "base").write_text(base if base is not None else "")
        print(f"move_path: saved your {old} to carry its edits over to {new}")


def after(old: str, new: str) -> int:
    store = saved_dir(old, new)
    if not store.is_dir():
        return 0
    target = Path(new)
    if not target.exists():
        shutil.copyfile(store / "yours", target)
        shutil.rmtree(store)
        print(f"move_path: the template no longer has {new}; kept your file there")
        return 0
    theirs = target.read_text()
    merge = subprocess.run(
        [
            "git",
            "merge-file",
            "-L",
            "before updating",
            "-L",
            "last update",
            "-L",
            "after updating",
            str(store / "yours"),
            str(store / "base"),
            str(target),
        ],
        capture_output=True,
    )
    if merge.returncode < 0 or merge.returncode > 127:
        sys.exit(f"move_path: git merge-file failed on {new}: {merge.stderr.decode()}")
    merged = (store / "yours").read_text()
    target.write_text(merged)
    if merge.returncode > 0:
        mark_unmerged(new, base=(store / "base").read_text(), yours=(store / "yours").read_text(), theirs=theirs)
        print(f"move_path: {old} moved to {new}; {merge.returncode} conflict(s) with your edits, marked in the file")
    else:
        print(f"move_path: {old} moved to {new}, your edits carried over")
    shutil.rmtree(store)
    return 0


def mark_unmerged(path: str, base: str, yours: str, theirs: str) -> None:
    """Register the three sides in git's index, as copier does for its own conflicts."""
    entries = []
    for stage, text in ((1, base), (2, yours), (3, theirs)):
        hashing = ["git", "hash-object", "-w", "--stdin"]
        blob = subprocess.run(hashing, input=text.encode(), capture_output=True, check=True)
        entries.append(f"100644 {blob.stdout.decode().strip()} {stage}\t{path}\n")
    subprocess.run(["git", "update-index", "--force-remove", path], check=True)
    subprocess.run(["git", "update-index", "--index-info"], input="".join(entries).encode(), check=True)


def pairs_of(paths: list[str]) -> list[tuple[str, str]]:
    if not paths or len(paths) % 2:
        raise SystemExit(f"move_path: expected OLD NEW pairs, got {paths}")
    return list(zip(paths[::2], paths[1::2], strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description="Move project files during `copier update`, keeping edits.")
    parser.add_argument("--stage", choices=["before", "after"], required=True)
    parser.add_argument("--template", help="the new template's path (before stage)")
    parser.add_argument("paths", nargs="+", metavar="OLD NEW", help="one or more pairs: OLD path, NEW path")
    args = parser.parse_args()
    pairs = pairs_of(args.paths)
    if args.stage == "before":
        if not args.template:
            parser.error("--template is required in the before stage")
        before(args.template, pairs)
        return 0
    for old, new in pairs:
        after(old, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
