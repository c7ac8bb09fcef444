"""A command's run is named from its config files and options alone (kit/runs/identity.py).

`submit` and a local `fit` of one config must find the same run directory, and `submit` must not
need torch to know it. In-process on the example project's kit, and in its venv for the torch check.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from template_dev import run


@pytest.fixture(scope="module")
def kit(example_package) -> SimpleNamespace:
    from digits_mlp.kit.runs import identity
    from digits_mlp.kit.training.project_loading import load_project

    return SimpleNamespace(
        run_name=identity.run_name,
        RunNameError=identity.RunNameError,
        load_project=load_project,
        default=example_package / identity.DEFAULT_CONFIG,
        project=example_package,
    )


def test_submit_and_fit_name_the_same_run(kit, monkeypatch) -> None:
    local = ["fit", "--trainer.max_epochs=2"]
    # `submit --gpu full:4 --nodes 2` adds the placement options to the same command.
    on_the_cluster = ["--trainer.max_epochs", "2", "--trainer.devices=4", "--trainer.num_nodes=2"]
    assert kit.run_name(local, kit.default) == kit.run_name(on_the_cluster, kit.default)
    # ... and the CLI that trains uses that name.
    monkeypatch.chdir(kit.project)
    loaded = kit.load_project(["--trainer.max_epochs=2", "--trainer.devices=1"])
    assert loaded.run.name == kit.run_name(local, kit.default)
    assert (
        loaded.monitor == "auto" and type(loaded.model).__name__ == "DigitsClassifier"
    )  # chosen at the first validation


def test_what_is_trained_names_the_run_and_comments_do_not(kit, tmp_path: Path) -> None:
    plain, commented, changed = (tmp_path / name / "exp.yaml" for name in ("plain", "commented", "changed"))
    for path in (plain, commented, changed):
        path.parent.mkdir()
    text = "trainer:\n  max_epochs: 3\nmodel:\n  init_args:\n    lr: 0.01\n"
    plain.write_text(text)
    commented.write_text(
        "# tried on Monday\nmodel:\n  init_args:\n    lr: 0.01  # from find-lr\ntrainer:\n  max_epochs: 3\n"
    )
    changed.write_text(text.replace("0.01", "0.02"))
    no_default = tmp_path / "no-default.yaml"  # the files alone decide the key order here
    name = kit.run_name(["--config", str(plain)], no_default)
    assert name.startswith("exp-")
    assert kit.run_name(["--config", str(commented)], no_default) == name
    assert kit.run_name(["--config", str(changed)], no_default) != name
    assert kit.run_name(["--config", str(plain), "--model.init_args.lr=0.02"], no_default) != name
    assert kit.run_name(["--config", str(plain), "--model.init_args.lr", "0.02"], no_default) == kit.run_name(
        ["--config", str(changed)], no_default
    )
    assert kit.run_name(["--config", str(plain), "--run_name", "mine"], no_default) == "mine"
    # LightningCLI's short form names the same run, in each of the ways argparse takes it.
    for short_form in (["-c", str(plain)], [f"-c={plain}"], [f"-c{plain}"]):
        assert kit.run_name(short_form, no_default) == name


def test_a_missing_config_file_is_named_in_the_error(kit) -> None:
    with pytest.raises(kit.RunNameError, match="configs/nope.yaml does not exist"):
        kit.run_name(["--config", "configs/nope.yaml"], kit.default)


def test_submit_write_only_needs_no_torch(kit, example_project, tmp_path: Path) -> None:
    project, venv = example_project
    probe = (
        "import sys; from digits_mlp.cli import main; "
        "code = main(['submit', '--write-only', '--gpu', 'full:1']); "
        "assert code == 0, code; assert 'torch' not in sys.modules, 'submit --write-only imported torch'"
    )
    done = run([str(venv.python), "-c", probe], cwd=project, env={"RUNS_DIR": str(tmp_path)})
    assert kit.run_name(["--trainer.devices=1", "--trainer.num_nodes=1"], kit.default) in done.stdout
