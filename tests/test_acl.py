"""The ACL table judged against what the stack declares and renders.

A mesh VM gets its tokens at boot by logging in with its instance role. From what the demo stack
declares (under mocks): the auth methods (and whose roles they admit), their binding rules, the
Consul roles and policies, the VMs' IAM roles and their tags; and from the files each VM gets
(which method each kind of token comes from, which token file each process reads): work out what
the token each process actually uses grants, the way Consul does (identities expanded, `${...}`
bind names interpolated from the role's tags, policies parsed from their rules), and check it
against the rights the process's Consul API calls need (components/acl.py, CALLS): every need
covered, and no grant that no call of that token's processes needs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import hcl2
import pytest

from components import acl, identity, program
from components.render import unwrap, user_data_by_vm
from components.userdata import TOKEN_DIR, decode_user_data, unpack_cloud_config
from tests.mocks import MockedTestCase, demo_config, value

METHOD = "consul:index/aclAuthMethod:AclAuthMethod"
RULE = "consul:index/aclBindingRule:AclBindingRule"
ROLE = "consul:index/aclRole:AclRole"
POLICY = "consul:index/aclPolicy:AclPolicy"
IAM_ROLE = "aws:iam/role:Role"
# An instance id, as IMDS gives it at boot: the node is <service>-<instance id>.
INSTANCE_ID = "i-0123456789abcdef0"


def env_of(text: str) -> dict[str, str]:
    return {
        k: v.strip('"') for k, v in (line.split("=", 1) for line in text.splitlines() if re.match(r"[A-Z_]+=", line))
    }


def interpolate(template: str, tags: dict[str, str]) -> str:
    """A binding rule's bind name as Consul fills it in from the login's entity tags."""
    return re.sub(r"\$\{entity_tags\.([^}]+)\}", lambda m: tags[m[1]], template)


class Declared:
    """What the stack declared that decides what a login grants."""

    def __init__(self, mocks: Any) -> None:
        self.methods = {m.inputs["name"]: json.loads(unwrap(m.inputs["configJson"])) for m in mocks.of_type(METHOD)}
        self.rules: dict[str, list[tuple[str, str]]] = {}
        for rule in mocks.of_type(RULE):
            self.rules.setdefault(rule.inputs["authMethod"], []).append(
                (rule.inputs["bindType"], rule.inputs["bindName"])
            )
        self.roles = {r.inputs["name"]: r.inputs.get("policies", []) for r in mocks.of_type(ROLE)}
        self.policies = {p.inputs["name"]: acl.parse_rules(p.inputs["rules"]) for p in mocks.of_type(POLICY)}
        self.iam_roles = {r.name: r.inputs for r in mocks.of_type(IAM_ROLE)}

    def login_grants(self, method: str, iam_role: dict[str, Any]) -> set[acl.Grant]:
        """What a login to `method` with `iam_role` grants, or a failed assertion if Consul would refuse it."""
        bound = self.methods[method]["BoundIAMPrincipalARNs"]
        arn = f"arn:aws:iam::123456789012:role{iam_role['path']}x"
        assert any(re.fullmatch(re.escape(b).replace(r"\*", ".*"), arn) for b in bound), (method, bound)
        tags = iam_role["tags"]
        grants: set[acl.Grant] = set()
        for bind_type, template in self.rules[method]:
            name = interpolate(template, tags)
            if bind_type == "service":
                grants |= acl.service_identity(name)
            elif bind_type == "node":
                grants |= acl.node_identity(name)
            else:
                assert name in self.roles, f"{method} binds role {name}, which the stack does not declare"
                for policy in self.roles[name]:
                    grants |= self.policies[policy]
        return grants


class AclTable(MockedTestCase):
    config = demo_config()

    async def declared(self) -> tuple[Declared, dict[str, dict[str, str]]]:
        await value(program.main(deployer_lookup=lambda: "198.51.100.7/32"))
        files = {
            vm: unpack_cloud_config(decode_user_data(data))
            for vm, data in user_data_by_vm(self.mocks).items()
            if not vm.startswith("consul-server")
        }
        return Declared(self.mocks), files

    def tokens_of(self, declared: Declared, service: str, files: dict[str, str]) -> dict[str, set[acl.Grant]]:
        """Process -> what its token grants, following the VM's files to the method it comes from."""
        login = env_of(files["/etc/consul.d/login.env"])
        methods = dict(pair.split("=", 1) for pair in login["LOGIN_METHODS"].split())
        envoy = env_of(files[f"/etc/envoy/{service}.env"])
        # Envoy and the redirect read the service token consul-login writes (tests/test_boot_login.py
        # checks which login each file and tokens.hcl entry comes from).
        assert envoy["CONSUL_HTTP_TOKEN_FILE"] == f"{TOKEN_DIR}/service.token"
        assert "CONSUL_HTTP_TOKEN" not in envoy
        # The agent's own api.DefaultConfig() clients read the agent token's file (consul-login
        # writes it from the agent method's login, tests/test_boot_login.py).
        agent_env = [
            line.removeprefix("Environment=")
            for line in files["/etc/systemd/system/consul.service.d/login.conf"].splitlines()
            if line.startswith("Environment=")
        ]
        assert agent_env == [f"CONSUL_HTTP_TOKEN_FILE={TOKEN_DIR}/agent.token"]
        iam_role = declared.iam_roles[f"{service}-role"]
        assert iam_role["tags"][identity.SERVICE_TAG] == service
        return {process: declared.login_grants(methods[kind], iam_role) for process, kind in acl.METHOD_OF.items()}

    async def test_each_process_has_every_right_its_calls_need_and_no_other(self) -> None:
        declared, files = await self.declared()
        assert sorted(files) == ["api", "web"]
        for service, vm_files in files.items():
            node = f"{service}-{INSTANCE_ID}"
            gossip = env_of(vm_files["/etc/consul.d/login.env"])["GOSSIP_KEY_PATH"]
            assert gossip, "the demo stack has a gossip key, read from KV with the agent token"
            tokens = self.tokens_of(declared, service, vm_files)
            for process, grants in tokens.items():
                missing = [n for n in acl.needs_of(process, node, service, gossip) if not acl.grants_cover(grants, n)]
                assert not missing, f"{service}: {process} lacks {missing}"
            # Least privilege, per token kind: every grant is needed by a process that uses it.
            for kind in set(acl.METHOD_OF.values()):
                processes = [p for p, k in acl.METHOD_OF.items() if k == kind]
                needs = set().union(*(acl.needs_of(p, node, service, gossip) for p in processes))
                extra = acl.unused(tokens[processes[0]], needs)
                assert not extra, f"{service}: the {kind} token (used by {processes}) grants {extra} no call needs"

    async def test_a_vm_can_never_write_another_services_nodes(self) -> None:
        declared, files = await self.declared()
        web = self.tokens_of(declared, "web", files["web"])
        for process, grants in web.items():
            assert not acl.grants_cover(grants, acl.Need("node", f"api-{INSTANCE_ID}", acl.WRITE)), process
            assert not acl.grants_cover(grants, acl.Need("node", "consul-server-0", acl.WRITE)), process

    async def test_dns_token_is_read_only_and_the_app_gets_nothing(self) -> None:
        declared, files = await self.declared()
        for service, vm_files in files.items():
            dns = self.tokens_of(declared, service, vm_files)[acl.DNS]
            assert dns and all(g.access == acl.READ for g in dns)
            # The demo app's unit names no token: it calls no Consul API.
            assert "TOKEN" not in vm_files["/etc/systemd/system/mesh-app.service"]

    async def test_a_server_login_gets_the_node_identity_of_its_own_node(self) -> None:
        declared, _ = await self.declared()
        server_role = declared.iam_roles["consul-server-0-role"]
        grants = declared.login_grants(identity.method_name(identity.login_prefix("test"), "server"), server_role)
        assert grants == acl.node_identity("consul-server-0")


