"""The stack: config -> validated spec -> components -> outputs.

`main()` is what `pulumi up` runs (through __main__.py). `build()` declares the resources of a
validated spec and returns the stack outputs, so tests and tools run it under Pulumi's mocks.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_consul as consul

from . import ec2
from .consul_server import ConsulServer, ConsulServerArgs, auto_join
from .gateway_entries import ApiGatewayEntries, ApiGatewayEntriesArgs
from .gateway_vm import GatewayVm, GatewayVmArgs
from .identity import MeshIdentity, MeshIdentityArgs, gossip_key_path, iam_path, login_prefix, policy_name_for
from .intentions import ServiceIntentions, ServiceIntentionsArgs
from .mesh_defaults import MeshDefaults, MeshDefaultsArgs
from .mesh_ready import MeshReady, intention_keys, probed_services
from .mesh_vm import ConsulJoinArgs, LoginArgs, MeshVm, MeshVmArgs
from .network import ZONE_QUERY, MeshNetwork, MeshNetworkArgs, address_problems, offering_zones, offerings_query
from .readiness import ConsulReady
from .spec import (
    DEPLOYER,
    ENVOY_METRICS_PORT,
    PROJECT,
    SECRET_KEYS,
    TOP_LEVEL_KEYS,
    IntentionSpec,
    MeshSpec,
    MeshSpecError,
    load_spec,
    split_http_addr,
)
from .splits import TrafficSplits, TrafficSplitsArgs
from .userdata import Login, user_data_problems

# Answers with the caller's public IPv4 address; used only when adminCidrs names "deployer".
DEPLOYER_LOOKUP_URL = "https://checkip.amazonaws.com"


def read_config() -> dict[str, Any]:
    """Raw values of every config key set in this project's namespace, known or not.

    Unknown keys are kept so that validation can name a typo. Secret values are only checked for
    presence and shape here; the program reads them as secret Outputs.
    """
    prefix = f"{PROJECT}:"
    keys = {k for k in pulumi.runtime.config.CONFIG.get() if k.startswith(prefix)}
    keys |= {k for k in pulumi.runtime.config.get_config_env() if k.startswith(prefix)}
    keys |= {prefix + k for k in TOP_LEVEL_KEYS}
    raw = {}
    for key in sorted(keys):
        value = pulumi.runtime.get_config(key)
        if value is not None:
            raw[key[len(prefix) :]] = value
    for message in foreign_keys(set(pulumi.runtime.config.CONFIG.get()) | set(pulumi.runtime.config.get_config_env())):
        pulumi.log.warn(message)
    return raw


def foreign_keys(keys: set[str]) -> list[str]:
    """Config keys outside this project's namespace that look like its keys: set without the prefix
    (`pulumi config set services ...` in a project named otherwise) or with a misspelled one. Pulumi
    hands them to no program, so they would be ignored without a word."""
    found = []
    for key in sorted(keys):
        namespace, _, name = key.rpartition(":")
        if namespace == PROJECT or namespace in ("aws", "consul", "pulumi", "random", "tls"):
            continue
        if name in TOP_LEVEL_KEYS:
            found.append(
                f"config key {key!r} is not in the {PROJECT!r} namespace, so it is ignored: set it as {PROJECT}:{name}"
            )
    return found


def dns_policy_name(stack: str) -> str:
    """The DNS tokens' policy: named like the stack's other Consul objects (identity.login_prefix),
    within Consul's limit for policy names."""
    return policy_name_for(f"{login_prefix(stack)}-dns-read")


