"""The ACL rights of a mesh VM: every Consul API call each process makes, and the token it uses.

A mesh VM gets its tokens at boot by logging in with its instance role (scripts/consul-login.sh)
through three aws-iam auth methods, one per token, whose binding rules give a service identity and
roles built from the rules here (components/identity.py, components/mesh_vm.py). tests/test_acl.py
checks the other way round: from the auth methods, binding rules, roles and policies the stack
declares and the files it renders, the token each process actually uses grants every right its
calls need, and nothing that no call needs (least privilege).

Nodes are named `<service>-<instance id>` at boot, so the agent's rights are by prefix
(`node_prefix "<service>-"`): the aws-iam method sees the role, not the instance (the role
session name carrying the instance id is dropped, internal/iamauth/auth.go), so every instance of
a service shares one identity and can only ever register nodes of its own service.

Consul checks (acl/authorizer.go): a rule on a resource is exact (`node "web"`) or by prefix
(`node_prefix "web-"`, the empty prefix matching every name); `write` implies `read`; with
`default_policy = "deny"` anything without a rule is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .escape import hcl

READ, WRITE = "read", "write"
# Resources a rule names without a name (`mesh = "read"`: acl/policy.go PolicyRules.Mesh); a Grant
# and a Need on one carry the name "".
NAMELESS = ("mesh",)
_ACCESS = {READ: 1, WRITE: 2}


@dataclass(frozen=True, order=True)
class Grant:
    """One rule: `<resource> "<name>"` (exact) or `<resource>_prefix "<name>"`, with an access level."""

    resource: str
    """agent, node, service or query."""
    name: str
    prefix: bool
    access: str

    def covers(self, need: Need) -> bool:
        matches = need.name.startswith(self.name) if self.prefix else need.name == self.name
        return self.resource == need.resource and matches and _ACCESS[self.access] >= _ACCESS[need.access]

    def hcl(self) -> str:
        if self.resource in NAMELESS:
            return f"{self.resource} = {hcl(self.access)}\n"
        kind = f"{self.resource}_prefix" if self.prefix else self.resource
        return f"{kind} {hcl(self.name)} {{\n  policy = {hcl(self.access)}\n}}\n"


@dataclass(frozen=True, order=True)
class Need:
    """A right one call needs, on one concrete name (`*` stands for "any name": a prefix "" rule)."""

    resource: str
    name: str
    access: str


@dataclass(frozen=True)
class Call:
    """One Consul API call a process on a mesh VM makes, and what Consul checks for it."""

    process: str
    what: str
    needs: tuple[tuple[str, str, str], ...]
    """(resource, name template, access); templates: {node}, {service}, {proxy}, {gossip}, * (every name)."""
    source: str
    """Where Consul says so."""


# Processes, and which token each uses (the file it takes it from: see TOKEN_SOURCE below). The agent
# is two: its own operations use acl.tokens.agent, while the API clients it builds with
# api.DefaultConfig() take the token from its environment.
AGENT, DNS, REGISTRATION, REDIRECT, ENVOY = "agent", "dns", "registration", "redirect-traffic", "envoy"
AGENT_CLIENT = "agent-api-client"
# A group's VM only (scripts/mesh-lifecycle.sh): its launching hook's health checks, its leave.
LIFECYCLE = "mesh-lifecycle"

CALLS: tuple[Call, ...] = (
    Call(
        AGENT,
        "anti-entropy: register and update its own node in the catalog (Catalog.Register)",
        (("node", "{node}", WRITE),),
        "developer.hashicorp.com/consul/docs/security/acl/tokens/create/create-an-agent-token: the agent "
        "token needs node:write on its node; agent/consul/catalog_endpoint.go vetRegisterWithACL",
    ),
    Call(
        AGENT,
        "anti-entropy: read the catalog's services of its node to sync them",
        (("service", "*", READ),),
        "agent/consul/acl_templated_policy / aclNodeIdentityTemplate (node identity = node write + "
        "service_prefix \"\" read, 'designed for agent tokens'); agent/local/state.go syncs the node's services",
    ),
    Call(
        AGENT_CLIENT,
        "xDS listener generation: netutil.IsDualStack(nil, ...) reads /v1/agent/self with an "
        "api.DefaultConfig() client, whose token is CONSUL_HTTP_TOKEN[_FILE] of the agent's environment",
        (("agent", "{node}", READ),),
        "hashicorp/consul PR #23234; agent/netutil IsDualStackWithDTO (config nil: api.DefaultConfig()); "
        "agent/agent_endpoint.go AgentSelf: authz.AgentRead(node)",
    ),
    Call(
        AGENT,
        "consul-login, before the agent starts: read the gossip key from Consul KV with the agent token",
        (("key", "{gossip}", READ),),
        "developer.hashicorp.com/consul/api-docs/kv (Read Key: ACL key:read); scripts/consul-login.sh",
    ),
    Call(
        DNS,
        "answer <name>.virtual.consul, <svc>.service.consul and node lookups",
        (("node", "*", READ), ("service", "*", READ), ("query", "*", READ)),
        "developer.hashicorp.com/consul/docs/security/acl/tokens/create/create-a-dns-token: node_prefix, "
        "service_prefix and query_prefix read",
    ),
    Call(
        REGISTRATION,
        "register the service and its sidecar from the config dir (the service block's token)",
        (("service", "{service}", WRITE), ("service", "{proxy}", WRITE)),
        "agent/agent.go vetServiceRegister: authz.ServiceWrite on the service (a sidecar is a service of its own name)",
    ),
    Call(
        REDIRECT,
        "consul connect redirect-traffic: GET /v1/agent/service/<proxy-id> for the proxy's ports",
        (("service", "{proxy}", READ),),
        "command/connect/redirecttraffic/redirect_traffic.go; agent/agent_endpoint.go AgentService: service:read",
    ),
    Call(
        REDIRECT,
        "consul connect redirect-traffic: netutil.IsDualStack, GET /v1/agent/self (exits 1 on 403)",
        (("agent", "{node}", READ),),
        "command/connect/redirecttraffic/redirect_traffic.go (Consul 1.22.0 changelog: 'Added IsDualStack "
        "utility function'); agent/agent_endpoint.go AgentSelf: agent:read",
    ),
    Call(
        ENVOY,
        "consul connect envoy -sidecar-for: find the sidecar, GET /v1/agent/service/<proxy-id>",
        (("service", "{proxy}", READ),),
        "command/connect/envoy/envoy.go; agent/agent_endpoint.go AgentService: service:read",
    ),
    Call(
        ENVOY,
        "consul connect envoy: GET /v1/agent/self (version check and IsDualStack)",
        (("agent", "{node}", READ),),
        "hashicorp/consul PR #22788 (403 'lacks permission agent:read' on the 1.22 line)",
    ),
    Call(
        ENVOY,
        "xDS stream of the sidecar: ADS for a proxy of the service",
        (("service", "{service}", WRITE),),
        "agent/xds/server.go (authz.ServiceWrite on the proxied service)",
    ),
    Call(
        ENVOY,
        "xDS stream: upstreams' endpoints and intentions (transparent proxy watches every service)",
        (("service", "*", READ), ("node", "*", READ)),
        "agent/proxycfg (catalog and health watches need service and node read; the service identity "
        "grants service_prefix and node_prefix read for this)",
    ),
    Call(
        LIFECYCLE,
        "mesh-lifecycle ready: GET /v1/agent/health/service/name/<service> and .../<proxy> (a group's VM)",
        (("service", "{service}", READ), ("service", "{proxy}", READ)),
        "agent/agent_endpoint.go AgentHealthServiceByName -> agentHealthService: service:read of the name",
    ),
    Call(
        LIFECYCLE,
        "mesh-lifecycle watch, on Terminated: PUT /v1/agent/service/maintenance/<service> (a group's VM)",
        (("service", "{service}", WRITE),),
        "agent/agent_endpoint.go AgentServiceMaintenance -> vetServiceUpdateWithAuthorizer: service:write",
    ),
)

# The API gateway's VM (components/gateway_vm.py) runs its agent like a mesh VM (AGENT, AGENT_CLIENT
# and DNS above, for the service {service} = the gateway's name) and no application, no redirect, no
# sidecar: Envoy runs as `consul connect envoy -gateway api -register -service <gateway>` with the
# service token. What it needs is what Consul's own template for API gateway tokens grants
# (hashicorp/consul agent/structs/acltemplatedpolicy/policies/ce/api-gateway.hcl, builtin/api-gateway:
# mesh read, node_prefix "" read, service_prefix "" read, service "<name>" write), plus agent read
# for the CLI, as for a sidecar.
GATEWAY = "gateway-envoy"
GATEWAY_CALLS: tuple[Call, ...] = (
    Call(
        GATEWAY,
        "consul connect envoy -register: PUT /v1/agent/service/register of the api-gateway service",
        (("service", "{service}", WRITE),),
        "agent/agent_endpoint.go AgentRegisterService -> agent/agent.go vetServiceRegister: authz.ServiceWrite",
    ),
    Call(
        GATEWAY,
        "consul connect envoy: GET /v1/agent/self (version check and IsDualStack)",
        (("agent", "{node}", READ),),
        "hashicorp/consul PR #22788 (403 'lacks permission agent:read' on the 1.22 line); "
        "agent/agent_endpoint.go AgentSelf",
    ),
    Call(
        GATEWAY,
        "xDS stream of the gateway: ADS for the api-gateway service",
        (("service", "{service}", WRITE),),
        "agent/xds/server.go (authz.ServiceWrite on the proxied service); builtin/api-gateway template",
    ),
    Call(
        GATEWAY,
        "xDS stream: the api-gateway and http-route entries, the routed services' endpoints and the mesh config",
        (("service", "*", READ), ("node", "*", READ), ("mesh", "", READ)),
        "agent/structs/config_entry_gateways.go APIGatewayConfigEntry.CanRead (service read of the gateway); "
        'acltemplatedpolicy/policies/ce/api-gateway.hcl (mesh, node_prefix "", service_prefix "" read)',
    ),
)
# The gateway VM's processes and the login each token comes from; the agent and DNS as on a mesh VM.
GATEWAY_METHOD_OF = {AGENT: "agent", AGENT_CLIENT: "agent", DNS: "dns", GATEWAY: "service"}

# Where each process takes its token from on the VM: what consul-login writes (scripts/consul-login.sh).
TOKEN_SOURCE = {
    AGENT: "consul.d/tokens.hcl acl.tokens.agent (login to the agent method)",
    AGENT_CLIENT: "consul.service.d/login.conf CONSUL_HTTP_TOKEN_FILE (the agent token's file)",
    DNS: "consul.d/tokens.hcl acl.tokens.dns (login to the dns method)",
    REGISTRATION: "consul.d/tokens.hcl acl.tokens.config_file_service_registration (login to the service method)",
    REDIRECT: "/etc/envoy/<name>.env CONSUL_HTTP_TOKEN_FILE (the service token)",
    ENVOY: "/etc/envoy/<name>.env CONSUL_HTTP_TOKEN_FILE (the service token)",
    LIFECYCLE: "scripts/mesh-lifecycle.sh TOKEN_FILE (the service token, /run/consul-login/service.token)",
}
# The login method each token comes from, by process.
METHOD_OF = {
    AGENT: "agent",
    AGENT_CLIENT: "agent",
    DNS: "dns",
    REGISTRATION: "service",
    REDIRECT: "service",
    ENVOY: "service",
    LIFECYCLE: "service",
}
# The demo application calls no Consul API: it only dials <upstream>.virtual.consul through Envoy.


def needs_of(process: str, node: str, service: str, gossip_path: str = "") -> set[Need]:
    """Every right `process` needs on the VM of `service` (node `node`); the gossip key read only
    when the cluster has one (`gossip_path`)."""
    names = {"{node}": node, "{service}": service, "{proxy}": f"{service}-sidecar-proxy", "*": "*"}
    names["{gossip}"] = gossip_path
    names[""] = ""
    return {
        Need(resource, names[template], access)
        for call in (*CALLS, *GATEWAY_CALLS)
        if call.process == process
        for resource, template, access in call.needs
        if template != "{gossip}" or gossip_path
    }


def node_identity(node: str) -> set[Grant]:
    """What a node identity expands to (agent/structs/acl_templated_policy.go, aclNodeIdentityTemplate)."""
    return {Grant("node", node, False, WRITE), Grant("service", "", True, READ)}


def service_identity(service: str) -> set[Grant]:
    """What a service identity expands to (aclServiceIdentityTemplate): its service and sidecar write,
    every service and node read."""
    return {
        Grant("service", service, False, WRITE),
        Grant("service", f"{service}-sidecar-proxy", False, WRITE),
        Grant("service", "", True, READ),
        Grant("node", "", True, READ),
    }


def grants_cover(grants: Iterable[Grant], need: Need) -> bool:
    # "*" needs a prefix "" rule: any name at all.
    concrete = Need(need.resource, "", need.access) if need.name == "*" else need
    return any(g.covers(concrete) and (need.name != "*" or (g.prefix and g.name == "")) for g in grants)


def unused(grants: Iterable[Grant], needs: Iterable[Need]) -> set[Grant]:
    """Grants that no need uses: what a token has beyond least privilege."""
    needs = list(needs)
    return {g for g in grants if not any(grants_cover([g], n) for n in needs)}


def node_prefix(service: str) -> str:
    """The prefix of every node name of `service`: <service>-<instance id>."""
    return f"{service}-"


def agent_rules(service: str, gossip_path: str = "") -> str:
    """Policy of the agent token of `service`'s VMs: its nodes (by prefix), every service read, agent
    read of its nodes, and the gossip key's KV entry."""
    grants = [
        Grant("node", node_prefix(service), True, WRITE),
        Grant("service", "", True, READ),
        Grant("agent", node_prefix(service), True, READ),
    ]
    if gossip_path:
        grants.append(Grant("key", gossip_path, False, READ))
    return "".join(g.hcl() for g in grants)


