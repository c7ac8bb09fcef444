"""`checkpointing.monitor: auto` (kit/training/monitor_choice.py): which metric it chooses, how a run keeps
its choice, and the 0.3.0 migration that keeps a metric the researcher named. In-process, on the
example project's kit; the choice in real runs of four task shapes is tests/test_task_kinds.py's."""

from __future__ import annotations

import sys

import pytest

from template_dev import TOP


@pytest.mark.parametrize(
    ("logged", "chosen"),
    [
        (["train/loss", "val/loss", "val/acc"], "val/acc"),  # a classifier: its score
        (["val/loss", "val/mae"], "val/loss"),  # a regression: no score, so its loss
        (["val/mae", "val/rmse"], "val/mae"),  # errors only: the first by name
        (["val/loss", "val/f1", "val/iou"], "val/f1"),  # several scores: SCORE_WORDS' order
        (["val_loss", "valid_acc_epoch"], "valid_acc_epoch"),  # other spellings of "validation"
        (["val/neg_loss", "val/loss"], "val/neg_loss"),  # a negated loss is a score
        (["train/acc", "test/acc", "val/samples"], None),  # no validation metric that says which way
        ([], None),
    ],
)
def test_auto_chooses_a_score_else_the_loss_else_nothing(logged, chosen, example_package) -> None:
    from digits_mlp.kit.training.monitor_choice import choose_monitor

    assert choose_monitor(logged) == chosen


def test_auto_follows_the_runs_earlier_choice_and_a_named_metric_gets_its_mode(example_package) -> None:
    from digits_mlp.kit.training.monitor_choice import monitor_at_start

    assert monitor_at_start("auto", "auto", None) == ("auto", None)  # a new run: chosen at its first validation
    assert monitor_at_start("auto", "auto", {"metric": "val/loss", "mode": "min"}) == ("val/loss", "min")
    assert monitor_at_start("auto", "auto", {"metric": None, "mode": None}) == (None, None)  # it logged none
    assert monitor_at_start("val/mae", "auto", None) == ("val/mae", "min")
    assert monitor_at_start(None, "auto", None) == (None, None)
    with pytest.raises(ValueError, match="does not say whether higher or lower is better"):
        monitor_at_start("val/score", "auto", None)
    with pytest.raises(ValueError, match="with mode 'max'"):
        monitor_at_start("val/loss", "max", None)


def test_an_auto_config_is_the_run_that_chose_its_metric(example_package) -> None:
    """A run recorded with val/acc (before "auto", or naming what auto chose) and a config saying auto are the
    same experiment once the run has chosen val/acc; not while nothing was chosen, nor for another metric."""
    from digits_mlp.kit.runs.directory import comparable_config

    recorded = "model: M\ncheckpointing:\n  monitor: val/acc\n  mode: max\n"
    given = "model: M\ncheckpointing:\n  monitor: auto\n  mode: auto\n"
    assert comparable_config(recorded, {"metric": "val/acc", "mode": "max"}) == comparable_config(
        given, {"metric": "val/acc", "mode": "max"}
    )
    assert comparable_config(recorded) != comparable_config(given)
    chose_loss = {"metric": "val/loss", "mode": "min"}
    assert comparable_config(recorded, chose_loss) != comparable_config(given, chose_loss)


def test_the_migration_keeps_a_named_metric_and_leaves_other_conflicts() -> None:
    sys.path.insert(0, str(TOP / "migrations"))
    try:
        from keep_named_monitor import keep_named_monitor
    finally:
        sys.path.remove(str(TOP / "migrations"))
    block = "<<<<<<< before updating\n{}=======\n{}>>>>>>> after updating\n"
    named = "checkpointing:\n" + block.format("  monitor: val/loss\n  mode: min\n", "  monitor: auto\n  mode: auto\n")
    assert keep_named_monitor(named) == (
        "checkpointing:\n  monitor: val/loss\n  mode: min\n",
        ["monitor: val/loss", "mode: min"],
    )
    other = block.format("  max_epochs: 3\n", "  max_epochs: 20\n")
    assert keep_named_monitor(other) == (other, [])
    assert keep_named_monitor("checkpointing:\n  monitor: auto\n") == ("checkpointing:\n  monitor: auto\n", [])
