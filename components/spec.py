"""The mesh spec: stack config turned into plain, validated dataclasses.

Nothing here declares a Pulumi resource. The program builds a `MeshSpec` before it declares
anything, so a stack with bad config fails with every problem listed and nothing half-created, and
every rule below is unit-tested without the Pulumi runtime.

Raw config arrives as it does from `pulumi config`: strings, with structured keys (`services`,
`intentions`, lists) as JSON text. Already-decoded values are accepted too, which keeps tests short.

load_spec reads the config section by section; each section's dataclasses and loader live in a
module of their own, and every public name of them is this module's too (import from here):
spec_common (patterns, limits, keys and defaults, MeshSpecError), spec_services, spec_splits,
spec_intentions, spec_gateway, and spec_cluster (an existing cluster or the servers to create, and
the network).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import (
    DEPLOYER,
    Problems,
    boolean,
    cidr_list,
    config_integer,
    decode,
    string,
)
from .spec_cluster import (
    ConsulClusterSpec,
    NetworkSpec,
    ServersSpec,
    _existing_cluster,
    _network,
    _servers,
    ca_pem_problem,
    https_addr,
    retry_join_targets,
    split_http_addr,
)
from .spec_common import (
    ACTIONS,
    AMI_ID,
    DATACENTER,
    DEBIAN_PACKAGE,
    DEFAULTS,
    DEMO_HEALTH_PATH,
    DNS_LABEL,
    ENVOY_ADMIN_PORT,
    ENVOY_METRICS_PORT,
    ENVOY_OUTBOUND_PORT,
    ENVOY_PUBLIC_PORT,
    ENVOY_RANGES,
    EXISTING_CLUSTER_KEYS,
    GATEWAY_DEFAULT_PORT,
    GATEWAY_KEYS,
    GATEWAY_LISTENER,
    GATEWAY_NAME,
    HTTP_ADDR,
    HTTP_LIKE,
    HTTP_METHODS,
    INSTANCE_TYPE,
    INTENTION_KEYS,
    MAX_COMMAND,
    MAX_DESCRIPTION,
    MAX_INSTANCES,
    MESH_PACKAGES,
    OPTIONAL_KEYS,
    PERMISSION_HTTP_KEYS,
    PERMISSION_KEYS,
    PROJECT,
    PROTOCOLS,
    REQUIRED,
    RESERVED_NAMES,
    RESERVED_PORTS,
    RESERVED_PREFIX,
    RETRY_JOIN,
    ROUTE_KEYS,
    SECRET_KEYS,
    SECRET_WORDS,
    SERVER_COUNTS,
    SPLIT_KEYS,
    SSH_KEY_NAME,
    SSH_PORT,
    STACK_NAME,
    SUBNET_ID,
    TOP_LEVEL_KEYS,
    URL_PATH,
    VERSION,
    VPC_ID,
    EnvoyRange,
    MeshSpecError,
    _optional,
    check_versions,
    envoy_range,
    envoy_supported,
    looks_secret,
    stack_name_problem,
    unknown_keys,
)
from .spec_gateway import (
    GatewaySpec,
    RouteSpec,
    _gateway,
)
from .spec_intentions import (
    PROBE_REQUEST,
    HeaderSpec,
    IntentionSpec,
    PermissionSpec,
    _intentions,
    headers_label,
    path_label,
    probe_admitted,
)
from .spec_services import (
    RETIRED_SERVICE_KEYS,
    SERVICE_KEYS,
    SERVICE_SCHEMA,
    AppSpec,
    RedirectExclusions,
    ServiceKey,
    ServiceSpec,
    _service,
    load_service,
    node_prefix_clash,
)
from .spec_splits import (
    SplitSpec,
    _splits,
    split_targets,
)

# The spec's parts live in components/spec_*.py; their public names are this module's too.
__all__ = [
    "ACTIONS",
    "AMI_ID",
    "DATACENTER",
    "DEBIAN_PACKAGE",
    "DEFAULTS",
    "DEMO_HEALTH_PATH",
    "DNS_LABEL",
    "ENVOY_ADMIN_PORT",
    "ENVOY_METRICS_PORT",
    "ENVOY_OUTBOUND_PORT",
    "ENVOY_PUBLIC_PORT",
    "ENVOY_RANGES",
    "EVERYWHERE",
    "EXISTING_CLUSTER_KEYS",
    "GATEWAY_DEFAULT_PORT",
    "GATEWAY_KEYS",
    "GATEWAY_LISTENER",
    "GATEWAY_NAME",
    "HTTP_ADDR",
    "HTTP_LIKE",
    "HTTP_METHODS",
    "INSTANCE_TYPE",
    "INTENTION_KEYS",
    "MAX_COMMAND",
    "MAX_DESCRIPTION",
    "MAX_INSTANCES",
    "MESH_PACKAGES",
    "MIN_MESH_READY_SECONDS",
    "OPTIONAL_KEYS",
    "PERMISSION_HTTP_KEYS",
    "PERMISSION_KEYS",
    "PROBE_REQUEST",
    "PROJECT",
    "PROTOCOLS",
    "REQUIRED",
    "RESERVED_NAMES",
    "RESERVED_PORTS",
    "RESERVED_PREFIX",
    "RETIRED_SERVICE_KEYS",
    "RETRY_JOIN",
    "ROUTE_KEYS",
    "SECRET_KEYS",
    "SECRET_WORDS",
    "SERVER_COUNTS",
    "SERVICE_KEYS",
    "SERVICE_SCHEMA",
    "SPLIT_KEYS",
    "SSH_KEY_NAME",
    "SSH_PORT",
    "STACK_NAME",
    "SUBNET_ID",
    "TOP_LEVEL_KEYS",
    "URL_PATH",
    "VERSION",
    "VIRTUAL_IPS",
    "VPC_ID",
    "AppSpec",
    "ConsulClusterSpec",
    "EnvoyRange",
    "GatewaySpec",
    "HeaderSpec",
    "IntentionSpec",
    "MeshSpec",
    "MeshSpecError",
    "NetworkSpec",
    "PermissionSpec",
    "RedirectExclusions",
    "RouteSpec",
    "ServersSpec",
    "ServiceKey",
    "ServiceSpec",
    "SplitSpec",
    "ca_pem_problem",
    "check_versions",
    "envoy_range",
    "envoy_supported",
    "footguns",
    "headers_label",
    "https_addr",
    "load_service",
    "load_spec",
    "looks_secret",
    "node_prefix_clash",
    "path_label",
    "probe_admitted",
    "retry_join_targets",
    "split_http_addr",
    "split_targets",
    "stack_name_problem",
    "unknown_keys",
]


@dataclass(frozen=True)
class MeshSpec:
    """The whole stack: validated config with defaults applied.

    Exactly one of `consul` (an existing cluster) and `servers` (servers to create) is set.
    """

    services: Mapping[str, ServiceSpec]
    intentions: tuple[IntentionSpec, ...]
    consul: ConsulClusterSpec | None = None
    servers: ServersSpec | None = None
    network: NetworkSpec = field(default_factory=NetworkSpec)
    ready_timeout_seconds: int = DEFAULTS["consulReadyTimeoutSeconds"]
    mesh_ready_timeout_seconds: int = DEFAULTS["meshReadyTimeoutSeconds"]
    """How long `pulumi up` waits for the mesh to work (components/mesh_ready.py); 0: no wait."""
    datacenter: str = DEFAULTS["datacenter"]
    consul_version: str = DEFAULTS["consulVersion"]
    envoy_version: str = DEFAULTS["envoyVersion"]
    mesh_destinations_only: bool = DEFAULTS["meshDestinationsOnly"]
    admin_cidrs: tuple[str, ...] = ()
    ssh_key_name: str | None = None
    ami_id: str | None = None
    image_generation: int = 0
    """Raised deliberately to move every VM to the then-newest image (components/image.py)."""
    protect_server_data: bool = False
    """Also `protect` the servers' data volumes (they are always retained on delete)."""
    splits: Mapping[str, tuple[SplitSpec, ...]] = field(default_factory=dict)
    """Service -> its service-splitter's splits (config services.<name>.splits); Consul config only."""
    access_logs: bool = False
    """proxy-defaults AccessLogs: every Envoy logs each request and connection to its journal."""
    envoy_metrics: bool = False
    """proxy-defaults envoy_prometheus_bind_addr: Envoy's Prometheus endpoint on ENVOY_METRICS_PORT."""
    gateway: GatewaySpec | None = None
    """The API gateway (config `gateway`); None: the mesh has no way in from outside."""
    warnings: tuple[str, ...] = ()
    """Valid but probably not meant (see spec.footguns): `pulumi up` and the render print them."""

    def __post_init__(self) -> None:
        if (self.consul is None) == (self.servers is None):
            raise ValueError("a MeshSpec has either an existing cluster (consul) or servers to create, not both")

    @property
    def creates_servers(self) -> bool:
        return self.servers is not None