@pytest.mark.parametrize(
    ("process", "need"),
    [
        (acl.REDIRECT, acl.Need("agent", "web-i-1", acl.READ)),
        (acl.ENVOY, acl.Need("service", "web", acl.WRITE)),
        (acl.AGENT, acl.Need("node", "web-i-1", acl.WRITE)),
        (acl.AGENT, acl.Need("key", "kv/gossip", acl.READ)),
        (acl.DNS, acl.Need("query", "*", acl.READ)),
        (acl.LIFECYCLE, acl.Need("service", "web", acl.WRITE)),
        (acl.LIFECYCLE, acl.Need("service", "web-sidecar-proxy", acl.READ)),
        (acl.GATEWAY, acl.Need("mesh", "", acl.READ)),
        (acl.GATEWAY, acl.Need("agent", "gateway-i-1", acl.READ)),
    ],
)
def test_a_rule_removed_from_a_token_is_caught(process: str, need: acl.Need) -> None:
    """The check above fails when a policy loses a rule: the guard, removed, shows."""
    if process == acl.GATEWAY:
        # The API gateway's service token (tests/test_gateway.py judges the declared stack's).
        assert need in acl.needs_of(process, node="gateway-i-1", service="gateway")
        full = acl.service_identity("gateway") | acl.parse_rules(acl.gateway_service_rules("gateway"))
        assert acl.grants_cover(full, need)
        weakened = {g for g in full if not g.covers(need)}
        assert not acl.grants_cover(weakened, need)
        return
    assert need in acl.needs_of(process, node="web-i-1", service="web", gossip_path="kv/gossip")
    full = {
        acl.REDIRECT: acl.service_identity("web") | acl.parse_rules(acl.agent_read_rules("web")),
        acl.ENVOY: acl.service_identity("web") | acl.parse_rules(acl.agent_read_rules("web")),
        acl.AGENT: acl.parse_rules(acl.agent_rules("web", "kv/gossip")),
        acl.DNS: acl.parse_rules(acl.dns_rules()),
        acl.LIFECYCLE: acl.service_identity("web") | acl.parse_rules(acl.agent_read_rules("web")),
    }[process]
    assert acl.grants_cover(full, need)
    concrete = acl.Need(need.resource, "" if need.name == "*" else need.name, need.access)
    weakened = {g for g in full if not g.covers(concrete)}
    assert not acl.grants_cover(weakened, need)


