"""MeshIdentity: how VMs prove who they are to Consul with their EC2 instance role (aws-iam login).

No token secret is ever written into user data. A VM logs in at boot (scripts/consul-login.sh)
with `consul login -type=aws-iam`: it signs an sts:GetCallerIdentity request (and iam:GetRole,
with -aws-include-entity) with its instance role, and the servers replay them to AWS (Consul docs,
"AWS Identity and Access Management (IAM) auth method"; Consul 1.12+). Binding rules turn the
role's tag naming its service into that service's rights. One auth method per token, so each token
holds exactly what its processes need (components/acl.py):

- `<prefix>-agent`: the role `<prefix>-<service>-agent` (its nodes, agent read, the gossip key)
- `<prefix>-service`: the service identity of the tagged service, and `<prefix>-<service>-agent-read`
- `<prefix>-dns`: the role `<prefix>-dns` (read-only DNS rights)
- `<prefix>-server`: a node identity for the server node named by the role's node tag

The roles a binding rule names per service are declared by each MeshVm (components/mesh_vm.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_consul as consul

from .spec import PROJECT

# IAM role tags the auth methods read (IAMEntityTags): the service a VM runs, the node a server is.
SERVICE_TAG = "consul-tproxy-vms.service"
NODE_TAG = "consul-tproxy-vms.node"
KINDS = ("agent", "service", "dns")


def stack_label(stack: str) -> str:
    """The stack's name as Consul's names and IAM paths take it, distinct for every stack name.

    Pulumi stack names may hold `.`, which Consul's auth method and role names refuse (agent/structs/
    acl.go validAuthMethod, validRoleName: letters, digits, `-`, `_`); `.` becomes `-`, and a stack
    whose name had one gets a short hash of its exact name, so `a.b` and `a-b` never share an IAM path,
    login prefix, auth methods or roles. Stack names without `.` are kept as they are.
    """
    label = stack.replace(".", "-")
    if label != stack:
        label += "-" + hashlib.sha256(stack.encode()).hexdigest()[:6]
    return label


def login_prefix(stack: str) -> str:
    """Prefix of the stack's auth methods and roles: unique per project and stack in the cluster."""
    return f"{PROJECT}-{stack_label(stack)}"


def iam_path(stack: str) -> str:
    """The IAM path of every role that may log in: the auth methods bind `role<path>*`."""
    return f"/{PROJECT}/{stack_label(stack)}/"


def method_name(prefix: str, kind: str) -> str:
    return f"{prefix}-{kind}"


def login_roles(prefix: str, service: str) -> dict[str, str]:
    """Token kind -> the role the login to its method must link for a VM of `service` (binding_rules):
    consul-login reads each token back and checks it (a missing role is skipped at login)."""
    return {
        "agent": agent_role_name(prefix, service),
        "service": agent_read_role_name(prefix, service),
        "dns": dns_role_name(prefix),
    }


def agent_role_name(prefix: str, service: str) -> str:
    return f"{prefix}-{service}-agent"


def agent_read_role_name(prefix: str, service: str) -> str:
    return f"{prefix}-{service}-agent-read"


def policy_name_for(role_name: str) -> str:
    """The name of the policy a role carries: the role's, within Consul's 128 characters for policy
    names (role names may have 256: agent/structs/acl.go validPolicyName, validRoleName); a longer
    one is cut and keeps a hash of the whole, so two never meet."""
    if len(role_name) <= 128:
        return role_name
    digest = hashlib.sha256(role_name.encode()).hexdigest()[:8]
    return f"{role_name[:119]}-{digest}"


def dns_role_name(prefix: str) -> str:
    return f"{prefix}-dns"


def gossip_key_path(prefix: str) -> str:
    """The Consul KV entry holding the gossip key, readable with a VM's agent token."""
    return f"{PROJECT}/{prefix}/gossip-key"


def binding_rules(prefix: str) -> dict[str, list[tuple[str, str]]]:
    """Auth method kind -> (bind type, bind name) of its binding rules, as Consul interpolates them
    (`${entity_tags.<tag>}`: Consul docs, aws-iam auth method, "Trusted identity attributes")."""
    service = f"${{entity_tags.{SERVICE_TAG}}}"
    return {
        "agent": [("role", agent_role_name(prefix, service))],
        "service": [("service", service), ("role", agent_read_role_name(prefix, service))],
        "dns": [("role", dns_role_name(prefix))],
        "server": [("node", f"${{entity_tags.{NODE_TAG}}}")],
    }


