"""CI (.ci/run) installs every system tool the tests ask for: there CONSUL_TPROXY_REQUIRE_TOOLS=1
turns a missing one into a failure, on a fresh machine that has only what the apt list brings."""

from __future__ import annotations

import re
from pathlib import Path

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
