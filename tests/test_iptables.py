"""The redirect and cleanup scripts against real iptables, each test in a throwaway network namespace.

A stand-in `consul` (tests/fixtures/consul) installs the nat rules the way `consul connect
redirect-traffic` does, including its failure on chains that already exist.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.userdata import SCRIPTS
from tests.conftest import need, tool

FIXTURES = Path(__file__).parent / "fixtures"
REDIRECT = SCRIPTS / "consul-redirect-traffic.sh"
CLEANUP = SCRIPTS / "consul-cleanup-traffic.sh"
CONSUL_CHAINS = {
    "CONSUL_PROXY_INBOUND",
    "CONSUL_PROXY_IN_REDIRECT",
    "CONSUL_PROXY_OUTPUT",
    "CONSUL_PROXY_REDIRECT",
    "CONSUL_DNS_REDIRECT",
}
# What a container runtime keeps in the nat table; the cleanup must leave every line of it.
DOCKER_RULES = [
    ["-N", "DOCKER"],
    ["-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
    ["-A", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
    ["-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"],
    ["-A", "DOCKER", "-i", "docker0", "-j", "RETURN"],
]


class Netns:
    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.log = tmp / "consul-args.log"
        self.failures = tmp / "failures"

    def run(
        self, *cmd: str | Path, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            "PATH": f"{FIXTURES}:{os.environ['PATH']}",  # the stand-in consul comes first
            "CONSUL_CLEANUP_TRAFFIC": str(CLEANUP),
            "PROXY_USER": "nobody",
            "AGENT_USER": "root",
            "FAKE_CONSUL_LOG": str(self.log),
            "FAKE_CONSUL_FAILURES": str(self.failures),
            "REDIRECT_RETRY_SECONDS": "0",
            **(env or {}),
        }
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *map(str, cmd)], env=full_env, capture_output=True, text=True, timeout=60
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def nat(self) -> list[str]:
        return self.run("iptables", "-t", "nat", "-S").stdout.splitlines()

    def add_docker_rules(self) -> None:
        for rule in DOCKER_RULES:
            self.run("iptables", "-t", "nat", *rule)


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Netns]:
    tool("ip")
    tool("iptables")
    need(os.geteuid() == 0, "network namespaces need root")
    name = f"ctv-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    need(made.returncode == 0, f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield Netns(name, tmp_path)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def consul_lines(rules: list[str]) -> list[str]:
    return [r for r in rules if "CONSUL_" in r]


def test_cleanup_of_nothing_is_a_no_op(netns: Netns) -> None:
    netns.add_docker_rules()
    before = netns.nat()
    netns.run(CLEANUP)
    netns.run(CLEANUP)
    assert netns.nat() == before


def test_redirect_installs_consuls_rules_with_the_safe_exclusions(netns: Netns) -> None:
    netns.run(
        REDIRECT,
        "web",
        env={
            "REDIRECT_EXCLUDE_INBOUND_PORTS": "9100 9200",
            "REDIRECT_EXCLUDE_OUTBOUND_PORTS": "5432",
            "REDIRECT_EXCLUDE_OUTBOUND_CIDRS": "169.254.169.254/32 10.0.1.10/32",
            "REDIRECT_EXCLUDE_UIDS": "1001",
        },
    )
    args = netns.log.read_text().split()
    nobody = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True, check=True).stdout.strip()
    assert args[:4] == [
        "-proxy-id=web-sidecar-proxy",
        f"-proxy-uid={nobody}",
        "-exclude-uid=0",
        "-exclude-inbound-port=22",
    ]
    for flag in [
        "-exclude-inbound-port=9100",
        "-exclude-inbound-port=9200",
        "-exclude-outbound-port=5432",
        "-exclude-outbound-cidr=169.254.169.254/32",
        "-exclude-outbound-cidr=10.0.1.10/32",
        "-exclude-uid=1001",
    ]:
        assert flag in args
    rules = netns.nat()
    assert "-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND" in rules
    assert "-A OUTPUT -p tcp -j CONSUL_PROXY_OUTPUT" in rules
    assert "-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 22 -j RETURN" in rules  # SSH survives
    assert "-A CONSUL_PROXY_OUTPUT -d 169.254.169.254/32 -j RETURN" in rules


def test_cleanup_removes_only_consuls_rules_and_is_idempotent(netns: Netns) -> None:
    netns.add_docker_rules()
    before = netns.nat()
    netns.run(REDIRECT, "web")
    assert consul_lines(netns.nat())
    netns.run(CLEANUP)
    assert netns.nat() == before  # Docker's chain, jumps and masquerade untouched, in order
    netns.run(CLEANUP)
    assert netns.nat() == before


def test_redirect_after_a_crash_succeeds_without_stacking_rules(netns: Netns) -> None:
    netns.add_docker_rules()
    netns.run(REDIRECT, "web")
    first = netns.nat()
    # A crash: Envoy died without ExecStopPost, the rules are still there. Consul alone would fail
    # on `iptables -N`; the script cleans up first.
    bare = netns.run("consul", "connect", "redirect-traffic", "-proxy-uid=0", check=False)
    assert bare.returncode != 0
    netns.run(REDIRECT, "web")
    netns.run(REDIRECT, "web")
    assert netns.nat() == first
    assert sorted(first) == sorted(set(first))  # no duplicated rule


def test_redirect_retries_until_the_agent_knows_the_sidecar(netns: Netns) -> None:
    netns.failures.write_text("2")  # two partial failures, each leaving chains behind
    result = netns.run(REDIRECT, "web")
    assert len(netns.log.read_text().splitlines()) == 3
    assert "now goes through its Envoy sidecar" in result.stdout
    rules = netns.nat()
    assert sorted(rules) == sorted(set(rules))
    assert {r.split()[1] for r in rules if r.startswith("-N")} == CONSUL_CHAINS - {"CONSUL_DNS_REDIRECT"}


def test_redirect_gives_up_cleanly(netns: Netns) -> None:
    netns.add_docker_rules()
    before = netns.nat()
    netns.failures.write_text("99")
    result = netns.run(REDIRECT, "web", env={"REDIRECT_ATTEMPTS": "3"}, check=False)
    assert result.returncode != 0
    assert "no redirect for web after 3 attempts" in result.stderr
    assert netns.nat() == before  # the partial chains of the failed attempts are gone


def test_cleanup_removes_the_dns_redirect_too(netns: Netns) -> None:
    netns.add_docker_rules()
    before = netns.nat()
    netns.run("consul", "connect", "redirect-traffic", "-proxy-uid=0", "-consul-dns-ip=10.0.0.2")
    assert "-A OUTPUT -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT" in netns.nat()
    netns.run(CLEANUP)
    assert netns.nat() == before


def test_cleanup_removes_the_nftables_table_of_newer_consul(netns: Netns) -> None:
    nft = tool("nft")
    netns.run(nft, "add", "table", "inet", "consul_tproxy")
    netns.run(nft, "add", "table", "inet", "other_table")
    netns.run(CLEANUP)
    tables = netns.run(nft, "list", "tables").stdout
    assert "consul_tproxy" not in tables
    assert "inet other_table" in tables
