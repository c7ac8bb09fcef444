"""A refused option or config value ends in one line naming the key (kit/training/option_errors.py).

In-process, through the example project's own `main`, so every message is the one the installed
jsonargparse and Lightning write today: a change in their wording shows here as a failure.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

HINT = " (every option: `digits_mlp fit --help`)"
REFUSED = {
    "--model.init_args.dropout=lots": "model.init_args.dropout: expected float, got 'lots'",
    "--model.init_args.hidden_sizes=[64,x]": "model.init_args.hidden_sizes: expected int, got 'x'",
    "--data.init_args.batch_size=1.5": "data.init_args.batch_size: expected int, got '1.5'",
    "--trainer.max_epochs=abc": "trainer.max_epochs: expected int, got 'abc'",
    "--checkpointing.mode=sideways": "checkpointing.mode: expected one of 'min', 'max', 'auto', got 'sideways'",
    "--seed_everything=abc": "seed_everything: expected bool or int, got 'abc'",
    "--model.init_args.widht=3": "model.init_args.widht: DigitsClassifier takes no such option",
    "--model=digits_mlp.model.DigitsClassifer": (
        "model: cannot import digits_mlp.model.DigitsClassifer "
        "(module 'digits_mlp.model' has no attribute 'DigitsClassifer')"
    ),
    "--model=digits_mlp.data.DigitsDataModule": (
        "model: expected a subclass of LightningModule, got 'digits_mlp.data.DigitsDataModule'"
    ),
    "--trainer.callbacks+=NoSuchCallback": (
        "trainer.callbacks: expected a class path (package.module.Class), got 'NoSuchCallback'"
    ),
    # A callback's option: two branches of the Union (a list of callbacks, one callback) say different things.
    "--trainer.callbacks+=EarlyStopping --trainer.callbacks.patience=soon": (
        "trainer.callbacks.init_args.patience: expected int, got 'soon'"
    ),
    "--trainer.callbacks+=EarlyStopping --trainer.callbacks.patiense=3": (
        "trainer.callbacks.init_args.patiense: EarlyStopping takes no such option"
    ),
    # Already one line in jsonargparse's words: kept as it is.
    "--trainer.max_epoch=3": "unrecognized arguments: --trainer.max_epoch=3",
}


@pytest.fixture
def project_main(example_package, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from digits_mlp.cli import main

    monkeypatch.chdir(example_package)  # commands run from the project's root
    monkeypatch.setenv("RUNS_DIR", str(tmp_path / "runs"))  # where a run would be written
    return main


def refusal(main, arguments: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What `main(arguments)` printed on stderr, after checking it exited 2 and printed nothing else."""
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    printed = capsys.readouterr()
    assert exit_info.value.code == 2, printed.err
    assert printed.out == "", printed.out
    return printed.err


@pytest.mark.parametrize("option", REFUSED)
def test_a_refused_option_is_one_line_naming_its_key(project_main, option: str, capsys, tmp_path: Path) -> None:
    err = refusal(project_main, ["fit", *option.split(), "--run_name", "refused"], capsys)
    assert err == f"error: {REFUSED[option]}{HINT}\n"
    assert not (tmp_path / "runs").exists()  # nothing written


def test_with_values_that_parse_the_same_command_writes_its_run(project_main, tmp_path: Path) -> None:
    """The check above that nothing was written looks where a run goes."""
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"]
    assert project_main(["fit", "--model.init_args.dropout=0.2", *short, "--run_name", "refused"]) == 0
    assert (tmp_path / "runs" / "refused" / "checkpoints" / "final.ckpt").is_file()


def test_a_wrong_value_in_a_config_file_names_its_key(project_main, capsys, tmp_path: Path) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text("model:\n  init_args:\n    learning_rate: fast\ntrainer:\n  max_epochs: 3\n")
    err = refusal(project_main, ["fit", "--config", str(config)], capsys)
    assert err == f"error: model.init_args.learning_rate: expected float, got 'fast'{HINT}\n"


