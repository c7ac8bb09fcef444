"""`<package> report`: every run on one page, a static HTML file. Managed by the copier-lightning template.

    <package> report [--output runs/report.html]

The page opens from disk: no server, no account, nothing fetched (the plots are SVG drawn by
matplotlib and written into the page). From what the runs record (kit/runs/):
- every run: its status, the settings that differ between the runs (the rest is shared and shown
  once), the best value of its monitored metric, when and how long it trained, where (host,
  processes and devices, the precision, the SLURM job), and its GPU time and peak GPU memory where
  it ran on GPUs;
- the training curves: each run's monitored metric over the steps, and its training loss, from
  logs/metrics.csv;
- every sweep (runs/sweeps/*.json) with its trials ranked, every seed group (runs/seeds/*.json)
  with its mean and 95 % interval.
`reproduce` writes it again after every build. HTML written here with `html.escape` rather than a
template engine: one page of tables, and the project then needs no template library.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from ..runs.directory import DamagedRunFile, RunDirectory
from ..runs.root import list_runs, runs_root

REPORT_NAME = "report.html"
MOST_CURVES = 12  # more runs than this: the best ones are drawn (the page says which)
MOST_SETTINGS = 16  # differing settings shown as columns; the rest listed below the table


def flattened(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"model.init_args.learning_rate": 0.005, ...}: a nested config as dotted keys."""
    if isinstance(config, dict):
        found: dict[str, Any] = {}
        for key, value in config.items():
            found.update(flattened(value, f"{prefix}{key}."))
        return found
    return {prefix.rstrip("."): config}


def _seconds(start: dict[str, Any]) -> float | None:
    try:
        begun = datetime.datetime.fromisoformat(start["started"])
        ended = datetime.datetime.fromisoformat(start["ended"])
    except (KeyError, TypeError, ValueError):
        return None
    return (ended - begun).total_seconds()


def run_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """One run's line of the report, from its manifest, record and config (DamagedRunFile where one does not parse)."""
    if "damaged" in manifest:
        raise DamagedRunFile(manifest["damaged"])
    run = RunDirectory(Path(manifest["path"]))
    record = run.record()
    starts = record.get("starts") or []
    last = starts[-1] if starts else {}
    monitor = manifest.get("monitor") or {}
    durations = [seconds for seconds in map(_seconds, starts) if seconds is not None]
    trained = sum(durations) if durations else None
    placement = last.get("placement") or {}
    processes = placement.get("processes") or 1
    on_gpu = bool(last.get("cuda_available")) and placement.get("accelerator") in ("auto", "gpu", "cuda")
    slurm = last.get("slurm") or {}
    peaks = [start["peak_gpu_memory_mib"] for start in starts if start.get("peak_gpu_memory_mib") is not None]
    return {
        "name": manifest["run_name"],
        "path": run.path,
        "status": manifest.get("status", "?"),
        "metric": monitor.get("metric"),
        "mode": monitor.get("mode", "max"),
        "best": run.best_value(),
        "started": manifest.get("started", ""),
        "starts": len(starts),
        "trained_s": trained,
        "host": last.get("host", "?"),
        "where": ", ".join(
            [f"{processes} process{'es' if processes > 1 else ''}", placement.get("accelerator") or "?"]
            + ([placement["precision"]] if placement.get("precision") else [])  # recorded since 0.3.0
        ),
        "slurm_job": slurm.get("SLURM_ARRAY_JOB_ID") or slurm.get("SLURM_JOB_ID"),
        "gpu_hours": trained * processes / 3600 if on_gpu and trained is not None else None,
        "peak_gpu_memory_mib": max(peaks) if peaks else None,
        "settings": flattened(run.recorded_config()),
        "final_metrics": record.get("final_metrics") or {},
    }


def differing_settings(runs: list[dict[str, Any]]) -> list[str]:
    """The settings whose values are not the same in every run (a missing one counts as different)."""
    keys = sorted({key for run in runs for key in run["settings"]})
    return [key for key in keys if len({json.dumps(run["settings"].get(key), sort_keys=True) for run in runs}) > 1]


