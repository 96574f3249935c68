"""``--config FILE.yaml``: the trainer's flags as YAML keys (``lr_warmup_fraction`` or
``lr-warmup-fraction``), read into parser defaults so that flags on the command line override them.

Each value is converted to its flag's type (YAML reads 3e-5 as a string) and checked against the
flag's choices; a key that is not a flag is an error naming the file, the line and the key.
"""

from __future__ import annotations

import argparse

import yaml


class ConfigFileError(ValueError):
    """A mistake in the ``--config`` file (``arguments`` reports it as a ConfigError)."""


def _yaml_entries(path: str) -> list[tuple[str, object, int]]:
    """(key, value, line) for each top-level entry of a YAML mapping."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        root = yaml.compose(text)
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigFileError(f"{path}: not valid YAML: {err}") from None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode) or not isinstance(values, dict):
        raise ConfigFileError(f"{path}: expected a mapping of argument names to values")
    return [(str(key.value), values[key.value] if key.value in values else None, key.start_mark.line + 1)
            for key, _ in root.value]


def _convert(action: argparse.Action, value, where: str):
    """A YAML value as the flag's type (YAML reads 3e-5 as a string, so convert explicitly)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where}: expected true or false, got {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if value is None:
        return None
    if action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else str(value).split()
        return [_convert_scalar(action, item, where) for item in items]
    return _convert_scalar(action, value, where)


def _convert_scalar(action: argparse.Action, value, where: str):
    if isinstance(value, (dict, list)):
        raise ConfigFileError(f"{where}: expected a single value, got {value!r}")
    if isinstance(value, bool) and action.type in (int, float):
        raise ConfigFileError(f"{where}: expected a number, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError):
            raise ConfigFileError(f"{where}: {value!r} is not a valid {action.type.__name__}") from None
    else:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigFileError(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def config_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    """Parser defaults taken from a YAML file, with every key checked against the flags."""
    by_dest: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                by_dest[option[2:].replace("-", "_")] = action
    defaults = {}
    for key, value, line in _yaml_entries(path):
        where = f"{path}:{line}: key {key!r}"
        action = by_dest.get(key.replace("-", "_"))
        if action is None or key.replace("-", "_") == "config":
            raise ConfigFileError(f"{path}:{line}: unknown key {key!r} (not a trainer argument)")
        defaults[action.dest] = _convert(action, value, where)
    return defaults
