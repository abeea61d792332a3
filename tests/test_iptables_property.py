"""Property: whatever else is in the nat table, the cleanup removes Consul's rules and nothing else.

Hypothesis draws a sequence of steps: foreign chains and rules (comments that name Consul's chains,
quoted strings with spaces and quotes, look-alike chains, Docker's rules), jumps into Consul's chains
(duplicates, with comments), and runs of the redirect. The foreign steps also run alone in a second
namespace: after the cleanup, the first namespace's nat table must equal that one byte for byte.
Deterministic (derandomize, no example database) and bounded; each example gets fresh namespaces.
"""

from __future__ import annotations

import shlex
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_iptables import (
    BACKENDS,
    CLEANUP,
    CONSUL_CHAINS,
    DOCKER_RULES,
    REDIRECT,
    Netns,
    fresh_netns,
    require_netns,
)

LOOK_ALIKES = ["CONSUL_PROXY_OUTPUT2", "MY_CONSUL_PROXY_OUTPUT", "CONSUL_PROXY", "CONSUL_DNS_REDIRECT_2", "DOCKER"]
FRAGMENTS = [*sorted(CONSUL_CHAINS), *LOOK_ALIKES, "-j", "-g", " ", '"', "'", "\\", "$x", "`id`", "#", "*/", "jump to"]
# Printable ASCII without the whitespace iptables cannot keep in a comment (tab, newline and co.).
CHARS = string.ascii_letters + string.digits + string.punctuation + " "

comments = st.one_of(
    st.none(),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=5).map("".join),
    st.text(alphabet=CHARS, max_size=20),
).filter(lambda c: c != "!")  # a lone "!" is iptables' negation, not a comment


@dataclass(frozen=True)
class Step:
    kind: str  # "foreign" and "consul": an iptables command; "redirect", "dns-redirect": a run
    args: tuple[str, ...] = ()


def comment_args(comment: str | None) -> list[str]:
    return [] if comment is None else ["-m", "comment", "--comment", comment]


@st.composite
def scenarios(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    foreign_chains: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        kind = draw(st.sampled_from(["chain", "rule", "rule", "consul-jump", "redirect", "dns-redirect", "docker"]))
        if kind == "chain":
            name = draw(st.sampled_from(LOOK_ALIKES))
            if name not in foreign_chains:
                foreign_chains.append(name)
                steps.append(Step("foreign", ("-N", name)))
        elif kind == "docker":
            if "DOCKER" not in foreign_chains:
                foreign_chains.append("DOCKER")
                steps += [Step("foreign", tuple(rule)) for rule in DOCKER_RULES]
        elif kind == "rule":
            chain = draw(st.sampled_from(["PREROUTING", "OUTPUT", "POSTROUTING", "INPUT", *foreign_chains]))
            targets: list[list[str]] = [[], ["-j", "RETURN"], ["-j", "ACCEPT"]]
            if chain in ("PREROUTING", "OUTPUT", "POSTROUTING", "INPUT"):
                targets += [["-j", c] for c in foreign_chains] + [["-g", c] for c in foreign_chains]
            if chain in ("PREROUTING", "OUTPUT"):
                targets.append(["-p", "tcp", "-j", "REDIRECT", "--to-ports", "8080"])
            if chain == "POSTROUTING":
                targets.append(["-s", "172.17.0.0/16", "-j", "MASQUERADE"])
            where = draw(st.sampled_from([["-A", chain], ["-I", chain, "1"]]))
            rule = draw(st.sampled_from([[], ["-p", "udp"], ["-d", "10.9.8.7/32"]])) + comment_args(draw(comments))
            steps.append(Step("foreign", (*where, *rule, *draw(st.sampled_from(targets)))))
        elif kind == "consul-jump":
            builtin = draw(st.sampled_from(["PREROUTING", "OUTPUT"]))
            # The owner match in CONSUL_PROXY_OUTPUT is valid in OUTPUT only: the kernel refuses the jump.
            allowed = CONSUL_CHAINS - {"CONSUL_PROXY_OUTPUT"} if builtin == "PREROUTING" else CONSUL_CHAINS
            chain = draw(st.sampled_from(sorted(allowed)))
            proto = draw(st.sampled_from([[], ["-p", "tcp"], ["-p", "udp", "--dport", "53"]]))
            jump = draw(st.sampled_from(["-j", "-g"]))
            steps.append(Step("consul", ("-A", builtin, *proto, *comment_args(draw(comments)), jump, chain)))
        else:
            steps.append(Step(kind))
    return steps


def consul_rules(rules: list[str]) -> list[str]:
    """Lines that are Consul's chains, their rules, or a jump into one (the target comes last)."""
    found = []
    for line in rules:
        tokens = shlex.split(line)
        if tokens[1] in CONSUL_CHAINS or (tokens[-2:-1] in (["-j"], ["-g"]) and tokens[-1] in CONSUL_CHAINS):
            found.append(line)
    return found


def apply(ns: Netns, step: Step) -> None:
    if step.kind == "foreign":
        ns.rule(*step.args)
    elif step.kind == "consul":
        chain = step.args[-1]
        if ns.run(ns.iptables, "-t", "nat", "-S", chain, check=False).returncode != 0:
            ns.rule("-N", chain)  # a leftover of a crashed run
        ns.rule(*step.args)
    elif step.kind == "redirect":
        ns.run(REDIRECT, "web")
    else:  # what a redirect with Consul DNS installs, CONSUL_DNS_REDIRECT included
        ns.run(CLEANUP)
        ns.run("consul", "connect", "redirect-traffic", "-proxy-uid=0", "-consul-dns-ip=10.0.0.2")


@pytest.mark.parametrize("iptables", BACKENDS)
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=scenarios())
def test_cleanup_removes_consul_and_keeps_every_foreign_rule(iptables: str, steps: list[Step]) -> None:
    require_netns(iptables)
    with tempfile.TemporaryDirectory() as tmp:
        with fresh_netns(Path(tmp) / "x", iptables) as reference, fresh_netns(Path(tmp), iptables) as ns:
            for step in steps:
                if step.kind == "foreign":
                    reference.rule(*step.args)
                apply(ns, step)
            foreign = reference.nat()
            assert not consul_rules(foreign)

            ns.run(CLEANUP)
            after = ns.nat()
            assert not consul_rules(after)
            assert after == foreign  # every foreign rule and chain, in order, byte for byte
            ns.run(CLEANUP)
            assert ns.nat() == after
