"""Checkers for raw config values: each returns the value in its checked form, or records a
problem naming the key and the value and returns None (or an empty collection).

The mesh's own config (components/spec.py) is built from these, and so are other projects' keys
that follow the same rules (examples/consumer, components/package.py). Raw values arrive as
`pulumi config` stores them: strings, with structured values as JSON text.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

# adminCidrs entry that stands for the public IPv4 address of the machine running `pulumi`.
DEPLOYER = "deployer"


class Problems:
    """Collects problems so one run reports all of them. Public, with the checkers below, for
    projects that validate their own keys by the mesh's rules (examples/consumer, package.py)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, value: Any, why: str) -> None:
        # A missing value has nothing to show: "port is missing", not "port: null is missing".
        shown = "" if value is None and why.startswith("is missing") else f" {json.dumps(value, default=str)}"
        self.items.append(f"{key}:{shown} {why}")


def decode(raw: Any, key: str, problems: Problems) -> Any:
    """Structured config arrives as JSON text from `pulumi config`; decode it once, here."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if not text or text[0] not in "[{":
        return raw
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        problems.add(key, raw, f"is not valid JSON ({err.msg})")
        return None


def string(
    raw: Any, key: str, problems: Problems, pattern: re.Pattern[str] | None = None, what: str = ""
) -> str | None:
    if not isinstance(raw, str):
        problems.add(key, raw, "must be a string")
        return None
    if pattern is not None and not pattern.fullmatch(raw):
        problems.add(key, raw, f"is not {what}")
        return None
    return raw


def boolean(raw: Any, key: str, problems: Problems) -> bool | None:
    """true/false (a bool, or its text as `pulumi config` stores it); else a problem and None."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    problems.add(key, raw, "must be true or false")
    return None


def integer(raw: Any, key: str, problems: Problems, low: int, high: int, what: str) -> int | None:
    # bool is an int in Python, and JSON numbers may arrive as floats (Pulumi's engine does that).
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        problems.add(key, raw, f"must be an integer ({what})")
        return None
    if not low <= raw <= high:
        problems.add(key, raw, f"is out of range: {what} is {low}-{high}")
        return None
    return raw


def config_integer(raw: Any, key: str, problems: Problems, low: int, high: int, what: str) -> int | None:
    """A top-level integer key: `pulumi config set` stores it as text."""
    if isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
        raw = int(raw)
    return integer(raw, key, problems, low, high, what)


def json_list(raw: Any, key: str, problems: Problems) -> list[Any]:
    """A list (or its JSON text as `pulumi config` stores it); else a problem and []."""
    raw = decode(raw, key, problems)
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add(key, raw, "must be a list")
        return []
    return raw


def ports(raw: Any, key: str, problems: Problems) -> tuple[int, ...]:
    ports = (
        integer(p, f"{key}[{i}]", problems, 1, 65535, "a TCP port") for i, p in enumerate(json_list(raw, key, problems))
    )
    return tuple(sorted({p for p in ports if p is not None}))


def parse_cidr(raw: Any, key: str, problems: Problems, deployer: bool = False) -> str | None:
    """An IPv4 CIDR in canonical form (or "deployer" where allowed); else a problem and None."""
    if deployer and raw == DEPLOYER:
        return raw
    if not isinstance(raw, str):
        problems.add(key, raw, "must be a CIDR string such as 10.0.0.0/16")
        return None
    try:
        network = ipaddress.ip_network(raw, strict=True)
    except ValueError as err:
        problems.add(key, raw, f"is not a CIDR ({err})")
        return None
    if network.version != 4:
        # `consul connect redirect-traffic` and the security group rules this stack writes are IPv4.
        problems.add(key, raw, "is an IPv6 network: the mesh and its security groups are IPv4 only")
        return None
    return str(network)


def cidr_list(raw: Any, key: str, problems: Problems, deployer: bool = False) -> tuple[str, ...]:
    """A list of IPv4 CIDRs, sorted and without repeats; each bad entry is a problem naming its index."""
    cidrs = (parse_cidr(c, f"{key}[{i}]", problems, deployer) for i, c in enumerate(json_list(raw, key, problems)))
    return tuple(sorted({c for c in cidrs if c is not None}))
