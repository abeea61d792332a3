"""CI (.ci/run) installs every system tool the tests ask for: there CONSUL_TPROXY_REQUIRE_TOOLS=1
turns a missing one into a failure, on a fresh machine that has only what the apt list brings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SLOW, is_slow

ROOT = Path(__file__).resolve().parent.parent
# The Debian/Ubuntu package that ships each tool the tests look up with conftest.tool() (dpkg -S).
TOOL_PACKAGES = {
    "cloud-init": "cloud-init",
    "curl": "curl",
    "dot": "graphviz",
    "gpg": "gnupg",  # gnupg depends on gpg, which ships /usr/bin/gpg
    "gpgconf": "gnupg",  # through gpgconf, a dependency of gnupg
    "ip": "iproute2",
    "losetup": "mount",
    "nft": "nftables",
    "openssl": "openssl",
    "setpriv": "util-linux",
    "shellcheck": "shellcheck",
    "systemctl": "systemd",
    "systemd-analyze": "systemd",
}
# Priority "required" on Debian and Ubuntu: on every installed system, no apt line needed.
REQUIRED = {"mount"}


def apt_packages() -> set[str]:
    """The packages .ci/run's `apt-get install` names."""
    script = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"apt-get install ((?:[^\n]*\\\n)*[^\n]*)", script)
    assert match, "no apt-get install in .ci/run"
    words = match.group(1).replace("\\\n", " ").split()
    return {w for w in words if not w.startswith(("-", ">", "$"))}


def tools_the_tests_ask_for() -> set[str]:
    found: set[str] = set()
    for path in [*(ROOT / "tests").glob("*.py"), *(ROOT / "examples").rglob("*.py")]:
        found.update(re.findall(r"\btool\(\"([A-Za-z0-9_.-]+)\"\)", path.read_text()))
    return found


def test_ci_installs_every_tool_the_tests_ask_for() -> None:
    asked = tools_the_tests_ask_for()
    assert {"gpg", "dot", "curl", "shellcheck"} <= asked  # the scan finds them
    assert sorted(asked - TOOL_PACKAGES.keys()) == [], "a tool the tests use: add its package to TOOL_PACKAGES"
    missing = {TOOL_PACKAGES[t] for t in asked} - apt_packages() - REQUIRED
    assert sorted(missing) == [], "packages .ci/run's apt-get install lacks"


def test_ci_installs_gnupg_and_graphviz() -> None:
    assert {"gnupg", "graphviz"} <= apt_packages()


def collected(*args: str) -> list[str]:
    """The node ids pytest collects from the project's testpaths with `args`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS",)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def test_the_quick_subset_leaves_out_only_what_conftest_marks_slow(pytestconfig: pytest.Config) -> None:
    """`pytest -m "not slow"`: the marker is registered (--strict-markers would refuse it otherwise),
    the slow tests are exactly SLOW's, every entry of SLOW still names a test (a renamed class would
    otherwise turn fast unnoticed), and every module not listed whole keeps tests in the subset."""
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))
    fast, slow = collected("-m", "not slow"), collected("-m", "slow")
    assert fast and slow and not set(fast) & set(slow)
    assert all(is_slow(t) for t in slow) and not any(is_slow(t) for t in fast)
    for prefix in SLOW:
        assert any(t == prefix or t.startswith((f"{prefix}::", f"{prefix}[")) for t in slow), f"{prefix}: no such test"
    whole = {prefix for prefix in SLOW if "::" not in prefix}
    modules = {module(t) for t in fast + slow}
    assert sorted(modules - whole - {module(t) for t in fast}) == []
    assert len(fast) > len(slow)  # the subset is most of the tests: the slow ones are few and long
