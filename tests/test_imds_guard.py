"""mesh-imds-guard against real iptables, in throwaway network namespaces, under both backends.

The namespace gets 169.254.169.254 on its loopback and a stand-in metadata service listening there;
processes run as other users (setpriv) dial it. Without the guard every user reaches it: that is the
hole (the instance role's credentials let anyone log in to Consul as the VM). With it, only root and
the allowed user do.
"""

from __future__ import annotations

import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.userdata import SCRIPTS
from tests.conftest import tool
from tests.test_iptables import BACKENDS, Netns, fresh_netns, require_netns

GUARD = SCRIPTS / "mesh-imds-guard.sh"
IMDS = "169.254.169.254"
# Users every Debian/Ubuntu system has: daemon stands for the consul user, nobody for the application.
ALLOWED, OTHER = "daemon", "nobody"


@pytest.fixture(params=BACKENDS)
def imds_netns(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Netns]:
    iptables = request.param
    require_netns(iptables)
    tool("setpriv")
    with fresh_netns(tmp_path, iptables) as ns:
        ns.run("ip", "link", "set", "lo", "up")
        ns.run("ip", "addr", "add", f"{IMDS}/32", "dev", "lo")
        server = subprocess.Popen(
            ns.argv("python3", "-m", "http.server", "--bind", IMDS, "80"),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not reaches(ns, "root"):
                assert time.monotonic() < deadline, "the stand-in metadata service did not start"
                time.sleep(0.1)
            yield ns
        finally:
            server.kill()
            server.wait()


def reaches(ns: Netns, user: str) -> bool:
    """Whether `user` gets an HTTP answer from the metadata address."""
    gid = pwd.getpwnam(user).pw_gid
    become = [] if user == "root" else ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups"]
    probe = [tool("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", f"http://{IMDS}/"]
    result = subprocess.run(ns.argv(*become, *probe), capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and result.stdout == "200"


def guard(ns: Netns, *users: str) -> subprocess.CompletedProcess[str]:
    return ns.run("bash", GUARD, *users)


def filter_rules(ns: Netns) -> list[str]:
    return ns.run(ns.iptables, "-t", "filter", "-S").stdout.splitlines()


def test_without_the_guard_every_user_reaches_the_metadata_service(imds_netns: Netns) -> None:
    """The hole the guard closes: an unprivileged user gets the instance role's credentials."""
    assert reaches(imds_netns, OTHER) and reaches(imds_netns, ALLOWED)


def test_the_guard_lets_only_root_and_the_agent_through(imds_netns: Netns) -> None:
    result = guard(imds_netns, ALLOWED)
    uid = subprocess.run(["id", "-u", ALLOWED], capture_output=True, text=True, check=True).stdout.strip()
    assert result.stdout.strip() == f"mesh-imds-guard: the metadata service answers root and UIDs {uid} only"
    assert reaches(imds_netns, "root") and reaches(imds_netns, ALLOWED)
    assert not reaches(imds_netns, OTHER)


def test_the_guard_is_idempotent_and_touches_nothing_else(imds_netns: Netns) -> None:
    imds_netns.run(imds_netns.iptables, "-A", "OUTPUT", "-d", "10.0.0.0/8", "-j", "ACCEPT")
    guard(imds_netns, ALLOWED)
    once = filter_rules(imds_netns)
    guard(imds_netns, ALLOWED)
    assert filter_rules(imds_netns) == once
    assert once.count("-A OUTPUT -d 10.0.0.0/8 -j ACCEPT") == 1
    assert sum(1 for rule in once if "MESH_IMDS_GUARD" in rule and rule.startswith("-A OUTPUT")) == 1
    # The jump comes first: an ACCEPT added earlier cannot let the metadata service through.
    assert next(r for r in once if r.startswith("-A OUTPUT")).endswith("-j MESH_IMDS_GUARD")
    assert not reaches(imds_netns, OTHER)


def test_a_new_allowed_user_list_replaces_the_old_one(imds_netns: Netns) -> None:
    guard(imds_netns, ALLOWED)
    guard(imds_netns, OTHER)
    assert reaches(imds_netns, OTHER) and not reaches(imds_netns, ALLOWED)


def test_an_unknown_user_is_refused_before_any_rule(imds_netns: Netns) -> None:
    before = filter_rules(imds_netns)
    result = imds_netns.run("bash", GUARD, "no-such-user-xyz", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "mesh-imds-guard: no such user: no-such-user-xyz"
    assert filter_rules(imds_netns) == before


def test_the_guard_passes_shellcheck() -> None:
    result = subprocess.run([tool("shellcheck"), "--severity=style", str(GUARD)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