def method_config(account_id: str, partition: str, path: str, server_id: str) -> dict[str, object]:
    """The aws-iam method's config: roles under the stack's IAM path, with their tags."""
    return {
        "BoundIAMPrincipalARNs": [f"arn:{partition}:iam::{account_id}:role{path}*"],
        # Wildcards and tags need the entity details (the client role then needs iam:GetRole on itself).
        "EnableIAMEntityDetails": True,
        "IAMEntityTags": [SERVICE_TAG, NODE_TAG],
        # Anti-replay: a signed request is only good for servers expecting this value.
        "ServerIDHeaderValue": server_id,
    }


@dataclass
class MeshIdentityArgs:
    prefix: str
    """login_prefix(stack): names of the methods, roles and KV entry."""
    account_id: pulumi.Input[str]
    """The AWS account the VMs' roles are in."""
    partition: pulumi.Input[str]
    """The AWS partition (aws, aws-cn, aws-us-gov)."""
    iam_path: str
    """IAM path of the roles that may log in (iam_path(stack))."""
    dns_policy_name: pulumi.Input[str]
    """The read-only DNS policy (MeshDefaults) the DNS role carries."""
    gossip_key: pulumi.Input[str] | None = None
    """The cluster's gossip key (secret), stored in KV for the VMs; None: the cluster has none."""
    servers: bool = True
    """Also the method servers log in to for their agent token (node identities)."""


class MeshIdentity(pulumi.ComponentResource):
    """The aws-iam auth methods and binding rules, the DNS role, and the gossip key in KV."""

    server_id: pulumi.Output[str]
    """The methods' ServerIDHeaderValue, which logins pass as -aws-server-id-header-value."""
    gossip_key_path: pulumi.Output[str]
    """The KV entry of the gossip key; empty when the cluster has none."""

    def __init__(self, name: str, args: MeshIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:MeshIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        server_id = args.prefix
        config = pulumi.Output.all(args.account_id, args.partition).apply(
            lambda v: json.dumps(method_config(v[0], v[1], args.iam_path, server_id), sort_keys=True)
        )
        kinds: Sequence[str] = (*KINDS, "server") if args.servers else KINDS
        for kind, rules in binding_rules(args.prefix).items():
            if kind not in kinds:
                continue
            method = consul.AclAuthMethod(
                f"{name}-{kind}",
                name=method_name(args.prefix, kind),
                type="aws-iam",
                description=f"{PROJECT}: {kind} tokens of VMs logging in with their instance role",
                config_json=config,
                opts=child,
            )
            for index, (bind_type, bind_name) in enumerate(rules):
                consul.AclBindingRule(
                    f"{name}-{kind}-{bind_type}" + (f"-{index}" if index else ""),
                    auth_method=method.name,
                    bind_type=bind_type,
                    bind_name=bind_name,
                    description=f"{PROJECT}: {kind} login -> {bind_type} {bind_name}",
                    opts=child,
                )
        consul.AclRole(
            f"{name}-dns",
            name=dns_role_name(args.prefix),
            description=f"{PROJECT}: DNS token rights (read-only)",
            policies=[args.dns_policy_name],
            opts=child,
        )
        path = ""
        if args.gossip_key is not None:
            path = gossip_key_path(args.prefix)
            consul.Keys(
                f"{name}-gossip-key",
                # delete: "If true, then the key will be deleted when either its configuration block
                # is removed from the configuration or the entire resource is destroyed. Otherwise,
                # it will be left in Consul" (pulumi_consul KeysKeyArgs): the default leaves the
                # stack's gossip key behind in KV after `pulumi destroy`.
                keys=[consul.KeysKeyArgs(path=path, value=pulumi.Output.secret(args.gossip_key), delete=True)],
                opts=child,
            )
        self.server_id = pulumi.Output.from_input(server_id)
        self.gossip_key_path = pulumi.Output.from_input(path)
        self.register_outputs({"serverId": self.server_id, "gossipKeyPath": self.gossip_key_path})