def load_spec(raw: Mapping[str, Any]) -> MeshSpec:
    """Build the mesh spec from the project's config values (keys without the project prefix).

    Raises MeshSpecError listing every problem; the caller declares nothing in that case.
    """
    problems = Problems()
    unknown_keys(raw, TOP_LEVEL_KEYS, "", problems)
    for name in REQUIRED:
        if raw.get(name) in (None, ""):
            problems.add(name, None, "is missing (see README: Configuration)")

    def get(key: str) -> Any:
        return raw.get(key, DEFAULTS.get(key))

    instance_type = (
        string(get("instanceType"), "instanceType", problems, INSTANCE_TYPE, "an EC2 instance type such as t3.small")
        or DEFAULTS["instanceType"]
    )
    raw_services = _raw_services(raw, problems)
    services = _services(raw_services, instance_type, problems)
    known = set(raw_services)
    splits = _splits(raw_services, services, problems)
    protocols = {name: svc.protocol for name, svc in services.items()}
    intentions = _intentions(get("intentions"), known, problems, protocols)
    datacenter = string(
        get("datacenter"),
        "datacenter",
        problems,
        DATACENTER,
        "a datacenter name (lowercase letters, digits, '-' and '_')",
    )
    consul_version = string(get("consulVersion"), "consulVersion", problems, VERSION, "a version such as 1.22.1")
    envoy_version = string(get("envoyVersion"), "envoyVersion", problems, VERSION, "a version such as 1.35.3")
    check_versions(consul_version, envoy_version, problems)
    mesh_destinations_only = boolean(get("meshDestinationsOnly"), "meshDestinationsOnly", problems)
    admin_cidrs = cidr_list(get("adminCidrs"), "adminCidrs", problems, deployer=True)

    consul = _existing_cluster(raw, problems)
    servers = None
    if consul is None:
        servers = _servers(get, problems)
        if not admin_cidrs:
            problems.add(
                "adminCidrs",
                list(admin_cidrs),
                "is empty, but the stack creates its Consul servers (consulHttpAddr is not set) and Pulumi "
                f"reaches their API from this machine: add {DEPLOYER!r} (this machine's public address) or a CIDR",
            )
    network = _network(raw, get, problems)
    ready_timeout = config_integer(
        get("consulReadyTimeoutSeconds"), "consulReadyTimeoutSeconds", problems, 10, 3600, "seconds to wait"
    )
    mesh_ready_timeout = _mesh_ready_timeout(get("meshReadyTimeoutSeconds"), problems)

    optional = {}
    for key, pattern, what in (
        ("sshKeyName", SSH_KEY_NAME, "an EC2 key pair name"),
        ("amiId", AMI_ID, "an AMI id such as ami-0123456789abcdef0"),
    ):
        value = _optional(raw, key)
        optional[key] = string(value, key, problems, pattern, what) if value is not None else None

    image_generation = config_integer(
        get("imageGeneration"), "imageGeneration", problems, 0, 1000, "an image generation"
    )
    protect_server_data = boolean(get("protectServerData"), "protectServerData", problems)
    access_logs = boolean(get("accessLogs"), "accessLogs", problems)
    envoy_metrics = boolean(get("envoyMetrics"), "envoyMetrics", problems)
    if protect_server_data and consul is not None:
        problems.add(
            "protectServerData", True, "only applies when the stack creates its servers (consulHttpAddr is set)"
        )

    gateway = _gateway(raw.get("gateway"), services, admin_cidrs, instance_type, problems)

    if problems.items:
        raise MeshSpecError(problems.items)
    warnings = footguns(services, intentions, admin_cidrs, splits)
    assert datacenter and consul_version and envoy_version and ready_timeout is not None
    assert mesh_ready_timeout is not None
    assert mesh_destinations_only is not None and network is not None
    return MeshSpec(
        services=services,
        intentions=intentions,
        consul=consul,
        servers=servers,
        network=network,
        ready_timeout_seconds=ready_timeout,
        mesh_ready_timeout_seconds=mesh_ready_timeout,
        datacenter=datacenter,
        consul_version=consul_version,
        envoy_version=envoy_version,
        mesh_destinations_only=mesh_destinations_only,
        admin_cidrs=admin_cidrs,
        ssh_key_name=optional["sshKeyName"],
        ami_id=optional["amiId"],
        image_generation=image_generation or 0,
        protect_server_data=bool(protect_server_data),
        splits=splits,
        access_logs=bool(access_logs),
        envoy_metrics=bool(envoy_metrics),
        gateway=gateway,
        warnings=warnings,
    )