def test_a_config_that_is_not_yaml_is_named_with_its_line(project_main, capsys, tmp_path: Path) -> None:
    config = tmp_path / "experiment.yaml"
    config.write_text("trainer:\n\tmax_epochs: 3\n")  # a tab where YAML wants spaces
    err = refusal(project_main, ["fit", "--config", "configs/experiments/wide.yaml", "--config", str(config)], capsys)
    problem = "not valid YAML (found character '\\t' that cannot start any token)"
    assert err == f"error: {config} line 2, column 1: {problem}{HINT}\n"
    for short_form in (["-c", str(config)], [f"-c={config}"], [f"-c{config}"]):  # LightningCLI's short form of --config
        assert refusal(project_main, ["fit", *short_form], capsys) == err
    # `submit` names the job's run from the config before anything else: the same line, from there.
    assert project_main(["submit", "--write-only", "--config", str(config)]) == 2  # returned, not raised
    assert capsys.readouterr().err == f"error: {config} line 2, column 1: {problem}\n"
    err = refusal(project_main, ["fit", "--config", "{trainer: [}"], capsys)
    problem = "not valid YAML (expected the node content, but found '}')"
    assert err == f"error: --config '{{trainer: [}}' line 1, column 12: {problem}{HINT}\n"


NEEDS_A_SIZE = """
from digits_mlp.model import DigitsClassifier


class SizedClassifier(DigitsClassifier):
    def __init__(self, size: int, depth: int, learning_rate: float = 1e-3):
        super().__init__(learning_rate=learning_rate)
"""


def test_an_option_without_a_default_that_is_not_given_is_named(
    project_main, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "own_model.py").write_text(NEEDS_A_SIZE)
    monkeypatch.syspath_prepend(str(tmp_path))
    err = refusal(project_main, ["fit", "--model=own_model.SizedClassifier", "--model.init_args.depth=2"], capsys)
    assert err == f"error: model.init_args.size: SizedClassifier needs a value (it has no default){HINT}\n"
    err = refusal(project_main, ["fit", "--model=own_model.SizedClassifier"], capsys)
    assert err == f"error: model.init_args: SizedClassifier needs size, depth (they have no default){HINT}\n"


def test_a_message_of_another_shape_is_kept_whole(example_package) -> None:
    from digits_mlp.kit.training.option_errors import one_line

    required = 'Parser key "model":\n  Problem with given class_path \'a.B\':\n    Key "size" is required'
    assert one_line(required) == required
    assert one_line("something else went wrong") == "something else went wrong"


TRAINER_REFUSES = {
    "--trainer.devices=0": "`Trainer(devices='0')` value is not a valid input using cpu accelerator.",
    "--trainer.max_steps=-5": "`max_steps` must be a non-negative integer or -1 (infinite steps). You passed in -5.",
    "--trainer.accelerator=gpu": "No supported gpu backend found!",  # on this CPU machine
    # Refused once training has begun (the run is started, and ends failed):
    "--trainer.val_check_interval=1000": "`val_check_interval` (1000) must be less than or equal to the number",
}


@pytest.mark.parametrize("option", TRAINER_REFUSES)
def test_trainer_settings_lightning_refuses_are_one_line(project_main, option: str, capsys) -> None:
    """Lightning's own refusal (MisconfigurationException, or a ValueError from its code) without its traceback."""
    import torch

    if option == "--trainer.accelerator=gpu" and torch.cuda.is_available():
        pytest.skip("a GPU accelerator is refused only where there is no GPU")
    assert project_main(["fit", option, "--trainer.max_epochs=1", "--run_name", "refused"]) == 2
    printed = capsys.readouterr()
    errors = [line for line in printed.err.splitlines() if line]
    assert len(errors) == 1 and errors[0].startswith(f"error: the trainer's settings: {TRAINER_REFUSES[option]}"), (
        printed.err
    )


