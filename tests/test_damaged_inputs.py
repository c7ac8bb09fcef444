"""Files a command reads that are damaged, or are not what they are given as: one line each, exit 2,
nothing moved or lost (each of these ended in a traceback from deep in json, torch.load or a socket).

In-process, through the example project's own `main`: a run whose manifest.json or record.json does
not parse (`runs` and `report` show the other runs and name it; `fit`, `test` and `export` of it are
refused); a file given with --ckpt_path that is no checkpoint or one cut short; a `seeds` config
that does not exist; a `serve` port out of range.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch


@pytest.fixture
def project_main(example_package, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from digits_mlp.cli import main

    monkeypatch.chdir(example_package)  # commands run from the project's root
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))
    return main


def outcome(main, arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`main(arguments)`'s exit code (returned, or raised by a parser) and what it printed: (code, out, err)."""
    try:
        code = main(arguments)
    except SystemExit as exit_info:
        code = exit_info.code
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def planted_run(runs: Path, name: str):
    from digits_mlp.kit.runs.directory import RunDirectory

    run = RunDirectory(runs / name)
    run.start("config: planted\n", {"metric": "val/acc", "mode": "max"})
    run.set_status("finished")
    return run


def test_a_run_whose_own_files_do_not_parse_is_named_and_the_other_runs_still_shown(
    project_main, capsys, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    planted_run(runs, "good")
    cut = planted_run(runs, "cut")
    cut.manifest_path.write_text('{"run_name": "cut", "status": "fini')  # a manifest cut short (by hand, a disk)
    listed = planted_run(runs, "listed")
    listed.record_path.write_text("[]\n")  # a record that parses, but is no record
    kept = {path: path.read_bytes() for path in runs.rglob("*") if path.is_file()}
    cut_line = f"{cut.manifest_path} is damaged (not JSON at line 1, column 31)"
    record_line = f"{listed.record_path} is damaged (a JSON list, not an object)"

    code, out, err = outcome(project_main, ["runs"], capsys)
    assert code == 0 and err == "", err
    assert "good  [finished]" in out and "listed  [finished]" in out, out
    assert "cut  [damaged]" in out and f"    {cut_line}: nothing reads the run from it" in out, out

    code, out, err = outcome(project_main, ["report"], capsys)
    page = (runs / "report.html").read_text()
    assert code == 0 and "<code>good</code>" in page, out + err
    for line in (cut_line, record_line):
        assert f'<p class="damaged">Not shown: {line}' in page
    assert "<code>cut</code>" not in page and "<code>listed</code>" not in page

    for command in (["fit", "--trainer.max_epochs=1"], ["test"], ["export"]):
        code, out, err = outcome(project_main, [*command, "--run_name", "cut"], capsys)
        assert code == 2, (command, out, err)
        assert err.startswith(f"error: {cut_line}: nothing reads the run from it. Restore the file, or move the run")
        assert err.count("\n") == 1, (command, err)
    kept[runs / "report.html"] = (runs / "report.html").read_bytes()
    assert {path: path.read_bytes() for path in runs.rglob("*") if path.is_file()} == kept  # nothing moved or lost


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict", "evaluate"])
def test_a_ckpt_path_that_does_not_read_as_a_checkpoint_is_one_line(project_main, capsys, tmp_path, command) -> None:
    saved = tmp_path / "whole.ckpt"
    torch.save({"global_step": 10, "epoch": 1, "state_dict": {"weight": torch.zeros(4096)}}, saved)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])  # a copy that stopped half-way
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    archive = tmp_path / "archive.ckpt"  # a zip archive, but not torch.save's
    with zipfile.ZipFile(archive, "w") as files:
        files.writestr("readme.txt", "not a checkpoint")
    not_torch = "not the zip archive torch.save writes: another kind of file, or a checkpoint cut short"
    for given, problem in ((cut, not_torch), (notes, not_torch), (archive, "RuntimeError: ")):
        code, out, err = outcome(project_main, [command, "--ckpt_path", str(given), "--run_name", "named"], capsys)
        assert code == 2, (given, out, err)
        assert err.startswith(f"error: --ckpt_path {given} does not read as a checkpoint ({problem}"), err
        assert err.count("\n") == 1, err
    assert not (tmp_path / "runs" / "named").exists()  # refused before the run was started


def test_a_missing_seeds_config_and_a_port_out_of_range_are_one_line(project_main, capsys, tmp_path) -> None:
    code, out, err = outcome(project_main, ["seeds", "--n", "2", "--config", "configs/experiments/nope.yaml"], capsys)
    assert (code, out, err) == (2, "", "error: config file configs/experiments/nope.yaml does not exist\n")
    code, out, err = outcome(project_main, ["serve", "--port", "99999"], capsys)
    assert (code, out, err) == (2, "", "error: --port 99999: a port is a number from 0 to 65535\n")
    assert not (tmp_path / "runs").exists()
