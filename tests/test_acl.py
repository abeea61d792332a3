"""The ACL table judged against what the stack declares and renders.

From the tokens and policies the demo stack declares (under mocks) and the files it renders, find
the token each process on each VM actually uses (the file it reads it from), expand what that
token grants (identities as Consul expands them, policies parsed from their rules), and check it
against the rights the process's Consul API calls need (components/acl.py, CALLS): every need
covered, and no grant that no call of that token's processes needs.
"""

from __future__ import annotations

import re
from typing import Any

import hcl2
import pytest

from components import acl, program
from components.render import user_data_by_vm
from components.userdata import decode_user_data, unpack_cloud_config
from tests.mocks import MockedTestCase, demo_config, secret_id_of, value

TOKEN = "consul:index/aclToken:AclToken"
POLICY = "consul:index/aclPolicy:AclPolicy"


def hcl_string(raw: str) -> str:
    return raw.strip('"')


def tokens_used(files: dict[str, str], service: str) -> dict[str, str]:
    """Process -> the token SecretID it reads, from the VM's files (acl.TOKEN_SOURCE says where)."""
    agent = hcl2.loads(files["/etc/consul.d/consul.hcl"])
    tokens = agent["acl"][0]["tokens"][0]
    registration = hcl2.loads(files[f"/etc/consul.d/service-{service}.hcl"])["service"][0]
    env = dict(
        line.split("=", 1) for line in files[f"/etc/envoy/{service}.env"].splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    envoy_token = env["CONSUL_HTTP_TOKEN"].strip('"')
    used = {
        acl.AGENT: hcl_string(tokens["agent"]),
        acl.DNS: hcl_string(tokens["dns"]),
        acl.REGISTRATION: hcl_string(registration["token"]),
        acl.REDIRECT: envoy_token,
        acl.ENVOY: envoy_token,
    }
    assert "default" not in tokens, "the default token must stay unset"
    return used


def grants_of(token: Any, policies: dict[str, set[acl.Grant]]) -> set[acl.Grant]:
    """What a declared token grants: its identities, expanded as Consul does, and its policies' rules."""
    grants: set[acl.Grant] = set()
    for identity in token.inputs.get("nodeIdentities", []):
        grants |= acl.node_identity(identity["nodeName"])
    for identity in token.inputs.get("serviceIdentities", []):
        grants |= acl.service_identity(identity["serviceName"])
    for name in token.inputs.get("policies", []):
        grants |= policies[name]
    return grants


class AclTable(MockedTestCase):
    config = demo_config()

    async def declared(self) -> tuple[dict[str, set[acl.Grant]], dict[str, dict[str, str]]]:
        """Grants of every declared token by its SecretID, and each VM's files."""
        await value(program.main(deployer_lookup=lambda: "198.51.100.7/32"))
        policies = {p.inputs["name"]: acl.parse_rules(p.inputs["rules"]) for p in self.mocks.of_type(POLICY)}
        by_secret = {secret_id_of(f"accessor-{t.name}"): grants_of(t, policies) for t in self.mocks.of_type(TOKEN)}
        files = {
            vm: unpack_cloud_config(decode_user_data(data))
            for vm, data in user_data_by_vm(self.mocks).items()
            if not vm.startswith("consul-server")
        }
        return by_secret, files

    async def test_each_process_has_every_right_its_calls_need_and_no_other(self) -> None:
        by_secret, files = await self.declared()
        assert sorted(files) == ["api", "web"]
        for service, vm_files in files.items():
            used = tokens_used(vm_files, service)
            node = hcl_string(hcl2.loads(vm_files["/etc/consul.d/consul.hcl"])["node_name"])
            for process, secret in used.items():
                grants = by_secret[secret]
                missing = [n for n in acl.needs_of(process, node, service) if not acl.grants_cover(grants, n)]
                assert not missing, f"{service}: {process} lacks {missing}"
            # Least privilege, per token: every grant is needed by a process that uses the token.
            for secret in set(used.values()):
                needs = set().union(*(acl.needs_of(p, node, service) for p, s in used.items() if s == secret))
                extra = acl.unused(by_secret[secret], needs)
                assert not extra, (
                    f"{service}: a token used by {[p for p, s in used.items() if s == secret]} "
                    f"grants {extra} that no call needs"
                )

    async def test_dns_token_is_read_only_and_the_app_gets_nothing(self) -> None:
        by_secret, files = await self.declared()
        for service, vm_files in files.items():
            dns = by_secret[tokens_used(vm_files, service)[acl.DNS]]
            assert dns and all(g.access == acl.READ for g in dns)
            # The demo app's unit names no token: it calls no Consul API.
            assert "TOKEN" not in vm_files["/etc/systemd/system/mesh-app.service"]


@pytest.mark.parametrize(
    ("process", "need"),
    [
        (acl.REDIRECT, acl.Need("agent", "web", acl.READ)),
        (acl.ENVOY, acl.Need("service", "web", acl.WRITE)),
        (acl.AGENT, acl.Need("node", "web", acl.WRITE)),
        (acl.DNS, acl.Need("query", "*", acl.READ)),
    ],
)
def test_a_rule_removed_from_a_token_is_caught(process: str, need: acl.Need) -> None:
    """The check above fails when a policy loses a rule: the guard, removed, shows."""
    assert need in acl.needs_of(process, node="web", service="web")
    full = {
        acl.REDIRECT: acl.service_identity("web") | acl.parse_rules(acl.agent_read_rules("web")),
        acl.ENVOY: acl.service_identity("web") | acl.parse_rules(acl.agent_read_rules("web")),
        acl.AGENT: acl.node_identity("web") | acl.parse_rules(acl.agent_read_rules("web")),
        acl.DNS: acl.parse_rules(acl.dns_rules()),
    }[process]
    assert acl.grants_cover(full, need)
    weakened = {
        g for g in full if not g.covers(acl.Need(need.resource, "" if need.name == "*" else need.name, need.access))
    }
    assert not acl.grants_cover(weakened, need)


def test_a_write_grant_in_the_dns_token_is_reported_as_more_than_needed() -> None:
    needs = acl.needs_of(acl.DNS, node="web", service="web")
    too_much = acl.parse_rules(acl.dns_rules()) | {acl.Grant("node", "", True, acl.WRITE)}
    assert acl.unused(acl.parse_rules(acl.dns_rules()), needs) == set()
    # node_prefix "" write covers node read, so the read grant becomes redundant, not the write: the
    # DNS check above also demands read-only.
    assert any(g.access == acl.WRITE for g in too_much)


def test_rules_round_trip_through_hcl() -> None:
    for rules in (acl.dns_rules(), acl.agent_read_rules("web-1")):
        parsed = hcl2.loads(rules)
        assert parsed and acl.parse_rules(rules)