def test_more_than_needed_is_reported() -> None:
    needs = acl.needs_of(acl.DNS, node="web-i-1", service="web")
    assert acl.unused(acl.parse_rules(acl.dns_rules()), needs) == set()
    too_much = acl.parse_rules(acl.dns_rules()) | {acl.Grant("key", "", True, acl.READ)}
    assert acl.unused(too_much, needs) == {acl.Grant("key", "", True, acl.READ)}


def test_rules_round_trip_through_hcl() -> None:
    for rules in (
        acl.dns_rules(),
        acl.agent_read_rules("web"),
        acl.agent_rules("web", "a/b"),
        acl.gateway_service_rules("gateway"),
    ):
        assert hcl2.loads(rules) and acl.parse_rules(rules)


def test_the_lifecycle_program_uses_the_service_token() -> None:
    """mesh-lifecycle's calls are the service token's (acl.METHOD_OF): the file it reads by default."""
    import re as _re

    from components.userdata import SCRIPTS, TOKEN_DIR

    script = (SCRIPTS / "mesh-lifecycle.sh").read_text()
    (default,) = _re.findall(r'token_file="\$\{TOKEN_FILE:-([^}]*)\}"', script)
    assert default == f"{TOKEN_DIR}/service.token" and acl.METHOD_OF[acl.LIFECYCLE] == "service"
