"""``--config FILE``: a model run's command-line options in a TOML (or YAML) file.

The file is a flat table whose keys are the run's long option names, with dashes or
underscores (``lr-final-factor`` or ``lr_final_factor``), and an optional ``model`` that must
name the command's model::

    model = "normal-gamma"
    guide = "full-rank"
    steps = 3000
    lr = 0.02
    quick = false

Each value goes through the option's own command-line converter and choices, so the file
accepts exactly what the command line does; a switch (``--quick``, ``--local-steps``) takes a
boolean. Flags on the command line override the file. An unknown key, a value the option
refuses, or a file that cannot be read or parsed is one :class:`~zoo.errors.ZooError` line
naming the file and the key. YAML (``.yaml``, ``.yml``) needs PyYAML; TOML is read with
Python's :mod:`tomllib`.

:func:`to_toml` renders the file's content as TOML again: the command line records it in the
run directory as ``run_config.toml``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo.errors import ZooError, first_line
from zoo.options import boolean

#: the record of a run's --config file in its run directory
RUN_CONFIG = "run_config.toml"

#: options a config file cannot hold (they are about the command, not the run)
NOT_IN_FILES = frozenset({"help", "config", "resume"})

_SCALARS = (str, int, float, bool)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's table: keys (``--`` stripped, underscores as dashes) to single values.

    TOML unless the name ends in ``.yaml`` or ``.yml``. A one-line :class:`ZooError` for an
    unreadable or malformed file, a key given twice, or a value that is not a single string,
    number or boolean.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ZooError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        content = _load_yaml(path, raw)
    else:
        try:
            content = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ZooError(f"{path} is not valid TOML: {first_line(exc, 120)}") from None
    if not isinstance(content, Mapping):
        raise ZooError(f"{path} must hold a table of options, not {type(content).__name__}")
    entries: dict[str, Any] = {}
    for key, value in content.items():
        name = option_key(str(key))
        if name in entries:
            raise ZooError(f"{path}: option {name!r} is given twice")
        if not isinstance(value, _SCALARS):
            kind = "no value" if value is None else f"a {_kind(value)}"
            raise ZooError(f"{path}: {name}: takes a single string, number or boolean, not {kind}")
        entries[name] = value
    return entries


def _load_yaml(path: Path, raw: bytes) -> Any:
    try:
        import yaml
    except ImportError:
        raise ZooError(
            f"reading {path} needs PyYAML (pip install pyyaml); or write it as TOML"
        ) from None
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ZooError(f"{path} is not valid YAML: {first_line(exc, 120)}") from None


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def option_key(key: str) -> str:
    """A file's key as its long option name: ``--lr_final_factor`` -> ``lr-final-factor``."""
    return key.strip().removeprefix("--").replace("_", "-")


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's long options a file may set, by name (``--no-X`` forms left out)."""
    table: dict[str, argparse.Action] = {}
    for action in parser._actions:
        negative = isinstance(action, argparse.BooleanOptionalAction)
        for flag in action.option_strings:
            if not flag.startswith("--") or (negative and flag.startswith("--no-")):
                continue
            name = flag[2:]
            if name not in NOT_IN_FILES and action.dest not in NOT_IN_FILES:
                table[name] = action
    return table


def _text(value: Any) -> str:
    """A file's value as the command line would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parser_defaults(
    parser: argparse.ArgumentParser,
    entries: Mapping[str, Any],
    *,
    source: str | Path,
    command: str,
) -> dict[str, Any]:
    """The file's ``entries`` as values of ``parser``'s destinations, each converted and
    checked as the command line converts and checks it (set them as the parser's defaults, so
    flags given on the command line override them). A ``model`` entry must equal ``command``.
    A one-line :class:`ZooError` names ``source`` and the key of the first bad entry."""
    actions = option_actions(parser)
    values: dict[str, Any] = {}
    for name, value in entries.items():
        if name == "model":
            if value != command:
                raise ZooError(
                    f"{source}: model {value!r} does not match the command's model {command!r}"
                )
            continue
        action = actions.get(name)
        if action is None:
            close = difflib.get_close_matches(name, [*actions, "model"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if name in NOT_IN_FILES:
                hint = f" (--{name} belongs on the command line)"
            raise ZooError(f"{source}: unknown option {name!r} for {command}{hint}")
        values[action.dest] = _convert(action, name, value, source)
    return values


def _convert(action: argparse.Action, name: str, value: Any, source: str | Path) -> Any:
    if action.nargs == 0:  # a switch: --quick, --local-steps / --no-local-steps
        try:
            return boolean(value)
        except ValueError as exc:
            raise ZooError(f"{source}: {name}: {exc}") from None
    text = _text(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError, OverflowError, ZooError) as exc:
        raise ZooError(f"{source}: {name}: {first_line(exc, 160)}") from None
    if action.choices is not None and converted not in action.choices:
        allowed = ", ".join(map(str, action.choices))
        raise ZooError(f"{source}: {name}: {value!r} is not one of {allowed}")
    return converted


# -- the record ---------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's, with non-ASCII kept as it is; DEL must be escaped in TOML
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # inf and -inf are TOML's too
    return _toml_string(str(value))


def to_toml(entries: Mapping[str, Any], *, comment: str | None = None) -> str:
    """A flat table of single values as TOML text (``tomllib`` reads it back the same)."""
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    for key, value in entries.items():
        name = key if _BARE_KEY.match(key) else _toml_string(key)
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
