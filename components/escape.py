"""Escapers, one per file format a value can land in on a VM. Every template filter is one of these.

Each either returns text that the target parser reads back as exactly the given value, or raises
`UnsafeValue` for a value the format cannot carry safely (a newline in a unit file setting, say).
The spec refuses such values first, with a message naming the key (components/spec.py); these are
the last line, so that a value that slipped past validation breaks the render, never the VM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

# Characters that end or split a line for some reader: systemd and YAML take \r, \v and \f as
# whitespace or breaks, and YAML and many editors treat NEL, LS and PS as line breaks too.
LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class UnsafeValue(ValueError):
    """A value that cannot be written safely into the given format."""


def _one_line(value: str, where: str) -> str:
    if not isinstance(value, str):
        raise UnsafeValue(f"{where}: {value!r} is not a string")
    if LINE_BREAKS.search(value):
        raise UnsafeValue(f"{where}: {value!r} contains a control character or line break")
    return value


# Escapes both HCL dialects read the same way: Consul parses its config files with HCL 1
# (hashicorp/hcl, strconv.Unquote: Go's escapes), the tests with an HCL 2 parser (native syntax
# spec: \n \r \t \" \\ \uNNNN \UNNNNNNNN). Anything else is written as a \u escape.
_HCL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _hcl_string(value: str) -> str:
    # HCL 2 expands ${...} and %{...} in quoted strings; HCL 1 keeps ${...} but stops unescaping
    # inside it. No escape means the same to both, so such values are refused.
    if "${" in value or "%{" in value:
        raise UnsafeValue(f"HCL: {value!r} contains a template sequence (${{ or %{{)")
    out = []
    for char in value:
        if char in _HCL_ESCAPES:
            out.append(_HCL_ESCAPES[char])
        elif " " <= char <= "~":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def hcl(value: Any) -> str:
    """An HCL literal: a quoted string, a number, a bool, or a list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _hcl_string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(hcl(v) for v in value) + "]"
    raise UnsafeValue(f"HCL: {value!r} is not a string, number, bool or list")


def yaml_scalar(value: Any) -> str:
    """A YAML flow scalar that reads back as the same string (or int or bool): never `on` -> True.

    A JSON string is a YAML double-quoted scalar with the same escapes (YAML 1.2, 7.3.1), and
    ensure_ascii keeps NEL, LS and PS out of the document.
    """
    if isinstance(value, bool | int | str):
        return json.dumps(value, ensure_ascii=True)
    raise UnsafeValue(f"YAML: {value!r} is not a string, number or bool")


def comment(value: str) -> str:
    """Text for a `#` comment line (YAML, HCL, unit files, env files): one line, no control characters."""
    return _one_line(value, "comment")


def systemd_exec(command: str) -> str:
    """A command line for ExecStart= (systemd.service(5), "Command lines").

    systemd expands `%` specifiers everywhere in a unit (`%%` is a literal percent) and joins a line
    ending in a backslash with the next one (systemd.syntax(7)), so a trailing backslash is refused;
    so is every control character and line break, which would start a new setting.
    """
    _one_line(command, "ExecStart")
    if command.endswith("\\"):
        raise UnsafeValue(f"ExecStart: {command!r} ends in a backslash, which continues the line")
    return command.replace("%", "%%")


def systemd_value(value: str) -> str:
    """A plain value of a unit file setting such as Description= or Environment=VAR=value."""
    _one_line(value, "unit setting")
    if value.endswith("\\"):
        raise UnsafeValue(f"unit setting: {value!r} ends in a backslash, which continues the line")
    return value.replace("%", "%%")


def systemd_quoted(value: str) -> str:
    """A double-quoted word for a unit file (e.g. Environment="VAR=a b"): quotes and backslashes escaped."""
    systemd_value(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


ENV_FILE_SAFE = re.compile(r"[A-Za-z0-9_./:,+@=-]*")


def env_file_value(value: str | Sequence[Any]) -> str:
    """A value for a systemd EnvironmentFile= line (VAR=value), also read by the scripts.

    The value is double-quoted; a list becomes one space-separated value. Only characters with no meaning to the
    EnvironmentFile parser are let through (quotes, backslashes and `$` have one); nothing this
    project writes there needs more.
    """
    text = value if isinstance(value, str) else " ".join(str(v) for v in value)
    _one_line(text, "environment file")
    if not ENV_FILE_SAFE.fullmatch(text.replace(" ", "")):
        raise UnsafeValue(f"environment file: {text!r} has characters the EnvironmentFile parser interprets")
    return f'"{text}"'
