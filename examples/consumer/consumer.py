"""A second Pulumi project on top of a consul-tproxy-vms stack: one more mesh VM, and who may call it.

It uses the package `consul_tproxy_vms` as any project would (requirements.txt installs it), and
everything it needs from the mesh comes from the mesh stack's outputs through a StackReference:
the Consul API address, CA and management token (a secret, and it stays one), how agents join, how
a VM logs in to Consul with its instance role ("consulLogin"), the network and the mesh security
group. It declares its VM with the package's MeshVm component, whose user data holds no secret: the
VM gets its tokens and the gossip key at boot by logging in to the mesh stack's aws-iam auth methods.

Its config is checked in two steps, each failing with the key and value named:
- before anything is declared (read_config): no key but this project's (a misspelled one is
  named, as the mesh names its own: spec.unknown_keys), meshStack, the service (name, port, command: the same
  rules as the mesh's own services, consul_tproxy_vms.spec.load_service), allowFrom, adminCidrs
  (IPv4 CIDRs, as the mesh's adminCidrs) and meshCreatesServers;
- against the mesh stack's outputs, once they are read (check_against_mesh): allowFrom names
  services of the mesh, the new service is not one of them nor shares a node prefix with one
  (web-reports beside web: the mesh's own rule, spec.node_prefix_clash), meshCreatesServers agrees with how the
  mesh's agents join, and the login prefix derived from meshStack agrees with "consulLogin". Every
  resource of this project waits for that check, so a mismatch fails the update before any is
  created.

Some values must be plain when resources are declared, while stack outputs are not known until
later: the login prefix and IAM path (they name the VM's roles) are derived from the mesh stack's
name, as the mesh program derives them from its own stack name; whether the VM needs cloud
auto-join's ec2:DescribeInstances is `meshCreatesServers` (a mesh that creates its servers joins
agents by EC2 tag). Both are then checked against the outputs, as above.

It owns the intentions whose destination is its own service, and no other: Consul keeps one
`service-intentions` entry per destination, so two projects writing the same destination's entry
would overwrite each other. Here the mesh stack's services are the sources.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_consul as consul

# The mesh's own checkers for CIDR lists and booleans (checks.py), so adminCidrs means the same here.
from consul_tproxy_vms.checks import Problems, boolean, cidr_list, json_list
from consul_tproxy_vms.ec2 import is_cloud_auto_join
from consul_tproxy_vms.identity import iam_path, login_prefix
from consul_tproxy_vms.intentions import ServiceIntentions, ServiceIntentionsArgs
from consul_tproxy_vms.mesh_defaults import service_defaults
from consul_tproxy_vms.mesh_vm import ConsulJoinArgs, LoginArgs, MeshVm, MeshVmArgs
from consul_tproxy_vms.spec import (
    DNS_LABEL,
    IntentionSpec,
    MeshSpecError,
    ServiceSpec,
    load_service,
    node_prefix_clash,
    split_http_addr,
    unknown_keys,
)

PROJECT = "consul-tproxy-vms-consumer"
MESH_STACK = re.compile(r"[^/\s]+/[^/\s]+/[^/\s]+")
STACK_REFERENCE = "pulumi:pulumi:StackReference"
KEYS = frozenset(
    {"meshStack", "service", "port", "command", "instances", "allowFrom", "adminCidrs", "meshCreatesServers"}
)
"""This project's config keys (Pulumi.yaml); any other key in its namespace is refused by name."""


@dataclass(frozen=True)
class ConsumerSpec:
    mesh_stack: str
    """<organization>/<project>/<stack> of the mesh stack."""
    service: ServiceSpec
    allow_from: tuple[str, ...]
    admin_cidrs: tuple[str, ...]
    mesh_creates_servers: bool
    """The mesh stack created its Consul servers (its agents join by cloud auto-join), rather
    than using an existing cluster: the new VM then needs ec2:DescribeInstances."""

    @property
    def mesh_stack_name(self) -> str:
        return self.mesh_stack.rsplit("/", 1)[-1]


def _service_problems(problems: Sequence[str], name: str) -> list[str]:
    """load_service's messages, with its keys (services.<name>.port) renamed to this project's."""
    renamed = []
    for problem in problems:
        key, _, rest = problem.partition(": ")
        if key == f"services.{name}":
            key = "service"
        else:
            key = key.removeprefix(f"services.{name}.")
        renamed.append(f"{key}: {rest}")
    return renamed