def join_tag_value(stack: str) -> str:
    """The EC2 tag value that marks this stack's servers: unique per project and stack."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{PROJECT}-{stack}")[:255]


def deployer_cidr(url: str = DEPLOYER_LOOKUP_URL, timeout: float = 10.0) -> str:
    """This machine's public IPv4 address as a /32, as `url` (which answers the caller's address) sees it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer = response.read(64).decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as err:
        raise MeshSpecError([f"adminCidrs: {DEPLOYER!r} could not be resolved: {url} did not answer ({err})"]) from None
    try:
        address = ipaddress.IPv4Address(answer)
    except ValueError:
        raise MeshSpecError(
            [f"adminCidrs: {DEPLOYER!r} could not be resolved: {url} answered {answer!r}, not an IPv4 address"]
        ) from None
    return f"{address}/32"


def resolve_admin_cidrs(spec: MeshSpec, lookup: Callable[[], str] = deployer_cidr) -> MeshSpec:
    """Replace the "deployer" entry of adminCidrs (and of gateway.allowCidrs) with this machine's
    address (looked up once)."""
    if DEPLOYER not in spec.admin_cidrs and (spec.gateway is None or DEPLOYER not in spec.gateway.allow_cidrs):
        return spec
    deployer = lookup()
    cidrs = {c for c in spec.admin_cidrs if c != DEPLOYER} | {deployer}
    spec = replace(spec, admin_cidrs=tuple(sorted(cidrs)))
    if spec.gateway is not None and DEPLOYER in spec.gateway.allow_cidrs:
        allow = {c for c in spec.gateway.allow_cidrs if c != DEPLOYER} | {deployer}
        spec = replace(spec, gateway=replace(spec.gateway, allow_cidrs=tuple(sorted(allow))))
    return spec


@dataclass(frozen=True)
class Cluster:
    """How the stack reaches its Consul cluster, the same record in either mode (servers it creates,
    or an existing cluster): what the gate, the provider, the VMs and the outputs are made from."""

    http_addr: pulumi.Input[str]
    """https://host:port of the API, as Pulumi reaches it from the deploying machine."""
    token: pulumi.Output[str]
    """The management token (secret)."""
    ca_pem: pulumi.Input[str] | None
    """The servers' CA; None: no TLS (an existing cluster without consulCaPem)."""
    gossip: pulumi.Output[str] | None
    """The gossip key (secret); None: the cluster has none."""
    retry_join: Any
    """What the agents join: the servers' cloud auto-join string, or consulRetryJoin."""
    ready_after: list[pulumi.Resource]
    """What the cluster's gate waits for besides the network path."""
    triggers: list[pulumi.Output[str]]
    """Values whose change makes the gate wait again (the servers' instance ids)."""
    expect_voters: int | None
    """How many healthy voters the gate waits for; None: any."""
    login_addrs: pulumi.Input[list[str]]
    """The API addresses VMs log in at (private addresses)."""
    vms_after: list[pulumi.Resource]
    """What every VM's instance (or launch template and group) is created after."""
    server: ConsulServer | None = None
    """The servers the stack creates; None for an existing cluster."""


@dataclass(frozen=True)
class Placement:
    """Where and how every VM of the stack is placed: the same for the mesh VMs and the gateway."""

    network: MeshNetwork
    image: Any
    tags: dict[str, str]
    after: list[pulumi.Resource]
    """What the VMs' instances are created after (Cluster.vms_after)."""
    provider: consul.Provider
    """Given to each VM's Consul roles alone (MeshVmArgs.consul_provider)."""


