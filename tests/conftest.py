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


# The slow tests, by node-id prefix (a module, a class, or one test, all its parameters), from
# measured durations (`pytest --durations=40`, December 2026, 2 shared cores: the whole suite about
# 10 minutes, the rest about 2). Each
# is marked `slow` here, centrally: `pytest -m "not slow"` is the day-to-day subset (about a minute
# or two), `pytest` and CI (.ci/run) run everything. A new slow module or class belongs here.
SLOW = (
    # Whole modules: each runs the program, a simulation, a fuzzer or a process per test.
    "tests/test_benchmarks.py",
    "tests/test_boot_login.py",
    "tests/test_consumer.py",
    "tests/test_day_two.py",
    "tests/test_diff_cli.py",
    "tests/test_fuzz_config.py",
    "tests/test_imds_guard.py",
    "tests/test_iptables_concurrency.py",
    "tests/test_iptables_property.py",
    "tests/test_lifecycle.py",
    "tests/test_package.py",
    # Classes that run a whole stack in setUpClass, and single slow tests.
    "tests/test_acl.py::AclTable",
    "tests/test_component_package.py::test_every_valid_mesh_stacks_consul_login_is_accepted",
    "tests/test_consul_server.py::ConsulServerTest",
    "tests/test_gateway.py::GatewayStack",
    "tests/test_groups.py::AGroupOfThree",
    "tests/test_intentions.py::StackEntries",
    "tests/test_mesh_ready.py::Wiring",
    "tests/test_program.py::BlastRadius",
    "tests/test_program.py::NameLimits",
    "tests/test_program.py::NewServers",
    "tests/test_program.py::ProviderAfterTheGate",
    "tests/test_server_boot.py::test_access_denied_until_the_deadline_writes_nothing",
    "tests/test_server_boot.py::test_an_unreachable_endpoint_is_retried_until_the_deadline",
    "tests/test_server_boot.py::test_no_valid_token_by_the_deadline_writes_nothing",
)


def is_slow(nodeid: str) -> bool:
    """Whether a test's node id falls under one of SLOW's prefixes (a whole `::` part or `[`)."""
    return any(nodeid == prefix or nodeid.startswith((f"{prefix}::", f"{prefix}[")) for prefix in SLOW)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)