def agent_read_rules(service: str) -> str:
    """Agent read of `service`'s nodes (for /v1/agent/self), added to its service token by a role."""
    return Grant("agent", node_prefix(service), True, READ).hcl()


def gateway_service_rules(gateway: str) -> str:
    """What the gateway's service token holds beyond its service identity (a role the service login
    links, like agent_read_rules for a mesh VM): agent read of its nodes and mesh read (GATEWAY_CALLS)."""
    return Grant("agent", node_prefix(gateway), True, READ).hcl() + Grant("mesh", "", False, READ).hcl()


def dns_rules() -> str:
    """Policy rules of the DNS token: read-only, exactly the DNS row of CALLS."""
    needs = sorted(needs_of(DNS, node="", service=""))
    return "".join(Grant(n.resource, "", True, n.access).hcl() for n in needs)


_RULE = re.compile(r'(\w+?)(_prefix)?\s+"((?:[^"\\]|\\.)*)"\s*\{\s*policy\s*=\s*"(read|write|deny|list)"\s*\}')


_NAMELESS_RULE = re.compile(r"^(" + "|".join(NAMELESS) + r')\s*=\s*"(read|write|deny)"\s*$', re.M)


def parse_rules(rules: str) -> set[Grant]:
    """The grants of policy rules in the one-rule-per-block form this project writes (see Grant.hcl)."""
    found = {Grant(m[1], m[3], bool(m[2]), m[4]) for m in _RULE.finditer(rules)}
    found |= {Grant(m[1], "", False, m[2]) for m in _NAMELESS_RULE.finditer(rules)}
    blocks = rules.count("policy") + len(_NAMELESS_RULE.findall(rules))
    if len(found) != blocks:
        raise ValueError(f"rules not in the expected form: {rules!r}")
    return found
