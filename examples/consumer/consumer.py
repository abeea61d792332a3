"""A second Pulumi project on top of a consul-tproxy-vms stack: one more mesh VM, and who may call it.

Everything it needs comes from the mesh stack's outputs through a StackReference: the Consul API
address, CA and management token (a secret, and it stays one), how agents join, how a VM logs in
to Consul with its instance role ("consulLogin"), the network and the mesh security group. It
declares its VM with the mesh project's own MeshVm component, whose user data holds no secret: the
VM gets its tokens and the gossip key at boot by logging in to the mesh stack's aws-iam auth methods.

The login prefix and IAM path must be plain strings when the VM's Consul roles and IAM role are
declared (they name them), so they are derived from the mesh stack's name in `meshStack`, as the
mesh program derives them from its own stack name (components/identity.py), and checked against the
reference's "consulLogin" output once it is known: a mismatch fails the update rather than create
roles no binding rule names.

It owns the intentions whose destination is its own service, and no other: Consul keeps one
`service-intentions` entry per destination, so two projects writing the same destination's entry
would overwrite each other. Here the mesh stack's services are the sources.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pulumi
import pulumi_consul as consul

# In this repository the mesh project sits two folders up; a project elsewhere would install it.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from components.identity import iam_path, login_prefix  # noqa: E402
from components.intentions import ServiceIntentions, ServiceIntentionsArgs  # noqa: E402
from components.mesh_defaults import service_defaults  # noqa: E402
from components.mesh_vm import ConsulJoinArgs, LoginArgs, MeshVm, MeshVmArgs  # noqa: E402
from components.spec import (  # noqa: E402
    DNS_LABEL,
    IntentionSpec,
    MeshSpecError,
    ServiceSpec,
    load_service,
    split_http_addr,
)

PROJECT = "consul-tproxy-vms-consumer"


def read_config(config: pulumi.Config) -> tuple[str, ServiceSpec, list[str], list[str]]:
    """meshStack, the new service, who may call it, admin networks; MeshSpecError when bad."""
    problems = []
    mesh_stack = config.get("meshStack") or ""
    if mesh_stack.count("/") != 2:
        problems.append(f"meshStack: {mesh_stack!r} is not <organization>/consul-tproxy-vms/<stack>")
    name = config.get("service") or "reports"
    port = config.get_int("port") or 9400
    allow_from = config.get_object("allowFrom") or ["web"]
    for index, source in enumerate(allow_from):
        if not isinstance(source, str) or not DNS_LABEL.match(source) or source == name:
            problems.append(f"allowFrom[{index}]: {source!r} is not another service's name")
    admin_cidrs = config.get_object("adminCidrs") or []
    service = None
    try:
        service = load_service(name, {"port": port})
    except MeshSpecError as err:
        problems += err.problems
    if problems or service is None:
        raise MeshSpecError(problems)
    return mesh_stack, service, list(allow_from), list(admin_cidrs)


def login_args(mesh_stack: str, consul_login: pulumi.Output[Any]) -> LoginArgs:
    """How the new VM logs in, from the mesh stack's "consulLogin" output.

    prefix and iam_path are derived from the mesh stack's name (<organization>/<project>/<stack>),
    as the mesh program derives them from its own; the output must agree (checked at apply time).
    """
    stack = mesh_stack.rsplit("/", 1)[-1]
    prefix, path = login_prefix(stack), iam_path(stack)

    def checked(given: dict[str, Any]) -> dict[str, Any]:
        if (given.get("prefix"), given.get("iamPath")) != (prefix, path):
            raise ValueError(
                f"meshStack {mesh_stack!r}: its consulLogin output has prefix {given.get('prefix')!r} and "
                f"iamPath {given.get('iamPath')!r}, not {prefix!r} and {path!r} as derived from its name"
            )
        return given

    login = consul_login.apply(checked)
    return LoginArgs(
        prefix=prefix,
        iam_path=path,
        server_id=login.apply(lambda v: v["serverId"]),
        http_addrs=login.apply(lambda v: v["httpAddrs"]),
        gossip_key_path=login.apply(lambda v: v["gossipKeyPath"] or ""),
    )


def build(
    mesh_stack: str, service: ServiceSpec, allow_from: Sequence[str], admin_cidrs: Sequence[str] = ()
) -> dict[str, Any]:
    """Declare the new VM, its service-defaults and its intentions on top of the mesh stack
    `mesh_stack` (<organization>/consul-tproxy-vms/<stack>); return the stack outputs."""
    mesh = pulumi.StackReference(mesh_stack)
    out = mesh.require_output
    address = out("consulHttpAddr").apply(split_http_addr)
    provider = consul.Provider(
        "consul",
        address=address.apply(lambda a: a[1]),
        scheme=address.apply(lambda a: a[0]),
        datacenter=out("consulDatacenter"),
        token=pulumi.Output.secret(out("consulManagementToken")),
        ca_pem=mesh.get_output("consulCaPem"),
    )
    with_consul = pulumi.ResourceOptions(providers=[provider])

    defaults = service_defaults(f"{service.name}-defaults", service.name, service.protocol, with_consul)
    vm = MeshVm(
        service.name,
        MeshVmArgs(
            service=service,
            consul_version=out("consulVersion"),
            envoy_version=out("envoyVersion"),
            cluster=ConsulJoinArgs(
                datacenter=out("consulDatacenter"),
                retry_join=out("consulRetryJoin"),
                ca_pem=mesh.get_output("consulCaPem"),
                # The mesh stack's own servers are found by cloud auto-join (by EC2 tag).
                cloud_auto_join=True,
            ),
            # The VM logs in to the mesh stack's auth methods; its roles carry the mesh stack's prefix.
            login=login_args(mesh_stack, out("consulLogin")),
            subnet_id=out("subnetIds").apply(lambda ids: ids[0]),
            vpc_id=out("vpcId"),
            mesh_security_group_id=out("meshSecurityGroupId"),
            admin_cidrs=admin_cidrs,
            tags={"consul-tproxy-vms:stack": pulumi.get_stack(), "consul-tproxy-vms:project": PROJECT},
        ),
        opts=with_consul,
    )
    intentions = ServiceIntentions(
        "intentions",
        ServiceIntentionsArgs(
            intentions=[
                IntentionSpec(source, service.name, "allow", f"{source} calls {service.name}") for source in allow_from
            ]
        ),
        opts=pulumi.ResourceOptions(providers=[provider], depends_on=[defaults]),
    )
    return {
        "service": vm.summary(),
        "intentions": intentions.applied,
    }


def main() -> dict[str, Any]:
    try:
        mesh_stack, service, allow_from, admin_cidrs = read_config(pulumi.Config(PROJECT))
    except MeshSpecError as err:
        listed = "\n".join(f"  - {p}" for p in err.problems)
        raise pulumi.RunError(f"invalid stack config for {PROJECT}:\n{listed}") from None
    outputs = build(mesh_stack, service, allow_from, admin_cidrs)
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
