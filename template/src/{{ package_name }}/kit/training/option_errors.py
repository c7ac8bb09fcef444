"""An option or config value the parser refuses, said in one line. Managed by the copier-lightning template.

jsonargparse reports `--model.init_args.dropout=lots` in eleven lines: the Union of the model's
class and None, each one's error, the value's type and a NestedArg, with the key and what it
expected in the middle. `one_line` reads that back into one line:

    model.init_args.dropout: expected float, got 'lots'
    model.init_args.nosuch: DigitsClassifier takes no such option
    model.init_args.size: SizedClassifier needs a value (it has no default)
    model: cannot import digits_mlp.model.DigitsClassifer (module 'digits_mlp.model' has no attribute ...)
    trainer.callbacks: expected a subclass of Callback, got 'digits_mlp.model.DigitsClassifier'

Hand-written because jsonargparse's ArgumentError carries only its text; a message that does not
have one of these shapes (an unknown option, say, already one line) is returned as it is.

A config file that is not valid YAML it reports without the file's name ("in <unicode string>");
`invalid_yaml_config` names it, with the line and column.
"""

from __future__ import annotations

import re

import yaml

from ..runs.identity import config_text, not_valid_yaml

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)':")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_REQUIRED = re.compile(r"the following arguments are required: (.+)$")
_NOT_IMPORTED = re.compile(r"(module '[^']+' has no attribute '[^']+'|No module named '[^']+')")
_NOT_SUBCLASS = re.compile(r"Import path does not correspond to a subclass of (\w+)")
_EXPECTED = re.compile(r"Expected a (.+?)(?:\. Got value: (.*))?$")
_GIVEN = re.compile(r"^Given value: (.*)$")


def one_line(message: str) -> str:
    """One line for jsonargparse's message about a refused value or option, else `message` unchanged."""
    lines = [line.strip(" -") for line in message.splitlines()]
    keys = [match[1] for line in lines if (match := _KEY.search(line))]
    if not keys:
        return message
    given = next((match[1] for line in lines if (match := _GIVEN.match(line))), None)
    # The value named a class, or an option inside one: the first of the Union's branches says what
    # is wrong with it on the next line (the other branches repeat it or say less).
    first = next((index for index, line in enumerate(lines) if _CLASS.search(line)), None)
    if first is not None and first + 1 < len(lines):
        owner, problem = _CLASS.search(lines[first])[1], lines[first + 1]
        short, at = owner.rsplit(".", 1)[-1], _path(lines[:first])  # the key that names the class
        where = f"{at}.init_args"
        if unknown := _NOT_ACCEPTED.search(problem):
            return f"{where}.{unknown[1]}: {short} takes no such option"
        if required := _REQUIRED.search(problem):
            names = [name.strip() for name in required[1].split(",")]
            if len(names) == 1:
                return f"{where}.{names[0]}: {short} needs a value (it has no default)"
            return f"{where}: {short} needs {', '.join(names)} (they have no default)"
        if missing := _NOT_IMPORTED.search(problem):
            return f"{at}: cannot import {owner} ({missing[1]})"
    if (wrong := _NOT_SUBCLASS.search(message)) and given is not None:
        return f"{keys[0]}: expected a subclass of {wrong[1]}, got {given!r}"
    expected = [(index, match[1], match[2]) for index, line in enumerate(lines) if (match := _EXPECTED.search(line))]
    # An option inside a class's options says what it got on its own line: those lines are the ones
    # that matter (the others are the Union around the class: "or None").
    inner = [(index, kind, got) for index, kind, got in expected if got is not None]
    if inner:
        first_index, _, value = inner[0]
        key, kinds = _path(lines[: first_index + 1]), [kind for _, kind, _ in inner]
    elif expected and given is not None:
        key, kinds, value = keys[0], [kind for _, kind, _ in expected], given
    else:
        return message
    named = [name for name in dict.fromkeys(map(_kind_name, kinds)) if name != "None"]
    return f"{key}: expected {' or '.join(named)}, got {value!r}" if named else message


def _path(lines: list[str]) -> str:
    """The keys these lines go down through, `init_args` where a class's options begin:
    `model.init_args.backbone.init_args.depth`."""
    path: list[str] = []
    for line in lines:
        if key := _KEY.search(line):
            path.append(key[1])
        elif _CLASS.search(line):
            path.append("init_args")
    return ".".join(path)


def _kind_name(kind: str) -> str:
    """`<class 'int'>` -> int; `typing.Literal['min', 'max']` -> one of 'min', 'max'."""
    if match := re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", kind):
        return "None" if match[1] == "NoneType" else match[1]
    if match := re.fullmatch(r"typing\.Literal\[(.*)\]", kind):
        return f"one of {match[1]}"
    if kind.startswith(("dot import path string", "path but")):
        return "a class path (package.module.Class)"
    return kind


def invalid_yaml_config(configs: list[str]) -> str | None:
    """`FILE line L, column C: not valid YAML (PROBLEM)` for the first of `configs` (files, or YAML
    given inline as `--config '{...}'`) that is not valid YAML, else None."""
    for config in configs:
        try:
            yaml.safe_load(config_text(config))
        except OSError:
            continue  # unreadable: the parser's own message says it
        except yaml.YAMLError as error:
            return not_valid_yaml(config, error)
    return None