def build(
    spec: MeshSpec, consul_token: pulumi.Input[str] | None = None, gossip_key: pulumi.Input[str] | None = None
) -> dict[str, Any]:
    """Declare the mesh described by `spec`; return the stack outputs (camelCase names).

    `consul_token` and `gossip_key` are the existing cluster's (secrets); a stack that creates its
    servers generates its own and takes neither.
    """
    stack = pulumi.get_stack()
    tags = {"consul-tproxy-vms:stack": stack}
    network = declare_network(spec, tags)
    # One image for the whole stack, chosen once: a newer Ubuntu release replaces nothing until the
    # image generation (or amiId) changes (components/image.py). Servers then go one at a time.
    image = ec2.pinned_image("image", None, ami_id=spec.ami_id, generation=spec.image_generation)
    if spec.servers is not None:
        cluster = declare_servers(spec, stack, network, image, tags)
    else:
        cluster = existing_cluster(spec, network, consul_token, gossip_key)
    ready = declare_consul_ready(spec, cluster, network)
    provider = declare_consul_provider(spec, cluster, ready)
    defaults = declare_defaults(spec, stack, provider)
    declare_identity(spec, stack, cluster, defaults, provider)
    join, login = vm_join_and_login(spec, stack, cluster)
    placement = Placement(network, image, tags, cluster.vms_after, provider)
    vms = declare_vms(spec, join, login, placement)
    gateway = declare_gateway(spec, join, login, placement, defaults)
    # The gateway's intentions to its routed services join the destinations' entries: Consul keeps
    # one service-intentions entry per destination (components/intentions.py).
    all_intentions = (*spec.intentions, *(spec.gateway.intentions() if spec.gateway else ()))
    intentions, splits = declare_traffic(all_intentions, spec, provider, defaults)
    if spec.mesh_ready_timeout_seconds:
        declare_mesh_ready(spec, cluster, vms, gateway, all_intentions, [intentions, defaults, splits])
    return stack_outputs(spec, stack, cluster, network, defaults, login, vms, intentions, gateway)


def declare_network(spec: MeshSpec, tags: dict[str, str]) -> MeshNetwork:
    """The VPC and its subnets (created, or the given subnetIds) and the mesh membership group."""
    net = spec.network
    return MeshNetwork(
        "network",
        MeshNetworkArgs(
            subnet_ids=net.subnet_ids,
            vpc_id=net.vpc_id,
            vpc_cidr=net.vpc_cidr,
            subnet_cidrs=net.subnet_cidrs() if net.creates_vpc else (),
            zones=net.zones,
            tags=tags,
        ),
    )


def declare_servers(spec: MeshSpec, stack: str, network: MeshNetwork, image: Any, tags: dict[str, str]) -> Cluster:
    """The Consul servers the stack creates (components/consul_server.py), and how to reach them."""
    assert spec.servers is not None
    server = ConsulServer(
        "consul-server",
        ConsulServerArgs(
            datacenter=spec.datacenter,
            consul_version=spec.consul_version,
            count=spec.servers.count,
            instance_type=spec.servers.instance_type,
            join_tag_value=join_tag_value(stack),
            subnet_ids=network.subnet_ids,
            vpc_id=network.vpc_id,
            mesh_security_group_id=network.mesh_security_group_id,
            admin_cidrs=spec.admin_cidrs,
            ami_id=image.image_id,
            key_name=spec.ssh_key_name,
            tags=tags,
            zones=network.zones,
            network_path=network.path,
            ready_timeout_seconds=spec.ready_timeout_seconds,
            protect_data=spec.protect_server_data,
            login_prefix=login_prefix(stack),
            iam_path=iam_path(stack),
            region=aws.get_region_output().region,
        ),
    )
    return Cluster(
        http_addr=server.http_addr,
        token=server.management_token,
        ca_pem=server.ca_pem,
        gossip=server.gossip_key,
        retry_join=server.retry_join,
        # The last server's gate closes the one-at-a-time chain; the API's association and admin
        # rules are what carries the requests.
        ready_after=[*server.gates[-1:], *server.api_access],
        triggers=server.instance_ids,
        expect_voters=spec.servers.count,
        # Server 0's private address only: it is stable (its own network interface) and exists whatever
        # serverCount is, so growing or shrinking the cluster never changes (and so replaces) a VM's
        # user data. Its Consul forwards a login to the leader; while it is down, logins retry.
        login_addrs=pulumi.Output.all(*server.private_https_addrs[:1]),
        # The VMs wait for the servers' instances (the last server's gate, which waits for nothing
        # when first created and for a healthy voter after a replacement), never for anything Consul
        # produces: on an upgrade the servers go first, as Consul's upgrade guide asks
        # (developer.hashicorp.com/consul/docs/upgrade: servers, then clients).
        vms_after=[*server.gates[-1:], *network.path],
        server=server,
    )


