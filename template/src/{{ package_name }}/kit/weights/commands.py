"""`<package> weights fetch | list | verify`: the pretrained-weight cache. Managed by the copier-lightning template.

`fetch` is the one command that downloads weights: run it where the hub is reachable (a login
node), with HF_HUB_CACHE pointing at the shared cache that jobs read (`weights_cache:` in
configs/slurm/site.yaml). It prints the commit to pin in your config. The other two read the cache only.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from ..base.project_package import CONSOLE_SCRIPT
from .cache import COMMIT_HASH, MISSING_EXTRA, PretrainedSource, WeightsError, cache_dir, verify_snapshot


def weights_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="weights", description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="download a model's snapshot into the cache (needs the hub)")
    fetch.add_argument("model_id", help="the hub id, e.g. HuggingFaceTB/SmolLM2-135M")
    fetch.add_argument("--revision", default="main", help="a branch, tag or commit (default: main)")
    actions.add_parser("list", help="the models in the cache, their revisions and sizes")
    verify = actions.add_parser("verify", help="re-read a cached snapshot and check every file's content hash")
    verify.add_argument("model_id")
    verify.add_argument("--revision", required=True, help="the commit hash")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("huggingface_hub") is None:
        print(f"error: {MISSING_EXTRA}", file=sys.stderr)
        return 2
    try:
        return {"fetch": _fetch, "list": _list, "verify": _verify}[args.action](args)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _fetch(args: argparse.Namespace) -> int:
    """Ask the hub which commit the revision is now, then download that commit.

    Asked first because snapshot_download, when the hub cannot be reached, quietly answers a branch from
    the cache's own record of it (refs/main): "fetched" would then print a commit the hub may have moved
    on from, as the one to pin. A commit that is in the cache already needs no hub."""
    from huggingface_hub import HfApi, snapshot_download

    if COMMIT_HASH.match(args.revision):
        try:
            PretrainedSource(args.model_id, args.revision).local_path()
        except WeightsError:
            pass  # not there, or incomplete: fetch it
        else:
            print(
                f"{args.model_id} at {args.revision} is in the weight cache already ({cache_dir()}); "
                f"`{CONSOLE_SCRIPT} weights verify {args.model_id} --revision {args.revision}` re-reads it."
            )
            return 0
    try:
        commit = HfApi().model_info(args.model_id, revision=args.revision).sha
        snapshot_download(args.model_id, revision=commit, cache_dir=cache_dir())
    except Exception as failed:  # noqa: BLE001 - offline, unknown id, gated, no such revision: the hub client's errors
        # (its HTTP errors, OSError, and its transport's, whose classes change with its version) say which
        raise WeightsError(f"could not fetch {args.model_id} at {args.revision}: {_first_line(failed)}") from None
    print(f"Fetched {args.model_id} at {commit} into {cache_dir()}.")
    print(f"Pin it in your config: model_id: {args.model_id}, revision: {commit}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from huggingface_hub import scan_cache_dir

    if not cache_dir().is_dir():
        print(f"The weight cache ({cache_dir()}) is empty.")
        return 0
    repos = sorted(scan_cache_dir(cache_dir()).repos, key=lambda repo: repo.repo_id)
    print(f"Weight cache: {cache_dir()}")
    for repo in repos:
        for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
            print(f"  {repo.repo_id}  {revision.commit_hash}  {revision.size_on_disk / 1e6:,.1f} MB")
    return 0


def _verify(args: argparse.Namespace) -> int:
    snapshot = PretrainedSource(args.model_id, args.revision).local_path()
    damaged = verify_snapshot(snapshot)
    for name, problem in damaged.items():
        print(f"{name}: {problem}")
    if damaged:
        # A fetch downloads a blob that is missing, not one that is there and wrong: those go first.
        wrong = [str((snapshot / name).resolve()) for name in damaged if (snapshot / name).exists()]
        remove = f"remove the damaged blob(s) ({' '.join(wrong)}), then " if wrong else ""
        print(
            f"{len(damaged)} file(s) of {args.model_id} at {args.revision[:12]} are damaged or missing: {remove}run "
            f"`{CONSOLE_SCRIPT} weights fetch {args.model_id} --revision {args.revision}` on a machine that reaches "
            "the hub."
        )
        return 1
    print(f"Every file of {args.model_id} at {args.revision[:12]} matches its hash.")
    return 0


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
