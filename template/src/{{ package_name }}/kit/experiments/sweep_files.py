"""Reading a sweep file: the one place where a path becomes a sweep, or one line saying why it cannot.

Managed by the copier-lightning template. `sweep`, `sweep-status` and `submit --sweep` read their
file through `read_sweep_file`, so a missing file, a file that is not YAML, and settings that
declare no trials are refused alike (exit 2, one line naming the file and, where it can, the line)
before a trial trains, a status is drawn or a job array is submitted. The file's two forms: a grid
or random sweep (lists of values) and an Optuna search (ranges and choices, checked against
Optuna's own distributions; the study itself runs in kit/experiments/optuna_search.py).
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..runs.identity import not_valid_yaml, sweep_name

STRATEGIES = ("grid", "random", "optuna")
SPEC_KEYS = {"name", "strategy", "trials", "sampler", "pruner", "seed", "options", "parameters"}
# An Optuna search's (kit/experiments/optuna_search.py):
FLOAT_OR_INT_KEYS = {"low", "high", "log", "step"}
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "hyperband")
RANGE_FORM, CHOICES_FORM = "{low: L, high: H}", "{choices: [...]}"


class SweepFileError(ValueError):
    """A sweep file that cannot define a sweep; the message names the line where it can."""


@dataclass(frozen=True)
class SweepFile:
    path: Path
    text: str
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        """The name its trials, records and job scripts go by."""
        return sweep_name(self.spec, self.path)

    @property
    def strategy(self) -> str:
        return self.spec.get("strategy", "grid")

    @property
    def size(self) -> int:
        """How many trials it asks for (a job array's tasks)."""
        return self.spec["trials"] if self.strategy == "optuna" else len(sweep_trials(self.spec))


def read_sweep_file(path: Path) -> SweepFile:
    """The sweep `path` declares, checked; SweepFileError (its message names `path`) where it declares none."""
    if not path.is_file():
        raise SweepFileError(f"no sweep file {path}")
    text = path.read_text()
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SweepFileError(not_valid_yaml(str(path), error)) from None
    if not isinstance(spec, dict):
        raise SweepFileError(f"{path}: a sweep file maps `strategy`, `options` and `parameters` to their values")
    try:
        _check(spec, text)
    except SweepFileError as bad:
        raise SweepFileError(f"{path}: {bad}") from None
    return SweepFile(path, text, spec)


def sweep_trials(spec: dict[str, Any], text: str = "") -> list[dict[str, Any]]:
    """The trials a grid or random sweep declares: every combination (grid) or `trials` random draws.
    `text`, the file's, lets a refusal name its line."""
    parameters = spec.get("parameters")
    if (
        not isinstance(parameters, dict)
        or not parameters
        or not all(isinstance(v, list) and v for v in parameters.values())
    ):
        raise SweepFileError(
            f"{line_prefix(text, 'parameters')}a sweep's `parameters` maps each config option to a non-empty "
            "list of values"
        )
    combinations = [dict(zip(parameters, values, strict=True)) for values in itertools.product(*parameters.values())]
    strategy = spec.get("strategy", "grid")
    if strategy == "grid":
        return combinations
    if strategy == "random":
        count = spec.get("trials", 10)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SweepFileError(f"{line_prefix(text, 'trials')}`trials` must be a whole number of at least 1")
        return random.Random(spec.get("seed", 0)).sample(combinations, min(count, len(combinations)))
    raise SweepFileError(
        f"{line_prefix(text, 'strategy')}unknown sweep strategy {strategy!r}: use {', '.join(STRATEGIES)}"
    )


def search_distributions(spec: dict[str, Any], text: str = "") -> dict[str, Any]:
    """Optuna distributions for the file's `parameters`; refuses what would not parse."""
    import optuna.distributions as d

    if spec.get("sampler", "tpe") not in SAMPLERS:
        raise SweepFileError(
            f"{line_prefix(text, 'sampler')}sampler {spec['sampler']!r}: use one of {', '.join(SAMPLERS)}"
        )
    if spec.get("pruner", "none") not in PRUNERS:
        raise SweepFileError(f"{line_prefix(text, 'pruner')}pruner {spec['pruner']!r}: use one of {', '.join(PRUNERS)}")
    if not isinstance(spec.get("trials"), int) or spec["trials"] < 1:
        raise SweepFileError(f"{line_prefix(text, 'trials')}`trials` must be a whole number of at least 1")
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepFileError(f"{line_prefix(text, 'parameters')}`parameters` maps config options to ranges or choices")
    distributions = {}
    for option, form in parameters.items():
        where = line_prefix(text, option)
        if isinstance(form, dict) and "choices" in form:
            if set(form) != {"choices"} or not isinstance(form["choices"], list) or not form["choices"]:
                raise SweepFileError(f"{where}{option}: `choices` takes a non-empty list and nothing beside it")
            distributions[option] = d.CategoricalDistribution([_as_choice(c) for c in form["choices"]])
        elif isinstance(form, dict) and {"low", "high"} <= set(form) <= FLOAT_OR_INT_KEYS:
            low, high = form["low"], form["high"]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise SweepFileError(f"{where}{option}: the range needs numbers low < high, got {low!r} and {high!r}")
            whole = all(isinstance(v, int) for v in (low, high, form.get("step", 1)))
            try:
                kind = d.IntDistribution if whole else d.FloatDistribution
                distributions[option] = kind(low, high, log=bool(form.get("log", False)), step=form.get("step"))
            except ValueError as bad:
                raise SweepFileError(f"{where}{option}: {bad}") from None
        else:
            raise SweepFileError(
                f"{where}{option}: write a range as {RANGE_FORM} (with log: true or step: S if wanted) "
                f"or a list of values as {CHOICES_FORM}; got {form!r}"
            )
    return distributions


def decoded_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as the sweep file wrote them (a list travels through Optuna as JSON text)."""
    return {key: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for key, v in params.items()}


def _as_choice(value: Any) -> Any:
    """Optuna's choices are plain values: a list (e.g. layer sizes) travels as its JSON text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def line_prefix(text: str, key: str) -> str:
    """'line N: ' for the first line of the sweep file that starts with `key:` (indented or not), else ''."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(f"{key}:"):
            return f"line {number}: "
    return ""


def _check(spec: dict[str, Any], text: str) -> None:
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SweepFileError(
            f"{line_prefix(text, unknown[0])}unknown option {unknown[0]!r}; a sweep file has {sorted(SPEC_KEYS)}"
        )
    options = spec.get("options", [])
    if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
        raise SweepFileError(
            f"{line_prefix(text, 'options')}`options` is a list of `fit` options, e.g. [--trainer.max_epochs=10]"
        )
    if spec.get("strategy") == "optuna":
        search_distributions(spec, text)
    else:
        sweep_trials(spec, text)