def _raw_services(raw: Mapping[str, Any], problems: Problems) -> Mapping[str, Any]:
    """Config `services` as a map (decoded from Pulumi's JSON text); {} when it is not one."""
    raw_services = decode(raw.get("services"), "services", problems)
    if raw_services is not None and not isinstance(raw_services, Mapping):
        problems.add("services", raw_services, "must be a map of service name to {port: ...}")
        return {}  # one message per cause: not also "is empty"
    if raw_services is not None and not raw_services and "services" in raw:
        problems.add("services", raw_services, "is empty: the mesh needs at least one service")
    return raw_services or {}


def _services(raw_services: Mapping[str, Any], instance_type: str, problems: Problems) -> dict[str, ServiceSpec]:
    """Each valid service, then what they say of each other: node prefixes that clash, upstreams
    that are not services of the stack."""
    services: dict[str, ServiceSpec] = {}
    for name in sorted(raw_services, key=str):
        svc = _service(name, raw_services[name], instance_type, problems)
        if svc is not None:
            services[name] = svc
    for svc in services.values():
        clash = node_prefix_clash(svc.name, services)
        if clash:
            problems.add(f"services.{svc.name}", svc.name, clash)
        for up in svc.upstreams:
            if up not in raw_services:
                problems.add(f"services.{svc.name}.upstreams", up, "is not a service of this stack")
            elif up == svc.name:
                problems.add(f"services.{svc.name}.upstreams", up, "is the service itself")
    return services


