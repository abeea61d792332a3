"""Shared test set-up: the project root on sys.path, and system tools that CI must have."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# .ci/run sets this: there, a missing validator is a failure, never a silent skip.
REQUIRE_TOOLS = os.environ.get("CONSUL_TPROXY_REQUIRE_TOOLS") == "1"


def need(condition: bool, why: str) -> None:
    """Skip on a developer machine that lacks a tool or privilege; fail in CI."""
    if condition:
        return
    if REQUIRE_TOOLS:
        pytest.fail(f"{why} (CONSUL_TPROXY_REQUIRE_TOOLS=1: required here)")
    pytest.skip(why)


def tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed")
    assert path is not None
    return path


# Unit settings newer than the systemd the tests may run with (Debian 12 has 252), with the version
# that brought each (systemd NEWS). The VMs run Ubuntu 24.04, systemd 255, which knows them all.
# systemd-analyze verify warns "Unknown key" for these on an older systemd and for nothing else;
# any other warning still fails. The target's own systemd version is the bound: a key newer than
# it is never excused.
TARGET_SYSTEMD = 255
# systemd.service(5): RestartMode=, RestartSteps=, RestartMaxDelaySec= "Added in version 254".
NEWER_UNIT_KEYS = {"RestartMode": 254, "RestartSteps": 254, "RestartMaxDelaySec": 254}


def installed_systemd() -> int:
    import re
    import subprocess

    out = subprocess.run([tool("systemctl"), "--version"], capture_output=True, text=True).stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def systemd_verify(root: Path, units: list[str]) -> list[str]:
    """`systemd-analyze verify --root=ROOT UNITS`: its complaints, less "Unknown key" for keys that the
    installed systemd is too old to know but the VMs' systemd (TARGET_SYSTEMD) has."""
    import re
    import subprocess

    result = subprocess.run(
        [tool("systemd-analyze"), "verify", f"--root={root}", *units], capture_output=True, text=True
    )
    installed = installed_systemd()
    lines = []
    for line in (result.stdout + result.stderr).splitlines():
        unknown = re.search(r"Unknown key '([A-Za-z]+)'", line)
        since = NEWER_UNIT_KEYS.get(unknown.group(1), 0) if unknown else 0
        if since and installed < since <= TARGET_SYSTEMD:
            continue
        if line.strip():
            lines.append(line)
    if result.returncode != 0 and not lines:
        lines.append(f"systemd-analyze verify exited {result.returncode}")
    return lines