TRAINS_NOTHING = {
    "--trainer.max_epochs=0": "trainer.max_epochs=0 trains nothing, so the run could never finish",
    "--trainer.max_steps=0": "trainer.max_steps=0 trains nothing, so the run could never finish",
    "--trainer.limit_train_batches=0": "trainer.limit_train_batches=0 trains nothing, so the run could never finish",
    "--trainer.limit_train_batches=0.0": "trainer.limit_train_batches=0 trains nothing, so the run could never finish",
    "--trainer.accumulate_grad_batches=0": "trainer.accumulate_grad_batches=0: the optimizer steps once every",
}


@pytest.mark.parametrize("option", TRAINS_NOTHING)
def test_fit_settings_that_train_nothing_are_refused(project_main, option: str, capsys, tmp_path: Path) -> None:
    """Such a run could never finish: Lightning ended it without a word (so every re-run ended the same way)
    or, accumulating over 0 batches, in a ZeroDivisionError."""
    assert project_main(["fit", option, "--run_name", "nothing"]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith(f"error: {TRAINS_NOTHING[option]}") and printed.err.count("\n") == 1, printed.err
    assert not (tmp_path / "runs" / "nothing" / "manifest.json").exists()  # refused before the run started


def test_a_fit_told_not_to_checkpoint_is_refused_naming_what_keeps_fewer(project_main, capsys, tmp_path: Path) -> None:
    """Lightning refused it naming a ModelCheckpoint the researcher never added (`fit` adds it); the line now
    says why `fit` checkpoints, and the settings it names keep fewer files."""
    assert project_main(["fit", "--trainer.enable_checkpointing=false", "--run_name", "unsaved"]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith("error: trainer.enable_checkpointing=false: `fit` checkpoints every run (last.ckpt")
    assert printed.err.count("\n") == 1, printed.err
    assert not (tmp_path / "runs" / "unsaved" / "manifest.json").exists()  # refused before the run started
    fewer = ["--checkpointing.save_top_k=0", "--checkpointing.every_n_minutes=null", "--trainer.max_epochs=2"]
    assert project_main(["fit", *fewer, "--run_name", "fewer"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "fewer" / "checkpoints").glob("*.ckpt")) == [
        "final.ckpt",
        "last.ckpt",
        "previous.ckpt",
    ]


QUICK_TRIES = {
    # Lightning rebuilds the training loader in order (a SequentialSampler): ResumableDataLoader refused it.
    "--trainer.overfit_batches=1": 1,
    # Training ends before the first epoch's validation: early stopping raised, finding no metric.
    "--trainer.max_steps=3": 3,
}


@pytest.mark.parametrize("option", QUICK_TRIES)
def test_lightnings_quick_try_settings_train_validate_and_finish(project_main, option: str, capsys) -> None:
    """Both ended in a traceback and a failed run (and the same again on every re-run)."""
    assert project_main(["fit", option, "--trainer.max_epochs=1", "--run_name", "quick"]) == 0
    printed = capsys.readouterr()
    assert f"epoch 1/1  step {QUICK_TRIES[option]}  " in printed.out, printed.out + printed.err[-3000:]
    assert re.search(r"Run 'quick' finished\. val/acc = 0\.\d{4}, val/loss", printed.out), printed.out


@pytest.mark.parametrize("command", ["fit", "find-lr", "find-batch-size"])
def test_an_optimizer_setting_torch_refuses_is_one_line(project_main, command: str, capsys) -> None:
    """torch.optim's ValueError, raised in the model's configure_optimizers, said without its traceback by the
    training commands and by the plain ones that build the optimizers (find-lr, find-batch-size)."""
    options = ["--model.init_args.learning_rate=-1", *(["--run_name", "refused"] if command == "fit" else [])]
    assert project_main([command, *options, "--trainer.max_epochs=1"]) == 2
    printed = capsys.readouterr()
    errors = [line for line in printed.err.splitlines() if line]
    said = r"error: DigitsClassifier refused its optimizer settings \(adam\w*\.py line \d+, in __init__\): "
    assert len(errors) == 1 and re.fullmatch(said + "Invalid learning rate: -1.0", errors[0]), printed.err