# Shorter than this, a first `up` fails before a VM can boot and join (0 turns the wait off).
MIN_MESH_READY_SECONDS = 60


def _mesh_ready_timeout(raw: Any, problems: Problems) -> int | None:
    key = "meshReadyTimeoutSeconds"
    value = config_integer(raw, key, problems, 0, 7200, "seconds to wait for the mesh")
    if value is not None and 0 < value < MIN_MESH_READY_SECONDS:
        problems.add(
            key,
            value,
            f"is too short for a VM to boot and join: 0 (no wait) or {MIN_MESH_READY_SECONDS}-7200 seconds",
        )
        return None
    return value


# Every *.virtual.consul address comes from this range (CONSUL_FACTS: virtual IPs).
VIRTUAL_IPS = ipaddress.ip_network("240.0.0.0/4")
EVERYWHERE = "0.0.0.0/0"


def footguns(
    services: Mapping[str, ServiceSpec],
    intentions: Sequence[IntentionSpec],
    admin_cidrs: Sequence[str],
    splits: Mapping[str, Sequence[SplitSpec]] | None = None,
) -> tuple[str, ...]:
    """Settings that are valid but rarely meant, each as a message naming its key."""
    found = []
    if EVERYWHERE in admin_cidrs:
        found.append(f"adminCidrs: {EVERYWHERE} opens SSH and the Consul API and UI to the whole internet")
    splits = splits or {}
    # An L7 intention with an allow rule lets some calls through: deliberate, not a forgotten allow.
    allowed = {(i.source, i.destination) for i in intentions if i.allows_any()}
    for name, svc in sorted(services.items()):
        for cidr in svc.exclusions.outbound_cidrs:
            key = f"services.{name}.excludeOutboundCidrs"
            if cidr == EVERYWHERE:
                found.append(f"{key}: {EVERYWHERE} takes every outbound connection out of the mesh")
            elif ipaddress.ip_network(cidr).overlaps(VIRTUAL_IPS):
                found.append(
                    f"{key}: {cidr} overlaps {VIRTUAL_IPS}, the *.virtual.consul addresses: "
                    "calls to those services bypass Envoy and fail"
                )
        for up in svc.upstreams:
            # A call to a split service lands on one of its splits' services, which each check
            # their own intentions: the caller needs an allow to each (Consul's RBAC is at the callee).
            for target in split_targets(up, splits):
                via = "" if target == up else f" (services.{up}.splits sends calls to {target})"
                if (name, target) not in allowed:
                    found.append(
                        f"services.{name}.upstreams: {up} is listed but no allow intention lets {name} reach "
                        f"{target}{via} (default deny refuses the calls)"
                    )
                elif svc.app.is_demo and not probe_admitted(intentions, name, target):
                    found.append(
                        f"services.{name}.upstreams: the L7 intention {name}->{target} does not admit the demo "
                        f"app's probe ({' '.join(PROBE_REQUEST)}){via}: its check stays warning and the mesh "
                        "gate does not wait for it"
                    )
    return tuple(found)