def read_curves(run_path: Path, metrics: list[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each of `metrics` in the run's logs/metrics.csv; missing metrics are left out."""
    path = RunDirectory(run_path).logs_dir / "metrics.csv"
    curves: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return curves
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            for metric in metrics:
                value = row.get(metric)
                if value not in (None, "") and row.get("step", "") != "":
                    curves.setdefault(metric, []).append((int(float(row["step"])), float(value)))
    return curves


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})  # the same runs, the same page
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # without the XML prolog and doctype: the page is HTML


def curves_figure(runs: list[dict[str, Any]]) -> str:
    """One SVG: one panel per monitored metric (the runs that follow it), and the training loss of every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(run["metric"] or "val/loss" for run in runs))
    figure, panels = plt.subplots(1, len(metrics) + 1, figsize=(5.2 * (len(metrics) + 1), 3.6), squeeze=False)
    axes_of = dict(zip([*metrics, "train/loss"], panels[0], strict=True))
    for index, run in enumerate(runs):
        metric = run["metric"] or "val/loss"
        curves = read_curves(run["path"], [metric, "train/loss"])
        colour = f"C{index % 10}"  # a run keeps its colour in every panel
        for name in (metric, "train/loss"):
            points = curves.get(name)
            if points:  # markers too: a run validated once is one point
                steps, values = zip(*points, strict=True)
                axes_of[name].plot(steps, values, marker="o", markersize=2.5, lw=1.3, color=colour, label=run["name"])
    for name, axes in axes_of.items():
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=7, loc="best")
    return _svg(figure)


def _cell(value: Any) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(json.dumps(value) if isinstance(value, list | dict) else str(value))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "&mdash;"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _best_first(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs with a best value first, best to worst by each run's own mode; the rest after, by name."""

    def key(run: dict[str, Any]) -> tuple:
        best = run["best"]
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return (1, 0.0, run["name"])
        return (0, -best if run["mode"] == "max" else best, run["name"])

    return sorted(runs, key=key)


