"""Options from a TOML file (``pohmelfs --config FILE``, or ``$POHMELFS_CONFIG``): a
table per command, ``[serve]`` and ``[mount]``, whose keys are the command's long
options (``max_connections = 64``, ``secret_file = "..."``; ``-`` or ``_`` alike) and
its arguments (``export``, ``servers``, ``mountpoint``); ``[mount] options`` is a
table of mount options (``allow_other = true``, ``timeout = 5``). What the command
line gives overrides the file. An unknown table or key, or a value of the wrong
kind, is an error that names the key and the file.

    [serve]
    export = "/srv/pohmelfs"
    listen = "0.0.0.0:7400"
    secret_file = "/etc/pohmelfs/secret"

    [mount]
    servers = ["h1:7400", "h2:7400/prio=1"]
    mountpoint = "/mnt/pohmelfs"
    options = { allow_other = true, secret_file = "/etc/pohmelfs/secret" }
"""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

COMMANDS = ("serve", "mount")
# What an argument is called in the file, by command.
ARGUMENTS = {"serve": {"export": "dir"}, "mount": {"servers": "servers",
                                                   "mountpoint": "mountpoint"}}  # fmt: skip


class ConfigError(ValueError):
    pass


def load(path: str) -> dict[str, Any]:
    """The file's tables (ConfigError naming the file if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not TOML: {e}") from None
    unknown = sorted(set(data) - set(COMMANDS))
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}] (tables: "
                          f"{', '.join(f'[{c}]' for c in COMMANDS)})")  # fmt: skip
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} must be a table ([{name}])")
    return data


def defaults_for(command: str, parser: argparse.ArgumentParser, table: dict[str, Any],
                 path: str) -> dict[str, Any]:  # fmt: skip
    """The parser defaults ``table`` (the file's ``[command]``) sets: each value checked
    against the option it names."""
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    out: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{path}: [{command}] {key}"
        name = key.replace("-", "_")
        if command == "mount" and name == "options":
            out["o"] = [_mount_options(value, where)]
            continue
        dest = ARGUMENTS.get(command, {}).get(name, name)
        action = actions.get(dest)
        if action is None or (not action.option_strings and name not in
                              ARGUMENTS.get(command, {})) or dest in ("o", "func"):  # fmt: skip
            raise ConfigError(f"{path}: unknown key {key!r} in [{command}]")
        out[dest] = _value(action, value, where)
    return out


def _value(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and value:
        value = ",".join(value)  # (a server set, as a list)
    kind = action.type if callable(action.type) else str
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not isinstance(value, int)):  # fmt: skip
            raise ConfigError(f"{where}: must be {'an integer' if kind is int else 'a number'}"
                              f", got {value!r}")  # fmt: skip
        value = kind(value)
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string, got {value!r}")
    elif kind is not str:
        try:
            value = kind(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, action.choices))}, "
                          f"got {value!r}")  # fmt: skip
    return value


def _mount_options(value: Any, where: str) -> str:
    """A table of mount options as ``-o`` gives them (``a,b=c``)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table (options = {{ allow_other = true }})")
    words = []
    for key, v in value.items():
        if v is True:
            words.append(key)
        elif v is False:
            continue
        elif isinstance(v, int | float | str) and "," not in str(v):
            words.append(f"{key}={v}")
        else:
            raise ConfigError(f"{where}.{key}: must be true, a number or a string without "
                              f"commas, got {v!r}")  # fmt: skip
    from .fuse.mount import MountConfig

    try:
        MountConfig.parse("localhost:1", "/", [",".join(words)])  # (the options alone)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return ",".join(words)
