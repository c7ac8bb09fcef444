"""The runs folder: where it is, its runs, and what it holds beside them. Managed by the copier-lightning template.

Runs live in `runs/` (or $RUNS_DIR, e.g. a scratch filesystem on a cluster), one directory each
(directory.py). Beside them the folder holds the sweeps' files, the seed groups and the job logs;
their names are written here once, as RunsRoot's properties, and every command asks for them.
No torch import here (`<package> runs`, `submit` and `sweep-status` answer at once).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .directory import CONFIG_NAME, MANIFEST_NAME, DamagedRunFile, RunDirectory, comparable_config, read_run_json
from .lease import RunLease


def runs_root() -> Path:
    """Where runs live: $RUNS_DIR if set (e.g. a scratch filesystem on a cluster), else ./runs."""
    return Path(os.environ.get("RUNS_DIR", "runs")).resolve()


@dataclass(frozen=True)
class RunsRoot:
    """The runs folder's layout: the runs, and the folders beside them."""

    path: Path

    @classmethod
    def current(cls) -> RunsRoot:
        """The folder this process uses (runs_root())."""
        return cls(runs_root())

    def run(self, name: str) -> RunDirectory:
        return RunDirectory(self.path / name)

    @property
    def sweeps(self) -> Path:
        """Sweep records (<name>.json), Optuna studies (<name>/study.journal), array-job scripts and their code."""
        return self.path / "sweeps"

    @property
    def seeds(self) -> Path:
        """`seeds` groups (<label>.json) and `compare` results."""
        return self.path / "seeds"

    @property
    def slurm_logs(self) -> Path:
        """Every SLURM job's output (<job name>-<job id>.out): jobs write here before they know their run."""
        return self.path / "slurm-logs"


def find_run_by_config(root: Path, name: str, config_text: str) -> RunDirectory | None:
    """The one run under `root` whose name has `name`'s label and whose config trains the same thing.

    A derived name (kit/runs/identity.py) hashes the config files' text, so a template update that
    rewrites configs/default.yaml, or a release that leaves more display settings out of the hash,
    derives another name for the same experiment; the run is found by its recorded config instead.
    """
    label = name.rsplit("-", 1)[0]
    candidates = [
        RunDirectory(config.parent)
        for config in sorted(root.glob(f"{label}-*/{CONFIG_NAME}"))
        if re.fullmatch(re.escape(label) + r"-[0-9a-f]{8}", config.parent.name)
    ]
    matches = [run for run in candidates if _trains_the_same(run, config_text)]
    return matches[0] if len(matches) == 1 else None


def _trains_the_same(run: RunDirectory, config_text: str) -> bool:
    chosen = run.chosen_monitor()  # an "auto" monitor means the one the run chose
    return comparable_config(run.config_path.read_text(), chosen) == comparable_config(config_text, chosen)


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run under `root` with its manifest; a `running` one also says who trains it (`trained_by`:
    the live lease holder, or None when its process is gone without a word: killed)."""
    if not root.is_dir():
        return []
    runs = []
    for manifest_path in sorted(root.glob(f"*/{MANIFEST_NAME}")):
        try:
            manifest = read_run_json(manifest_path)
        except DamagedRunFile as damaged:  # listed as what it is: the other runs are still listed
            manifest = {"run_name": manifest_path.parent.name, "status": "damaged", "damaged": str(damaged)}
        manifest["path"] = str(manifest_path.parent)
        if manifest.get("status") == "running":
            holder = RunLease(manifest_path.parent).live_holder()
            manifest["trained_by"] = holder.describe() if holder else None
        runs.append(manifest)
    return runs


def format_runs(runs: list[dict[str, Any]]) -> str:
    """A plain-text table: one block per run, one line per checkpoint."""
    if not runs:
        return f"No runs yet under {runs_root()}."
    lines = []
    for run in runs:
        sha = (run.get("git_sha") or "no-git")[:10] + ("+dirty" if run.get("git_dirty") else "")
        lines.append(f"{run['run_name']}  [{run.get('status', '?')}]  started {run.get('started', '?')}  code {sha}")
        if run.get("damaged"):
            lines.append(f"    {run['damaged']}")
        if run.get("status") == "running":
            holder = run.get("trained_by")
            lines.append(
                f"    trained now by {holder}"
                if holder
                else "    no live process trains it (killed without a word?): re-run its command to resume"
            )
        for name, entry in sorted(run.get("checkpoints", {}).items(), key=lambda item: item[1]["step"]):
            metric = ""
            if entry.get("value") is not None:
                metric = f"  {entry['metric']}={entry['value']:.4f}"
            lines.append(f"    {name:<36} step {entry['step']:>7}  epoch {entry['epoch']:>4}{metric}  {entry['time']}")
        lines.append(f"    in {run['path']}")
    return "\n".join(lines)