def existing_cluster(
    spec: MeshSpec,
    network: MeshNetwork,
    consul_token: pulumi.Input[str] | None,
    gossip_key: pulumi.Input[str] | None,
) -> Cluster:
    """An existing cluster (consulHttpAddr), reached with its token (consulToken)."""
    existing = spec.consul
    assert existing is not None
    if consul_token is None:
        raise ValueError("build: an existing cluster needs its token (consulToken)")
    return Cluster(
        http_addr=existing.http_addr,
        token=pulumi.Output.secret(consul_token),
        ca_pem=existing.ca_pem,
        gossip=pulumi.Output.secret(gossip_key) if gossip_key is not None else None,
        retry_join=list(existing.retry_join),
        ready_after=[],
        triggers=[],
        expect_voters=None,
        login_addrs=[existing.http_addr],
        # Their first boot installs packages: after the route to the internet (of a created VPC).
        vms_after=list(network.path),
    )


def declare_consul_ready(spec: MeshSpec, cluster: Cluster, network: MeshNetwork) -> ConsulReady:
    """The gate that exists once the cluster has a leader and accepts the token; then the mesh
    members may reach the API of servers the stack created (no bootstrap window).

    The gate depends on the network path to the API (gateway, route, route-table associations)
    as well: `pulumi destroy` deletes a resource only after everything that depends on it, so
    every Consul object, the provider and the gate are gone before the route to Consul is."""
    ready = ConsulReady(
        "consul-ready",
        http_addr=cluster.http_addr,
        token=cluster.token,
        ca_pem=cluster.ca_pem,
        timeout_seconds=spec.ready_timeout_seconds,
        triggers=cluster.triggers,
        expect_voters=cluster.expect_voters,
        # Servers the stack creates carry no management token: the gate bootstraps ACLs with it.
        bootstrap=spec.creates_servers,
        opts=pulumi.ResourceOptions(depends_on=[*cluster.ready_after, *network.path]),
    )
    if cluster.server is not None:
        cluster.server.admit_mesh_to_api([ready])
    return ready


def declare_consul_provider(spec: MeshSpec, cluster: Cluster, ready: ConsulReady) -> consul.Provider:
    """The consul provider every Consul object goes through.

    It is configured from values known at preview (the API's fixed address, the token, the CA),
    never from the gate's outputs: with a server being replaced, an unknown provider configuration
    would show a change to every Consul object in preview that the update never makes. It is
    ordered after the gate instead."""
    address = pulumi.Output.from_input(cluster.http_addr).apply(split_http_addr)
    return consul.Provider(
        "consul",
        address=address.apply(lambda a: a[1]),
        scheme=address.apply(lambda a: a[0]),
        datacenter=spec.datacenter,
        token=pulumi.Output.secret(cluster.token),
        ca_pem=cluster.ca_pem,
        opts=pulumi.ResourceOptions(depends_on=[ready]),
    )


def declare_defaults(spec: MeshSpec, stack: str, provider: consul.Provider) -> MeshDefaults:
    """The mesh and proxy defaults, each service's protocol, and the DNS tokens' policy."""
    return MeshDefaults(
        "defaults",
        MeshDefaultsArgs(
            mesh_destinations_only=spec.mesh_destinations_only,
            protocols={name: svc.protocol for name, svc in spec.services.items()},
            dns_policy_name=dns_policy_name(stack),
            datacenter=spec.datacenter,
            access_logs=spec.access_logs,
            envoy_metrics=spec.envoy_metrics,
        ),
        opts=pulumi.ResourceOptions(providers=[provider]),
    )