def load_consumer_spec(raw: Mapping[str, Any]) -> ConsumerSpec:
    """This project's config (keys without the namespace; values as text or decoded), validated.

    Raises MeshSpecError listing every problem, each naming its key and value.
    """
    problems = Problems()
    unknown_keys(raw, KEYS, "", problems)  # the mesh's own check: a typo named, with the key it meant
    mesh_stack = raw.get("meshStack")
    if not isinstance(mesh_stack, str) or not MESH_STACK.fullmatch(mesh_stack):
        problems.add("meshStack", mesh_stack, "is not <organization>/<project>/<stack> (the mesh stack to build on)")

    name = raw.get("service", "reports")
    service_raw: dict[str, Any] = {}
    port = raw.get("port")
    if port is None or port == "":
        problems.items.append("port: is missing: set the port the new service's application listens on (1-65535)")
    else:
        # `pulumi config set port 9400` stores text; an integer in the stack file arrives as text too.
        service_raw["port"] = int(port) if isinstance(port, str) and re.fullmatch(r"\s*-?\d+\s*", port) else port
    if raw.get("command") not in (None, ""):
        service_raw["command"] = raw["command"]
    instances = raw.get("instances")
    if instances not in (None, ""):
        # As `port`: `pulumi config set instances 3` stores text.
        service_raw["instances"] = (
            int(instances) if isinstance(instances, str) and re.fullmatch(r"\s*-?\d+\s*", instances) else instances
        )
    service = None
    try:
        service = load_service(name, service_raw)
    except MeshSpecError as err:
        problems.items += [
            p for p in _service_problems(err.problems, str(name)) if not (port is None and p.startswith("port:"))
        ]

    allow_from = json_list(raw.get("allowFrom", ["web"]), "allowFrom", problems)
    seen = set()
    for index, source in enumerate(allow_from):
        key = f"allowFrom[{index}]"
        if not isinstance(source, str) or not DNS_LABEL.fullmatch(source):
            problems.add(key, source, "is not a service name (a DNS label)")
        elif source == name:
            problems.add(key, source, "is the new service itself: a service needs no intention to call itself")
        elif source in seen:
            problems.add(key, source, "is listed twice")
        seen.add(source)

    admin_cidrs = cidr_list(raw.get("adminCidrs", []), "adminCidrs", problems)
    creates = boolean(raw.get("meshCreatesServers", True), "meshCreatesServers", problems)

    if problems.items or service is None or creates is None:
        raise MeshSpecError(problems.items)
    return ConsumerSpec(
        mesh_stack=str(mesh_stack),
        service=service,
        allow_from=tuple(allow_from),
        admin_cidrs=admin_cidrs,
        mesh_creates_servers=creates,
    )


def read_config(config: pulumi.Config) -> ConsumerSpec:
    """Every key set in this project's namespace, known or not (as the mesh's program.read_config),
    so that a misspelled one (allowfrom) is named rather than ignored."""
    prefix = f"{config.name}:"
    keys = {k for k in pulumi.runtime.config.CONFIG.get() if k.startswith(prefix)}
    keys |= {k for k in pulumi.runtime.config.get_config_env() if k.startswith(prefix)}
    names = {k[len(prefix) :] for k in keys} | KEYS
    return load_consumer_spec({k: v for k in sorted(names) if (v := config.get(k)) is not None})


