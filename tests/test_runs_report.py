"""`report`: every run on one static page (kit/reporting/runs_report.py), from the records of real runs
(a plain run, a grid sweep, a seed group, a stopped run), read as HTML and in Debian's chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser

import pytest

from template_dev import TOP, run

ARTIFACTS = TOP / "test-artifacts"  # screenshots kept after the run (.gitignore'd)

SWEEP = """\
name: rates
strategy: grid
options: [--trainer.max_epochs=1]
parameters:
  model.init_args.learning_rate: [0.001, 0.01]
"""


class Tables(HTMLParser):
    """The text of every table cell, by table id: {"runs": [[cell, ...], ...], ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.table: str | None = None
        self.in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.table = dict(attrs).get("id") or dict(attrs).get("class") or "table"
            self.tables.setdefault(self.table, [])
        elif tag == "tr" and self.table:
            self.tables[self.table].append([])
        elif tag in ("td", "th") and self.table:
            self.tables[self.table][-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.in_cell and self.table:
            self.tables[self.table][-1][-1] += data


@pytest.fixture(scope="module")
def reported(example_project, example_command, tmp_path_factory):
    """Five finished runs (one plain, two sweep trials, two seeds) and one stopped run, then `report`."""
    project, _ = example_project
    runs = tmp_path_factory.mktemp("report-runs")
    env = {**os.environ, "RUNS_DIR": str(runs)}
    command = [*example_command]
    run([*command, "fit", "--trainer.max_epochs=2", "--run_name", "plain"], cwd=project, env=env)
    sweep = runs.parent / "rates.yaml"
    sweep.write_text(SWEEP)
    run([*command, "sweep", str(sweep)], cwd=project, env=env)
    run([*command, "seeds", "--n", "2", "--label", "two-seeds", "--trainer.max_epochs=1"], cwd=project, env=env)
    stop = runs.parent / "stop.yaml"
    kill_at = {"class_path": "digits_mlp.kit.KillAt",
               "init_args": {"marker_file": str(runs.parent / "stopped"), "epoch": 0, "batch_index": 3,
                             "signal": "SIGTERM"}}  # fmt: skip
    stop.write_text(json.dumps({"trainer": {"callbacks": [kill_at]}}))
    stopped = run([*command, "fit", "--run_name", "stopped", "--config", str(stop)], cwd=project, env=env, check=False)
    assert stopped.returncode != 0 and "stopped on SIGTERM" in stopped.stdout, stopped.stdout[-1500:]
    done = run([*command, "report"], cwd=project, env=env)
    return project, env, runs, done.stdout


def test_the_report_shows_every_run_what_differs_and_the_sweeps_and_seeds(reported) -> None:
    project, env, runs, printed = reported
    page = runs / "report.html"
    assert f"Report of 6 run(s): {page}" in printed
    text = page.read_text()
    parser = Tables()
    parser.feed(text)
    header, *rows = parser.tables["runs"]
    names = [row[0] for row in rows]
    assert sorted(names) == sorted(["plain", "sweep-rates-000", "sweep-rates-001", "seeds-two-seeds-0",
                                    "seeds-two-seeds-1", "stopped"])  # fmt: skip
    status = {row[0]: row[1] for row in rows}
    assert status["stopped"] == "stopped" and {status[n] for n in names if n != "stopped"} == {"finished"}
    # Best first, by each run's recorded best val/acc; the run stopped in its first epoch validated never (a
    # stop runs no validation of its own), so it has no best value: last, shown as a dash.
    best = {row[0]: row[2] for row in rows}
    recorded = {name: json.loads((runs / name / "manifest.json").read_text()) for name in names}
    values = {name: max((c["value"] for c in m["checkpoints"].values() if c.get("value") is not None), default=None)
              for name, m in recorded.items()}  # fmt: skip
    ranked = sorted((name for name in names if values[name] is not None), key=lambda n: -values[n])
    assert values["stopped"] is None and names == [*ranked, "stopped"], (names, values)
    assert all(best[name] == f"{values[name]:.4g}" for name in ranked) and best["stopped"] == "\u2014"
    # Where each ran: its host, processes, accelerator and the precision it trained in.
    where = {row[0]: row[header.index("where")] for row in rows}
    assert all(where[name].endswith(", 1 process, auto, 32-true") for name in names), where
    # The settings that differ are columns; the shared ones are listed once below.
    assert {"model.init_args.learning_rate", "seed_everything", "trainer.max_epochs"} <= set(header)
    assert "data.init_args.batch_size" not in header and "data.init_args.batch_size: 128" in text
    rates = {row[0]: row[header.index("model.init_args.learning_rate")] for row in rows}
    assert (rates["sweep-rates-000"], rates["sweep-rates-001"]) == ("0.001", "0.01")
    # The sweep, ranked; the seed group with its mean and interval as `seeds` recorded them.
    (sweep_table,) = [rows for name, rows in parser.tables.items() if name == "sweep"]
    trial_ranking = [row[1] for row in sweep_table[1:]]
    assert trial_ranking == sorted(["sweep-rates-000", "sweep-rates-001"], key=lambda n: -values[n])
    group = json.loads((runs / "seeds" / "two-seeds.json").read_text())
    (seed_row,) = parser.tables["seeds"][1:]
    assert seed_row[:3] == ["two-seeds", "2", f"{group['mean']:.4f}"]
    low, high = group["mean"] - group["ci95_half_width"], group["mean"] + group["ci95_half_width"]
    assert seed_row[3] == f"[{low:.4f}, {high:.4f}]"
    # Curves: one panel for val/acc and one for train/loss, a line per run (drawn inline, nothing fetched).
    svg = text[text.index('<div id="curves">') :]
    assert svg.count("<svg") == 1 and not re.search(r'(src|href)="(https?:)?//', text)
    assert all(name in svg for name in ranked)


def test_reproduce_writes_the_report_again(reported, example_command) -> None:
    project, env, runs, _ = reported
    page = runs / "report.html"
    page.unlink()
    done = run([*example_command, "reproduce", "dataset-card"], cwd=project, env=env)
    assert f"Report of 6 run(s): {page}" in done.stdout and page.is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (scripts/test.sh "
                    "installs it as root: apt-get install chromium)")  # fmt: skip
def test_the_report_opens_from_disk_in_a_real_browser(reported, example_command) -> None:
    from playwright.sync_api import sync_playwright

    project, env, runs, _ = reported
    run([*example_command, "report"], cwd=project, env=env)  # its own page, whatever the tests before did
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto((runs / "report.html").as_uri())
        rows = page.locator("#runs tbody tr").count()
        curves = page.locator("#curves svg").bounding_box()
        page.screenshot(path=ARTIFACTS / "runs-report.png", full_page=True)
        browser.close()
    assert rows == 6 and curves and curves["width"] > 300 and curves["height"] > 100, (rows, curves)
    assert problems == [] and all(url.startswith("file://") for url in requests), (problems, requests)
