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
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = "configs/default.yaml"
# Options that say which run to use or how to run it, not what to train: they stay out of the
# run's name and recorded config (a longer collective timeout does not make another experiment).
RUN_CONTROL_KEYS = ("run_name", "ckpt_path", "config", "__default_config__", "distributed", "allow_changed_data")
# Options of one evaluation subcommand only; leaving them out gives `fit` and `test` the same name.
SUBCOMMAND_ONLY_KEYS = ("verbose", "return_predictions")
# Trainer options that say where a run's processes go: a run can move between machines and process
# counts (record.json keeps them for every start; the training loader refuses a mid-epoch resume
# with another number of processes).
PLACEMENT_KEYS = ("accelerator", "devices", "num_nodes", "strategy")
LEFT_OUT_OF_NAME = (*RUN_CONTROL_KEYS, *SUBCOMMAND_ONLY_KEYS, *(f"trainer.{key}" for key in PLACEMENT_KEYS))
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Options that print and exit; they name no experiment.
HELP_OPTIONS = ("-h", "--help", "--print_config")


class RunNameError(ValueError):
    """A config file that cannot be read, or an option that cannot be parsed."""


def run_name(args: list[str] | tuple[str, ...], default_config: str | Path = DEFAULT_CONFIG) -> str:
    """The run directory's name for a command's options (`--run_name` if given)."""
    options = _options(args)
    given_names = [value for key, value in options if key == "run_name"]
    if given_names and given_names[-1]:
        return str(given_names[-1])
    config_files = [value for key, value in options if key == "config"]
    label = Path(str(config_files[-1])).stem if config_files else Path(default_config).stem
    return name_from(label, experiment(args, default_config))


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
    for key in LEFT_OUT_OF_NAME:
        _remove(merged, key.split("."))
    return merged


def name_from(label: str, experiment: dict[str, Any]) -> str:
    """A readable, deterministic name: the config's label and a hash of the experiment."""
    canonical = json.dumps(experiment, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    label = "".join(c if c.isalnum() or c in "-_." else "-" for c in label) or "run"
    return f"{label}-{digest}"


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


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # jsonargparse takes an unparsable value as a string too


def _read_config(given: str) -> dict[str, Any]:
    """A config file's mapping; a `--config` value that is not a file is read as inline YAML."""
    path = Path(given)
    if path.suffix in (".yaml", ".yml") and not path.is_file():
        raise RunNameError(f"config file {given} does not exist")
    try:
        text = path.read_text() if path.is_file() else given
        loaded = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as error:
        raise RunNameError(f"cannot read config {given}: {error}") from None
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
