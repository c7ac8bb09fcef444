"""The template repository holds sources, not run outputs: no data, checkpoints, caches or logs."""

from __future__ import annotations

from template_dev import TOP, run

# Suffixes and folders that only a run, a cache or an install leaves behind.
OUTPUT_SUFFIXES = (".pt", ".ckpt", ".pth", ".csv.gz", ".npy", ".npz", ".pyc", ".log")
OUTPUT_NAMES = (".file-hashes.json", ".raw-file-hashes.json")
# Where runs, data and caches land when code runs in the checkout's root (template/data/ and
# kit/runs/ are sources, so these count only at the root).
ROOT_OUTPUT_FOLDERS = ("data/", "runs/", "lightning_logs/", "wandb/", "example-project/")
ANY_DEPTH_OUTPUT_FOLDERS = ("__pycache__/", ".pytest_cache/")


def run_outputs(paths: list[str]) -> list[str]:
    return [
        path
        for path in paths
        if path.endswith(OUTPUT_SUFFIXES)
        or path.rsplit("/", 1)[-1] in OUTPUT_NAMES
        or path.startswith(ROOT_OUTPUT_FOLDERS)
        or any(f"/{folder}" in f"/{path}" for folder in ANY_DEPTH_OUTPUT_FOLDERS)
    ]


def test_tracked_files_hold_no_run_outputs() -> None:
    tracked = [path for path in run(["git", "ls-files", "-z"], cwd=TOP).stdout.split("\0") if path]
    assert tracked, "git ls-files listed nothing"
    assert run_outputs(tracked) == []


def test_the_check_recognises_run_outputs() -> None:
    planted = ["data/raw/digits.csv.gz", "data/processed/.file-hashes.json", "runs/a/config.yaml", "bench/x.pt"]
    assert run_outputs(planted) == planted
    sources = ["template/data/raw.sha256", "template/src/{{ package_name }}/kit/runs/directory.py", "docs/resume.md"]
    assert run_outputs(sources) == []
