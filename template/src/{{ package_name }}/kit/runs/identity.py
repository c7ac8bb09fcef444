"""Which run a command means, from its config files and options alone. Managed by the copier-lightning template.

`fit`, `validate`/`test`/`predict`, `evaluate`, `find-lr` and `submit` all ask `run_name(args)`,
so that the same config and options name the same run directory whatever the command. The name is
the last config file's name and a hash of the experiment the command describes: the YAML of
configs/default.yaml and every `--config` file, merged in order, with the command's `--key=value`
options applied on top. Comments and key order do not count; options that say where or how to
run (devices, nodes, a run name, a checkpoint to start from) are left out, so that `submit`, which
always sets devices and nodes, and a local `fit` of one config name the same run.

Hand-written rather than asking jsonargparse for the resolved config: resolving needs the model's
and data module's signatures, so importing torch and Lightning (seconds), and `submit --write-only`
and `--help` should answer at once. What the resolved config adds (defaults written in code) is
still compared when a run resumes (RunDirectory.check_same_config), so a changed default is
refused with the difference shown, not mixed into the old run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = "configs/default.yaml"
# Options that say which run to use or how to run it, not what to train: they stay out of the
# run's name and recorded config (a longer collective timeout does not make another experiment).
RUN_CONTROL_KEYS = (
    "run_name",
    "ckpt_path",
    "config",
    "__default_config__",
    "distributed",
    "allow_changed_data",
    "allow_changed_code",
)
# Options of one evaluation subcommand only; leaving them out gives `fit` and `test` the same name.
SUBCOMMAND_ONLY_KEYS = ("verbose", "return_predictions")
# Trainer options that say where a run's processes go: a run can move between machines and process
# counts (record.json keeps them for every start; the training loader refuses a mid-epoch resume
# with another number of processes).
PLACEMENT_KEYS = ("accelerator", "devices", "num_nodes", "strategy")
LEFT_OUT_OF_NAME = (*RUN_CONTROL_KEYS, *SUBCOMMAND_ONLY_KEYS, *(f"trainer.{key}" for key in PLACEMENT_KEYS))
# Settings that change how a run is shown or logged, not what it trains. They stay out of the name
# and out of the comparison that refuses "a different config": switching the progress display, or
# a template update that adds a CSV logger beside W&B, must not orphan a run half-way.
DISPLAY_TRAINER_KEYS = (
    "logger",
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
    "default_root_dir",
)
DISPLAY_CALLBACKS = (
    "ProgressLines",
    "TQDMProgressBar",
    "RichProgressBar",
    "ModelSummary",
    "RichModelSummary",
    "LearningRateMonitor",
    "DeviceStatsMonitor",
)
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Options that print and exit; they name no experiment.
HELP_OPTIONS = ("-h", "--help", "--print_config")
SHORT_OPTIONS = {"-c": "--config"}  # LightningCLI's short form: `fit -c experiment.yaml`
# checkpointing.monitor and .mode: "auto" is chosen at the run's first validation from what it logs
# (kit/training/monitor_choice.py) and recorded in its manifest; the run is that choice from then on.
AUTO = "auto"


class RunNameError(ValueError):
    """A config file that cannot be read, or an option that cannot be parsed."""


def run_name(args: list[str] | tuple[str, ...], default_config: str | Path = DEFAULT_CONFIG) -> str:
    """The run directory's name for a command's options (`--run_name` if given)."""
    given = given_run_name(args)
    if given:
        return check_run_name(given)
    options = _options(args)
    config_files = [value for key, value in options if key == "config"]
    label = Path(str(config_files[-1])).stem if config_files else Path(default_config).stem
    return name_from(label, experiment(args, default_config))


def option_value(args: list[str] | tuple[str, ...], key: str) -> Any:
    """The value the last `--key` in `args` gives (parsed as YAML), or None."""
    values = [value for name, value in _options(args) if name == key]
    return values[-1] if values else None


def given_config_files(args: list[str] | tuple[str, ...]) -> list[str]:
    """The `--config` values a command gives, in order."""
    return [str(value) for key, value in _options(args) if key == "config"]


def given_run_name(args: list[str] | tuple[str, ...]) -> str | None:
    """The `--run_name` a command gives, if any."""
    given = [value for key, value in _options(args) if key == "run_name"]
    return str(given[-1]) if given and given[-1] else None


def experiment(args: list[str] | tuple[str, ...], default_config: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """The merged config a command describes, without the options left out of its name."""
    merged: dict[str, Any] = {}
    if Path(default_config).exists():
        merged = _merged(merged, _read_config(str(default_config)))
    for key, value in _options(args):
        if key == "config":
            merged = _merged(merged, _read_config(value))
        else:
            _set(merged, key.split("."), value)
    return what_is_trained(merged)


def monitors_no_metric(args: list[str] | tuple[str, ...]) -> bool:
    """Whether the config a command describes sets checkpointing.monitor to null (nothing ranks its runs)."""
    checkpointing = experiment(args).get("checkpointing") or {}
    return "monitor" in checkpointing and checkpointing["monitor"] is None


def with_chosen_monitor(config: dict[str, Any], chosen: dict[str, Any] | None) -> dict[str, Any]:
    """`config` with an "auto" checkpointing.monitor and .mode replaced by a run's `chosen` ones
    ({"metric", "mode"}, its manifest's); `config` unchanged when nothing was chosen yet.

    So a run started as "auto" and one that names the metric "auto" chose are the same experiment, and
    a run recorded with val/acc before "auto" became the default continues under the new default.
    """
    checkpointing = config.get("checkpointing")
    if not chosen or chosen.get("metric") == AUTO or not isinstance(checkpointing, dict):
        return config
    config = copy.deepcopy(config)
    for key, value in (("monitor", chosen.get("metric")), ("mode", chosen.get("mode"))):
        if config["checkpointing"].get(key) == AUTO:
            config["checkpointing"][key] = value
    return config


def what_is_trained(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a parsed config, as a mapping) without what does not change the trained model.

    Left out: the options of LEFT_OUT_OF_NAME (which run, where it runs) and the display and
    logging settings (DISPLAY_TRAINER_KEYS, DISPLAY_CALLBACKS). Used for a run's name and to decide
    whether a resumed run's config is the one it was started with.
    """
    config = copy.deepcopy(config)
    for key in LEFT_OUT_OF_NAME:
        _remove(config, key.split("."))
    trainer = config.get("trainer")
    if isinstance(trainer, dict):
        for key in DISPLAY_TRAINER_KEYS:
            trainer.pop(key, None)
        callbacks = trainer.get("callbacks")
        if isinstance(callbacks, list):
            kept = [callback for callback in callbacks if _class_name(callback) not in DISPLAY_CALLBACKS]
            trainer["callbacks"] = kept
        if not trainer.get("callbacks"):
            trainer.pop("callbacks", None)  # none left, an empty list and a null all say the same
    return config


def _class_name(entry: Any) -> str:
    class_path = entry.get("class_path", "") if isinstance(entry, dict) else str(entry)
    return str(class_path).rsplit(".", 1)[-1]


def name_from(label: str, experiment: dict[str, Any]) -> str:
    """A readable, deterministic name: the config's label and a hash of the experiment."""
    canonical = json.dumps(experiment, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return f"{plain_name_part(label)}-{digest}"


# A run name is one directory under the runs directory: no path separator, nothing hidden or parent.
MAX_RUN_NAME_LENGTH = 200


def check_run_name(name: str) -> str:
    """`name` if it is a plain directory name; RunNameError otherwise (`../escape` would train beside runs/)."""
    problem = None
    if "/" in name or "\\" in name or "\0" in name:
        problem = "it holds a path separator"
    elif name.startswith("."):
        problem = "it starts with '.' (a hidden or parent directory)"
    elif len(name) > MAX_RUN_NAME_LENGTH:
        problem = f"it is longer than {MAX_RUN_NAME_LENGTH} characters"
    elif not name.strip():
        problem = "it is empty"
    if problem:
        raise RunNameError(
            f"run name {name!r} is not a plain name: {problem}. A run is one directory under the runs directory; "
            f"use letters, digits, '-', '_' and '.' (e.g. --run_name wide-lr3e-3)."
        )
    return name


def plain_name_part(text: str) -> str:
    """`text` made into a safe part of a run name (a sweep's or a config's name): other characters become '-'."""
    plain = re.sub(r"[^\w.-]|\.{2,}", "-", str(text)).lstrip(".")  # no separator, no '..', not hidden
    return plain[: MAX_RUN_NAME_LENGTH // 2] or "run"


def sweep_name(spec: dict[str, Any], sweep_file: Path) -> str:
    """The name a sweep's trials, records and job scripts go by: its `name:`, else the file's; made plain."""
    return plain_name_part(spec.get("name") or Path(sweep_file).stem)


def _options(args: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """(key, value) for each `--key=value` or `--key value` in order; a leading subcommand is skipped."""
    args = [str(arg) for arg in args]
    if args and args[0] in SUBCOMMANDS:
        args = args[1:]
    options = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg in HELP_OPTIONS or arg.startswith("--print_config="):
            continue
        arg = _long_form(arg)
        if not arg.startswith("--"):
            raise RunNameError(f"unexpected argument {arg!r}: options are written --key=value or --key value")
        key, has_value, text = arg[2:].partition("=")
        if not has_value:
            if index < len(args) and not args[index].startswith("--"):
                text = args[index]
                index += 1
            else:
                text = "true"  # a flag given alone
        options.append((key, text if key in ("config", "run_name") else _parse_value(key, text)))
    return options


def _long_form(arg: str) -> str:
    """A short option as its long one: `-c FILE`, `-c=FILE` and `-cFILE` (argparse takes all three)
    are `--config FILE`."""
    for short, long in SHORT_OPTIONS.items():
        if arg.startswith(short):
            value = arg[len(short) :].removeprefix("=")
            return f"{long}={value}" if value else long
    return arg


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # jsonargparse takes an unparsable value as a string too


def config_text(given: str) -> str:
    """A `--config` value's YAML: the file's text, or the value itself where it is no file (inline YAML)."""
    path = Path(given)
    return path.read_text() if path.is_file() else given


def not_valid_yaml(given: str, error: yaml.YAMLError) -> str:
    """`FILE line L, column C: not valid YAML (PROBLEM)`: where a `--config` value (a file, or YAML given
    inline as `--config '{...}'`) breaks, in one line (PyYAML's own message takes four)."""
    mark = getattr(error, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    named = given if Path(given).is_file() else f"--config {given!r}"
    return f"{named}{where}: not valid YAML ({getattr(error, 'problem', None) or error})"


def _read_config(given: str) -> dict[str, Any]:
    """A config file's mapping; a `--config` value that is not a file is read as inline YAML."""
    path = Path(given)
    if path.suffix in (".yaml", ".yml") and not path.is_file():
        raise RunNameError(f"config file {given} does not exist")
    try:
        loaded = yaml.safe_load(config_text(given))
    except OSError as error:
        raise RunNameError(f"cannot read config {given}: {error}") from None
    except yaml.YAMLError as error:
        raise RunNameError(not_valid_yaml(given, error)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise RunNameError(f"config {given} is not a mapping of options (got {type(loaded).__name__})")
    return loaded


def _merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` on top of `base`, nested mappings merged key by key (as jsonargparse merges configs)."""
    result = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(tree.get(key), dict):
            # `--model=Other --model.width=3`: the class named alone keeps counting beside its options.
            tree[key] = {} if tree.get(key) is None else {"class_path": tree[key]}
        tree = tree[key]
    tree[keys[-1]] = value


def _remove(tree: dict[str, Any], keys: list[str]) -> None:
    for key in keys[:-1]:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return
    tree.pop(keys[-1], None)