def declare_identity(
    spec: MeshSpec, stack: str, cluster: Cluster, defaults: MeshDefaults, provider: consul.Provider
) -> MeshIdentity:
    """How VMs log in to Consul with their instance roles (components/identity.py): names derived
    from the stack alone, so nothing a VM's creation needs comes from Consul."""
    return MeshIdentity(
        "identity",
        MeshIdentityArgs(
            prefix=login_prefix(stack),
            account_id=aws.get_caller_identity_output().account_id,
            partition=aws.get_partition_output().partition,
            iam_path=iam_path(stack),
            dns_policy_name=defaults.dns_policy_name,
            gossip_key=cluster.gossip,
            servers=spec.creates_servers,
        ),
        opts=pulumi.ResourceOptions(providers=[provider]),
    )


def vm_join_and_login(spec: MeshSpec, stack: str, cluster: Cluster) -> tuple[ConsulJoinArgs, LoginArgs]:
    """How every VM's agent joins the cluster, and how the VM logs in at boot."""
    prefix = login_prefix(stack)
    join = ConsulJoinArgs(datacenter=spec.datacenter, retry_join=cluster.retry_join, ca_pem=cluster.ca_pem)
    login = LoginArgs(
        prefix=prefix,
        iam_path=iam_path(stack),
        server_id=prefix,
        http_addrs=cluster.login_addrs,
        gossip_key_path=gossip_key_path(prefix) if cluster.gossip is not None else "",
    )
    return join, login


def declare_vms(spec: MeshSpec, join: ConsulJoinArgs, login: LoginArgs, placement: Placement) -> dict[str, MeshVm]:
    """Each service's VMs (components/mesh_vm.py): one VM, or an Auto Scaling group of them."""
    return {
        name: MeshVm(
            name,
            MeshVmArgs(
                service=svc,
                # A group spreads over every subnet.
                subnet_ids=placement.network.subnet_ids,
                metrics_port=ENVOY_METRICS_PORT if spec.envoy_metrics else None,
                **vm_args(spec, name, join, login, placement),
            ),
        )
        for name, svc in sorted(spec.services.items())
    }


def vm_args(spec: MeshSpec, name: str, join: ConsulJoinArgs, login: LoginArgs, placement: Placement) -> dict[str, Any]:
    """What every VM of the stack is given, a mesh service's or the gateway's (MeshVmArgs,
    GatewayVmArgs): versions, cluster and login, placement, access, image, tags and ordering."""
    network = placement.network
    return {
        "consul_version": spec.consul_version,
        "envoy_version": spec.envoy_version,
        "cluster": join,
        "login": login,
        # Placement by the VM's name alone: other services never move it.
        "subnet_id": network.subnet_for(name),
        "vpc_id": network.vpc_id,
        "mesh_security_group_id": network.mesh_security_group_id,
        "admin_cidrs": spec.admin_cidrs,
        "ami_id": placement.image.image_id,
        "key_name": spec.ssh_key_name,
        "tags": placement.tags,
        "instance_after": placement.after,
        # To its Consul resources alone: the instance does not wait for the gate.
        "consul_provider": placement.provider,
    }


def declare_gateway(
    spec: MeshSpec, join: ConsulJoinArgs, login: LoginArgs, placement: Placement, defaults: MeshDefaults
) -> tuple[GatewayVm, ApiGatewayEntries] | None:
    """The API gateway (config `gateway`): its VM, and its config entries after the service-defaults
    (an http-route's services must be HTTP-like when it is written). None without one."""
    if spec.gateway is None:
        return None
    gateway = spec.gateway
    vm = GatewayVm(gateway.name, GatewayVmArgs(gateway=gateway, **vm_args(spec, gateway.name, join, login, placement)))
    entries = ApiGatewayEntries(
        f"{gateway.name}-entries",
        ApiGatewayEntriesArgs(gateway=gateway),
        opts=pulumi.ResourceOptions(providers=[placement.provider], depends_on=[defaults]),
    )
    return vm, entries