def check_against_mesh(spec: ConsumerSpec, outputs: Mapping[str, Any]) -> list[str]:
    """What the config says that the mesh stack's outputs contradict: one message per problem."""
    problems = []
    where = f"mesh stack {spec.mesh_stack!r}"
    services = sorted((outputs.get("services") or {}).keys())
    for index, source in enumerate(spec.allow_from):
        if source not in services:
            close = difflib.get_close_matches(source, services, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its services: {', '.join(services) or 'none'}"
            problems.append(f"allowFrom[{index}]: {source!r} is not a service of {where} ({hint})")
    if spec.service.name in services:
        problems.append(
            f"service: {spec.service.name!r} is already a service of {where}: choose another name "
            "(one service's VMs and intentions belong to one project)"
        )
    else:
        # The mesh's own rule (spec.node_prefix_clash), both ways: no service's nodes may fall under
        # another's node prefix, which that service's VMs may write.
        clash = node_prefix_clash(spec.service.name, services)
        if clash:
            problems.append(f"service: {spec.service.name!r} {clash} (a service of {where})")
        for other in services:
            clash = node_prefix_clash(other, [spec.service.name])
            if clash:
                problems.append(f"service: {spec.service.name!r}: {where} has service {other!r}, which {clash}")

    retry_join = list(outputs.get("consulRetryJoin") or [])
    auto_join, has_servers = is_cloud_auto_join(retry_join), outputs.get("consulServers") is not None
    if auto_join != has_servers:
        problems.append(
            f"meshCreatesServers: {where} is inconsistent: consulRetryJoin {retry_join} "
            f"{'uses' if auto_join else 'does not use'} cloud auto-join, yet it "
            f"{'exports' if has_servers else 'does not export'} consulServers"
        )
    elif auto_join != spec.mesh_creates_servers:
        problems.append(
            f"meshCreatesServers: {str(spec.mesh_creates_servers).lower()} disagrees with {where}: "
            + (
                f"it created its Consul servers and its agents join by cloud auto-join ({retry_join[0]})"
                if auto_join
                else f"it uses an existing cluster, whose agents join {retry_join}"
            )
            + f": set meshCreatesServers to {str(auto_join).lower()}"
        )

    login = outputs.get("consulLogin") or {}
    prefix, path = login_prefix(spec.mesh_stack_name), iam_path(spec.mesh_stack_name)
    if (login.get("prefix"), login.get("iamPath")) != (prefix, path):
        problems.append(
            f"meshStack: {spec.mesh_stack!r}: its consulLogin output has prefix {login.get('prefix')!r} and "
            f"iamPath {login.get('iamPath')!r}, not {prefix!r} and {path!r} as derived from its name"
        )
    return problems


def after(gate: pulumi.Output[Any]) -> pulumi.ResourceTransformation:
    """A transformation making a resource (and, on a component, each of its children) wait for
    `gate`: when the gate fails, none of them is created."""

    def transform(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult:
        waits = pulumi.ResourceOptions(depends_on=gate.apply(lambda _: []))
        return pulumi.ResourceTransformationResult(args.props, pulumi.ResourceOptions.merge(args.opts, waits))

    return transform


def build(spec: ConsumerSpec) -> dict[str, Any]:
    """Declare the new VM, its service-defaults and its intentions on top of the mesh stack; return
    the stack outputs."""
    service = spec.service
    mesh = pulumi.StackReference(spec.mesh_stack)
    out = mesh.require_output

    def check(outputs: dict[str, Any]) -> bool:
        problems = check_against_mesh(spec, outputs)
        if problems:
            listed = "\n".join(f"  - {p}" for p in problems)
            raise pulumi.RunError(f"{PROJECT}: the config does not match the mesh stack:\n{listed}")
        return True

    checked = pulumi.Output.all(
        services=out("services"),
        consulRetryJoin=out("consulRetryJoin"),
        consulServers=mesh.get_output("consulServers"),
        consulLogin=out("consulLogin"),
    ).apply(check)
    wait = pulumi.ResourceOptions(transformations=[after(checked)])

    address = out("consulHttpAddr").apply(split_http_addr)
    provider = consul.Provider(
        "consul",
        address=address.apply(lambda a: a[1]),
        scheme=address.apply(lambda a: a[0]),
        datacenter=out("consulDatacenter"),
        token=pulumi.Output.secret(out("consulManagementToken")),
        ca_pem=mesh.get_output("consulCaPem"),
        opts=wait,
    )
    with_consul = pulumi.ResourceOptions.merge(wait, pulumi.ResourceOptions(providers=[provider]))

    defaults = service_defaults(f"{service.name}-defaults", service.name, service.protocol, with_consul)
    login = out("consulLogin")
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
                # Checked against consulRetryJoin and consulServers above.
                cloud_auto_join=spec.mesh_creates_servers,
            ),
            # The VM logs in to the mesh stack's auth methods; its roles carry the mesh stack's prefix
            # (derived from its name, checked against consulLogin above).
            login=LoginArgs(
                prefix=login_prefix(spec.mesh_stack_name),
                iam_path=iam_path(spec.mesh_stack_name),
                server_id=login.apply(lambda v: v["serverId"]),
                http_addrs=login.apply(lambda v: v["httpAddrs"]),
                gossip_key_path=login.apply(lambda v: v["gossipKeyPath"] or ""),
            ),
            subnet_id=out("subnetIds").apply(lambda ids: ids[0]),
            # A service of many instances (its `instances` key) spreads over all of them.
            subnet_ids=out("subnetIds"),
            vpc_id=out("vpcId"),
            mesh_security_group_id=out("meshSecurityGroupId"),
            admin_cidrs=spec.admin_cidrs,
            tags={"consul-tproxy-vms:stack": pulumi.get_stack(), "consul-tproxy-vms:project": PROJECT},
            # The provider goes to the VM's Consul roles alone: its instance does not wait for it.
            consul_provider=provider,
        ),
        opts=wait,
    )
    intentions = ServiceIntentions(
        "intentions",
        ServiceIntentionsArgs(
            intentions=[
                IntentionSpec(source, service.name, "allow", f"{source} calls {service.name}")
                for source in spec.allow_from
            ]
        ),
        opts=pulumi.ResourceOptions.merge(with_consul, pulumi.ResourceOptions(depends_on=[defaults])),
    )
    return {
        "service": vm.summary(),
        "intentions": intentions.applied,
    }


def main() -> dict[str, Any]:
    try:
        spec = read_config(pulumi.Config(PROJECT))
    except MeshSpecError as err:
        listed = "\n".join(f"  - {p}" for p in err.problems)
        # RunError: Pulumi prints the message alone, without a traceback; nothing was declared.
        raise pulumi.RunError(f"invalid stack config for {PROJECT}:\n{listed}") from None
    outputs = build(spec)
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