def runs_table(runs: list[dict[str, Any]], settings: list[str]) -> str:
    shown = settings[:MOST_SETTINGS]
    head = ["run", "status", "best", "metric", "trained", "starts", "started", "where", "SLURM job", "GPU h", "GPU MiB"]
    rows = []
    for run in runs:
        cells = [
            f"<td><code>{html.escape(run['name'])}</code></td>",
            f'<td class="status {html.escape(run["status"])}">{html.escape(run["status"])}</td>',
            f"<td>{_cell(run['best'])}</td>",
            f"<td>{_cell(run['metric'])} ({run['mode']})</td>",
            f"<td>{_duration(run['trained_s'])}</td>",
            f"<td>{run['starts']}</td>",
            f"<td>{html.escape(run['started'][:16].replace('T', ' '))}</td>",
            f"<td>{html.escape(run['host'])}, {html.escape(run['where'])}</td>",
            f"<td>{_cell(run['slurm_job'])}</td>",
            f"<td>{_cell(run['gpu_hours'])}</td>",
            f"<td>{_cell(run['peak_gpu_memory_mib'])}</td>",
            *(f"<td>{_cell(run['settings'].get(key))}</td>" for key in shown),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{html.escape(name)}</th>" for name in head)
    header += "".join(f'<th class="setting">{html.escape(key)}</th>' for key in shown)
    more = settings[MOST_SETTINGS:]
    note = f"<p>Also differing, not shown as columns: {', '.join(map(html.escape, more))}.</p>" if more else ""
    return f'<table id="runs"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>{note}'


def sweeps_section(root: Path, by_name: dict[str, dict[str, Any]]) -> str:
    parts = []
    for path in sorted((root / "sweeps").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            trials = record["trials"]
        except (ValueError, KeyError):  # not a sweep record (a compare result, a half-written file)
            continue
        ranked = _best_first([by_name[t["run_name"]] for t in trials if t["run_name"] in by_name])
        values = {t["run_name"]: t.get("values", {}) for t in trials}
        keys = sorted({key for value in values.values() for key in value})
        header = "".join(f"<th>{html.escape(name)}</th>" for name in ["rank", "trial", "status", "best", *keys])
        rows = "".join(
            "<tr>"
            + f"<td>{rank}</td><td><code>{html.escape(run['name'])}</code></td><td>{html.escape(run['status'])}</td>"
            + f"<td>{_cell(run['best'])}</td>"
            + "".join(f"<td>{_cell(values[run['name']].get(key))}</td>" for key in keys)
            + "</tr>"
            for rank, run in enumerate(ranked, start=1)
        )
        name = html.escape(str(record.get("name", path.stem)))
        parts.append(
            f'<h3>Sweep <code>{name}</code>: {len(ranked)} of {len(trials)} trials trained</h3><table class="sweep">'
            f"<thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>"
        )
    return "".join(parts) or "<p>No sweeps yet (<code>sweep FILE</code>).</p>"


def seeds_section(root: Path) -> str:
    rows = []
    for path in sorted((root / "seeds").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            mean, half, values = record["mean"], record["ci95_half_width"], record["values"]
        except (ValueError, KeyError):  # a compare result, or not a seed group
            continue
        low, high = mean - half, mean + half
        rows.append(
            f"<tr><td><code>{html.escape(record.get('label', path.stem))}</code></td><td>{len(values)}</td>"
            f"<td>{mean:.4f}</td><td>[{low:.4f}, {high:.4f}]</td>"
            f"<td>{', '.join(f'{float(v):.4f}' for v in values.values())}</td></tr>"
        )
    if not rows:
        return "<p>No seed groups yet (<code>seeds --n 5</code>).</p>"
    head = "<tr><th>group</th><th>seeds</th><th>mean</th><th>95 % interval</th><th>values</th></tr>"
    return f'<table id="seeds"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
h3 { font-size: 1rem; } p.about { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2rem 0.6rem; text-align: left; white-space: nowrap; }
th { background: #f3f4f6; position: sticky; top: 0; } th.setting { background: #e8eefb; }
.scroll { overflow-x: auto; }
td.status.finished { color: #1b7a43; } td.status.failed { color: #b00020; } td.status.running { color: #a15c00; }
td.status.stopped { color: #555; } svg { max-width: 100%; height: auto; }
"""


def build_report(root: Path, output: Path) -> int:
    """Write the report of every run under `root` to `output`; returns how many runs it shows."""
    summaries, damaged = [], []
    for manifest in list_runs(root):
        try:
            summaries.append(run_summary(manifest))
        except DamagedRunFile as bad:  # named on the page; the other runs are still shown
            damaged.append(str(bad))
    runs = _best_first(summaries)
    by_name = {run["name"]: run for run in runs}
    settings = differing_settings(runs)
    shared = {key: value for key, value in (runs[0]["settings"] if runs else {}).items() if key not in settings}
    drawn = runs[:MOST_CURVES]
    curves = curves_figure(drawn) if runs else "<p>No runs yet (<code>fit</code>).</p>"
    curves_note = f"<p>The {len(drawn)} best of {len(runs)} runs.</p>" if len(runs) > len(drawn) else ""
    made = time.strftime("%Y-%m-%d %H:%M")
    project = Path.cwd().name  # commands run in the project's folder
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Runs: {html.escape(project)}</title>
<style>{STYLE}</style></head><body>
<h1>Runs of {html.escape(project)}</h1>
<p class="about">{len(runs)} runs in <code>{html.escape(str(root))}</code>, best first; made {made} by
<code>report</code> (and by every <code>reproduce</code>).</p>
<h2>Runs</h2>
<div class="scroll">{runs_table(runs, settings)}</div>
{"".join(f'<p class="damaged">Not shown: {html.escape(line)}</p>' for line in damaged)}
<h2>Training curves</h2>{curves_note}
<div id="curves">{curves}</div>
<h2>Sweeps</h2>
<div class="scroll">{sweeps_section(root, by_name)}</div>
<h2>Seeds</h2>
{seeds_section(root)}
<h2>Settings every run shares</h2>
<pre id="shared">{html.escape(yaml.safe_dump(shared, sort_keys=True, width=110)) if shared else "&mdash;"}</pre>
</body></html>
"""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(page)
    partial.replace(output)  # a reader (a browser left open) sees the old page or the new one, not half
    return len(runs)


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="report", description="Every run on one static HTML page.")
    parser.add_argument("--output", type=Path, default=None, help=f"the page (default: <runs folder>/{REPORT_NAME})")
    args = parser.parse_args(argv)
    root = runs_root()
    output = args.output or root / REPORT_NAME
    started = time.perf_counter()
    shown = build_report(root, output)
    print(f"Report of {shown} run(s): {output} ({time.perf_counter() - started:.1f} s); open it in a browser.")
    return 0