def declare_traffic(
    all_intentions: tuple[IntentionSpec, ...], spec: MeshSpec, provider: consul.Provider, defaults: MeshDefaults
) -> tuple[ServiceIntentions, TrafficSplits]:
    """Who may call whom (the intentions) and where calls go (the splits). Both wait for the
    service-defaults: L7 rules and splits are accepted for HTTP-like services only."""
    after_defaults = pulumi.ResourceOptions(providers=[provider], depends_on=[defaults])
    intentions = ServiceIntentions("intentions", ServiceIntentionsArgs(intentions=all_intentions), opts=after_defaults)
    splits = TrafficSplits("splits", TrafficSplitsArgs(splits=spec.splits), opts=after_defaults)
    return intentions, splits


def declare_mesh_ready(
    spec: MeshSpec,
    cluster: Cluster,
    vms: dict[str, MeshVm],
    gateway: tuple[GatewayVm, ApiGatewayEntries] | None,
    all_intentions: tuple[IntentionSpec, ...],
    config_entries: list[pulumi.Resource],
) -> MeshReady:
    """`pulumi up` ends once the mesh works (components/mesh_ready.py), asked of the API the
    provider uses; its instance ids, the services and the intentions make a later `up` wait again."""
    gateway_vms = {spec.gateway.name: gateway[0]} if spec.gateway and gateway else {}
    gateway_entries = [gateway[1]] if gateway else []
    return MeshReady(
        "mesh-ready",
        http_addr=cluster.http_addr,
        token=cluster.token,
        ca_pem=cluster.ca_pem,
        region=aws.get_region_output().region,
        # A group's VMs are not known to the stack: any of its nodes count, up to its size.
        instances={name: [vm.instance_id] if vm.instance_id is not None else [] for name, vm in vms.items()}
        | {name: [vm.instance_id] for name, vm in gateway_vms.items()},
        expected={name: vm.instances for name, vm in vms.items()} | dict.fromkeys(gateway_vms, 1),
        probes=probed_services(spec.services, spec.intentions, spec.splits),
        intentions=intention_keys(all_intentions),
        timeout_seconds=spec.mesh_ready_timeout_seconds,
        opts=pulumi.ResourceOptions(
            depends_on=[*vms.values(), *config_entries, *gateway_vms.values(), *gateway_entries]
        ),
        gateways=list(gateway_vms),
        # A group's nodes of its current recipe alone: not the lone VM it replaces, nor the VMs an
        # instance refresh is replacing; a new recipe makes the gate wait for the refresh's VMs.
        node_meta={name: vm.node_meta for name, vm in vms.items() if vm.node_meta is not None},
    )


def stack_outputs(
    spec: MeshSpec,
    stack: str,
    cluster: Cluster,
    network: MeshNetwork,
    defaults: MeshDefaults,
    login: LoginArgs,
    vms: dict[str, MeshVm],
    intentions: ServiceIntentions,
    gateway: tuple[GatewayVm, ApiGatewayEntries] | None,
) -> dict[str, Any]:
    """The stack outputs (camelCase): the contract other projects read through stack references."""
    prefix = login_prefix(stack)
    outputs: dict[str, Any] = {}
    if cluster.server is not None:
        outputs["consulServers"] = cluster.server.servers
    outputs.update(
        {
            "services": {name: vm.summary() for name, vm in vms.items()},
            "intentions": intentions.applied,
            "consulHttpAddr": cluster.http_addr,
            "consulUiUrl": pulumi.Output.from_input(cluster.http_addr).apply(lambda a: f"{a}/ui/"),
            "consulDatacenter": spec.datacenter,
            "consulRetryJoin": cluster.retry_join,
            "consulCaPem": cluster.ca_pem,
            "consulManagementToken": pulumi.Output.secret(cluster.token),
            "consulVersion": spec.consul_version,
            "envoyVersion": spec.envoy_version,
            "dnsPolicyName": defaults.dns_policy_name,
            # What a VM of another project needs to log in like the mesh's own (examples/consumer).
            "consulLogin": {
                "prefix": prefix,
                "iamPath": iam_path(stack),
                "serverId": prefix,
                "httpAddrs": cluster.login_addrs,
                "gossipKeyPath": login.gossip_key_path,
            },
            "vpcId": network.vpc_id,
            "subnetIds": network.subnet_ids,
            "meshSecurityGroupId": network.mesh_security_group_id,
        }
    )
    if cluster.gossip is not None:
        outputs["consulGossipKey"] = cluster.gossip
    if gateway is not None:
        outputs["gatewayUrl"] = gateway[0].url
    return outputs


