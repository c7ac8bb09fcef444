"""The template repository holds sources, not run outputs: no data, checkpoints, caches or logs."""

from __future__ import annotations

from template_dev import TOP, run

# Suffixes and folders that only a run, a cache or an install leaves behind.
OUTPUT_SUFFIXES = (".pt", ".ckpt", ".pth", ".csv.gz", ".npy", ".npz", ".pyc", ".log")
OUTPUT_NAMES = (".file-hashes.json", ".raw-file-hashes.json")
OUTPUT_FOLDERS = ("runs/", "lightning_logs/", "wandb/", "example-project/", "__pycache__/")  # at any depth
ROOT_DATA = "data/"  # the example's data at the root (template/data/ holds the template's raw.sha256)


def run_outputs(paths: list[str]) -> list[str]:
    return [
        path
        for path in paths
        if path.endswith(OUTPUT_SUFFIXES)
        or path.rsplit("/", 1)[-1] in OUTPUT_NAMES
        or any(f"/{path}".count(f"/{folder}") for folder in OUTPUT_FOLDERS)
        or path.startswith(ROOT_DATA)
    ]


def test_tracked_files_hold_no_run_outputs() -> None:
    tracked = run(["git", "ls-files"], cwd=TOP).stdout.split()
    assert tracked, "git ls-files listed nothing"
    assert run_outputs(tracked) == []


def test_the_check_recognises_run_outputs() -> None:
    planted = ["data/raw/digits.csv.gz", "data/processed/.file-hashes.json", "runs/a/last.ckpt", "bench/x.pt"]
    assert run_outputs(planted) == planted
    assert run_outputs(["template/data/raw.sha256.jinja", "docs/resume.md"]) == []
