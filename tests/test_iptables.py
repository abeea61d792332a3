"""The redirect and cleanup scripts against real iptables, each test in a throwaway network namespace.

A stand-in `consul` (tests/fixtures/consul) installs the nat rules the way `consul connect
redirect-traffic` does, including its failure on chains that already exist. The key tests run under
both iptables backends: Consul runs plain `iptables`, which is either, depending on the distribution.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from components.userdata import SCRIPTS
from tests.conftest import need, tool

FIXTURES = Path(__file__).parent / "fixtures"
REDIRECT = SCRIPTS / "consul-redirect-traffic.sh"
CLEANUP = SCRIPTS / "consul-cleanup-traffic.sh"
BACKENDS = ["iptables-legacy", "iptables-nft"]
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
SERF_LAN_RETURN = "-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport 8301 -j RETURN"


class Netns:
    def __init__(self, name: str, tmp: Path, iptables: str = "iptables") -> None:
        self.name = name
        self.tmp = tmp
        self.iptables = iptables
        self.log = tmp / "consul-args.log"
        self.failures = tmp / "failures"
        self.lock = tmp / "consul-redirect-traffic.lock"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {
            "PATH": f"{FIXTURES}:{os.environ['PATH']}",  # the stand-in consul comes first
            "CONSUL_CLEANUP_TRAFFIC": str(CLEANUP),
            "CONSUL_TRAFFIC_LOCK": str(self.lock),
            "IPTABLES": self.iptables,
            "PROXY_USER": "nobody",
            "AGENT_USER": "root",
            "FAKE_CONSUL_LOG": str(self.log),
            "FAKE_CONSUL_FAILURES": str(self.failures),
            "REDIRECT_RETRY_SECONDS": "0",
            **(extra or {}),
        }

    def argv(self, *cmd: str | Path) -> list[str]:
        return ["ip", "netns", "exec", self.name, *map(str, cmd)]

    def run(
        self, *cmd: str | Path, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(*cmd), env=self.env(env), capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def nat(self) -> list[str]:
        return self.run(self.iptables, "-t", "nat", "-S").stdout.splitlines()

    def rule(self, *args: str) -> None:
        self.run(self.iptables, "-t", "nat", *args)

    def add_docker_rules(self) -> None:
        for rule in DOCKER_RULES:
            self.rule(*rule)


def require_netns(iptables: str = "iptables") -> None:
    tool("ip")
    tool(iptables)
    need(os.geteuid() == 0, "network namespaces need root")


@contextmanager
def fresh_netns(tmp: Path, iptables: str = "iptables") -> Iterator[Netns]:
    name = f"ctv-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    need(made.returncode == 0, f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield Netns(name, tmp, iptables)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Netns]:
    """A namespace for plain `iptables`, or for the backend given by indirect parametrization."""
    iptables = getattr(request, "param", "iptables")
    require_netns(iptables)
    with fresh_netns(tmp_path, iptables) as ns:
        yield ns


both_backends = pytest.mark.parametrize("netns", BACKENDS, indirect=True)


def consul_lines(rules: list[str]) -> list[str]:
    return [r for r in rules if "CONSUL_" in r]


@both_backends
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
    assert args[:5] == [
        "-proxy-id=web-sidecar-proxy",
        f"-proxy-uid={nobody}",
        "-exclude-uid=0",
        "-exclude-inbound-port=22",
        "-exclude-inbound-port=8301",
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
    assert SERF_LAN_RETURN in rules  # and so does gossip
    assert "-A CONSUL_PROXY_OUTPUT -d 169.254.169.254/32 -j RETURN" in rules


@both_backends
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
    assert "last error: fake consul: failed to fetch proxy service" in result.stderr
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


def test_serf_lan_port_is_always_excluded_from_the_inbound_redirect(netns: Netns) -> None:
    """Memberlist push/pull and TCP fallback probes arrive on 8301: in Envoy they would be dropped."""
    netns.run(REDIRECT, "web", env={"REDIRECT_EXCLUDE_INBOUND_PORTS": ""})
    rules = netns.nat()
    inbound = [r for r in rules if r.startswith("-A CONSUL_PROXY_INBOUND ")]
    assert SERF_LAN_RETURN in inbound
    # Returned before the catch-all jump to the redirect, or the RETURN would never be reached.
    assert inbound.index(SERF_LAN_RETURN) < inbound.index("-A CONSUL_PROXY_INBOUND -p tcp -j CONSUL_PROXY_IN_REDIRECT")


# Comments as `iptables -S` prints them quoted (spaces, quotes, backslashes, a shell's specials), or
# bare (`-j`), naming Consul's chains: the cleanup must neither choke on them nor mistake them for jumps.
TRICKY_COMMENTS = [
    "jump to CONSUL_PROXY_OUTPUT here",
    'say "-j CONSUL_PROXY_INBOUND" \\ it\'s $HOME `id` -g CONSUL_DNS_REDIRECT',
    "-j",
    "CONSUL_PROXY_OUTPUT",
    "",
]


@both_backends
def test_cleanup_handles_comments_and_look_alike_chains(netns: Netns) -> None:
    netns.add_docker_rules()
    for chain in ["CONSUL_PROXY_OUTPUT2", "MY_CONSUL_PROXY_OUTPUT"]:
        netns.rule("-N", chain)
        netns.rule("-A", "OUTPUT", "-p", "tcp", "-j", chain)
        netns.rule("-A", chain, "-m", "comment", "--comment", "not -j CONSUL_PROXY_OUTPUT", "-j", "RETURN")
    for comment in TRICKY_COMMENTS:
        netns.rule("-A", "PREROUTING", "-p", "tcp", "-m", "comment", "--comment", comment, "-j", "RETURN")
        netns.rule("-I", "OUTPUT", "-m", "comment", "--comment", comment)  # no target at all
    before = netns.nat()

    netns.run(REDIRECT, "web")
    # Jumps into Consul's chains that carry comments, as another tool or an operator might add them.
    for comment in TRICKY_COMMENTS:
        netns.rule("-A", "OUTPUT", "-p", "udp", "-m", "comment", "--comment", comment, "-j", "CONSUL_PROXY_OUTPUT")
        netns.rule("-I", "PREROUTING", "-m", "comment", "--comment", comment, "-j", "CONSUL_PROXY_INBOUND")
    netns.run(REDIRECT, "web")  # its own cleanup copes with them too
    assert consul_lines(netns.nat())

    netns.run(CLEANUP)
    assert netns.nat() == before  # every foreign rule, in order, byte for byte
    netns.run(CLEANUP)
    assert netns.nat() == before


def test_the_final_error_shows_what_consul_said(netns: Netns) -> None:
    netns.failures.write_text("99")
    error = "Error setting up traffic redirection rules: iptables: Bad rule (does a matching rule exist?)"
    result = netns.run(REDIRECT, "web", env={"REDIRECT_ATTEMPTS": "2", "FAKE_CONSUL_ERROR": error}, check=False)
    assert result.returncode != 0
    final = result.stderr.splitlines()[-1]
    assert "no redirect for web after 2 attempts" in final
    assert final.endswith(f"last error: fake consul: {error}")


def test_the_final_error_shows_an_argument_iptables_rejected(netns: Netns) -> None:
    before = netns.nat()
    result = netns.run(
        REDIRECT,
        "web",
        env={"REDIRECT_ATTEMPTS": "2", "REDIRECT_EXCLUDE_OUTBOUND_CIDRS": "10.0.0.0/99"},
        check=False,
    )
    assert result.returncode != 0
    final = result.stderr[result.stderr.index("no redirect for web after 2 attempts") :]
    assert "last error: " in final
    assert "invalid mask `99' specified" in final  # iptables' own complaint, not a guess
    assert netns.nat() == before