# The one AWS partition whose logins Consul 1.22 can check. With -aws-include-entity the login signs
# iam:GetRole on a session made without a region or endpoint (hashicorp/consul internal/iamauth/
# util.go formatSignedEntityRequest), which aws-sdk-go resolves to the aws partition's global IAM
# endpoint; and without an STSEndpoint in the method's config the servers accept only STS hosts under
# .amazonaws.com (internal/iamauth/token.go validateSTSHostname), which aws-cn's are not.
SUPPORTED_PARTITIONS = ("aws",)


def partition_problems(partition: str) -> list[str]:
    """The stack's AWS partition, refused before anything is declared unless VMs can log in there."""
    if partition in SUPPORTED_PARTITIONS:
        return []
    return [
        f"aws:region: the {partition!r} partition is not supported: Consul's aws-iam login signs its "
        "iam:GetRole request for the aws partition's global IAM endpoint (internal/iamauth/util.go), so no "
        "VM could log in; deploy to a region of the aws partition"
    ]


def region_partition() -> str:
    """The partition of the stack's region, asked of AWS before anything is declared."""
    return str(aws.get_partition().partition)


# Zones of the region offering instance types: a function of the types, asked of AWS (once per
# set of types, see main).
ZonesOf = Callable[[tuple[str, ...]], list[str]]
ArchitecturesOf = Callable[[str], list[str]]
# The architecture of the Ubuntu image the VMs boot (ec2.UBUNTU_IMAGE: amd64) as AWS names it.
IMAGE_ARCHITECTURE = "x86_64"


def region_zones(instance_types: tuple[str, ...]) -> list[str]:
    """The zones the stack's subnets can go into: available ones (ZONE_QUERY) offering every one of
    `instance_types`, in the region's order; asked of AWS before anything is declared."""
    names = list(aws.get_availability_zones(**ZONE_QUERY).names)
    offers = aws.ec2.get_instance_type_offerings(**offerings_query(instance_types))
    return offering_zones(names, zip(offers.instance_types, offers.locations, strict=True), instance_types)


def instance_architectures(instance_type: str) -> list[str]:
    """The architectures AWS reports for an instance type (e.g. ["arm64"] for t4g.small)."""
    return list(aws.ec2.get_instance_type(instance_type=instance_type).supported_architectures)


def instance_type_keys(spec: MeshSpec) -> dict[str, list[str]]:
    """Each EC2 instance type of the stack, with the config keys that choose it."""
    keys: dict[str, list[str]] = {}
    if spec.servers is not None:
        keys.setdefault(spec.servers.instance_type, []).append("serverInstanceType")
    for name, svc in sorted(spec.services.items()):
        keys.setdefault(svc.instance_type, []).append(f"services.{name}.instanceType")
    if spec.gateway is not None:
        keys.setdefault(spec.gateway.instance_type, []).append("gateway.instanceType")
    return keys


def resolve_zones(spec: MeshSpec, zones: ZonesOf) -> MeshSpec:
    """The spec with the zones its created subnets go into (the first zoneCount of `zones`)."""
    if not spec.network.creates_vpc:
        return spec
    chosen = zones(tuple(sorted(instance_type_keys(spec))))[: spec.network.zone_count]
    return replace(spec, network=replace(spec.network, zones=tuple(chosen)))


def preflight(
    spec: MeshSpec, stack: str, zones: ZonesOf | None, architectures: ArchitecturesOf | None = None
) -> list[str]:
    """What the spec cannot tell alone but must be refused before any resource is declared: more
    zones than the region has offering the stack's instance types (`zones` asks AWS), an instance
    type the image cannot boot on (`architectures` asks AWS; either None skips its check, for the
    offline render), subnets to create with too few addresses for what is placed in them, and user
    data over EC2's limit (rendered with stand-ins of the real values' length)."""
    problems = []
    types = instance_type_keys(spec)
    if spec.network.creates_vpc and zones is not None:
        available = zones(tuple(sorted(types)))
        if spec.network.zone_count > len(available):
            problems.append(
                f"zoneCount: {spec.network.zone_count} is more than the {len(available)} availability zones "
                f"of this region offering every instance type of the stack ({', '.join(sorted(types))}): "
                f"{', '.join(available) or 'none'}: lower zoneCount, or choose instance types more zones offer"
            )
    if architectures is not None:
        for instance_type, keys in sorted(types.items()):
            reported = architectures(instance_type)
            if IMAGE_ARCHITECTURE not in reported:
                # An arm64 image pin would boot the instance, but whether HashiCorp publishes
                # hashicorp-envoy for arm64 in its apt repository could not be established.
                problems.append(
                    f"{', '.join(keys)}: {instance_type!r} is not an x86_64 instance type (AWS reports "
                    f"{', '.join(reported) or 'no architecture'}): the VMs boot Ubuntu's amd64 image and "
                    "install Consul and Envoy for it; choose an x86_64 type (such as t3.small)"
                )
    if spec.network.creates_vpc:
        server_count = spec.servers.count if spec.servers is not None else 0
        sizes = {name: svc.instances for name, svc in spec.services.items() if svc.instances is not None}
        problems += address_problems(spec.network.subnet_cidrs(), spec.services, server_count, sizes)
    if spec.servers is not None:
        retry_join: tuple[str, ...] = (auto_join(join_tag_value(stack)),)
        ca_pem = None
    else:
        assert spec.consul is not None
        retry_join, ca_pem = spec.consul.retry_join, spec.consul.ca_pem
    prefix = login_prefix(stack)
    servers = spec.servers.count if spec.servers is not None else 1
    login = Login(prefix, prefix, tuple("" for _ in range(servers)), gossip_key_path(prefix))
    problems += user_data_problems(
        spec.services.values(), spec.datacenter, spec.consul_version, spec.envoy_version, retry_join, ca_pem, login
    )
    return problems


def main(deployer_lookup: Callable[[], str] = deployer_cidr) -> dict[str, Any]:
    """Read and validate the stack's config, then declare and export the mesh.

    `deployer_lookup` gives this machine's public address for adminCidrs "deployer" (tests pass
    their own: they never go online).
    """
    try:
        spec = resolve_admin_cidrs(load_spec(read_config()), deployer_lookup)
        zones = cache(region_zones)  # asked of AWS once
        problems = partition_problems(region_partition()) or preflight(
            spec, pulumi.get_stack(), zones, instance_architectures
        )
        if problems:
            raise MeshSpecError(problems)
        spec = resolve_zones(spec, zones)
    except MeshSpecError as err:
        # RunError: Pulumi prints the message alone, without a traceback; nothing was declared.
        raise pulumi.RunError(str(err)) from None
    for message in spec.warnings:
        pulumi.log.warn(message)
    config = pulumi.Config()
    token_key, gossip_key_name = SECRET_KEYS
    outputs = build(spec, config.get_secret(token_key), config.get_secret(gossip_key_name))
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
