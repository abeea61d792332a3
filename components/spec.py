"""The mesh spec: stack config turned into plain, validated dataclasses.

Nothing here declares a Pulumi resource. The program builds a `MeshSpec` before it declares
anything, so a stack with bad config fails with every problem listed and nothing half-created, and
every rule below is unit-tested without the Pulumi runtime.

Raw config arrives as it does from `pulumi config`: strings, with structured keys (`services`,
`intentions`, lists) as JSON text. Already-decoded values are accepted too, which keeps tests short.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import (
    DEPLOYER,
    Problems,
    boolean,
    cidr_list,
    config_integer,
    decode,
    integer,
    json_list,
    parse_cidr,
    ports,
    string,
)

PROJECT = "consul-tproxy-vms"

# Every pattern is matched against the whole value (re.fullmatch): `$` alone lets a trailing newline
# through, and a newline is how a value breaks out of the line of a file it lands in.
# A service is reachable as <name>.virtual.consul only if its name is a DNS label.
DNS_LABEL = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
DATACENTER = re.compile(r"[a-z0-9]([a-z0-9_-]{0,62})")
VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
INSTANCE_TYPE = re.compile(r"[a-z0-9-]+\.[a-z0-9]+")
# Debian policy 5.6.1 (Package): lowercase letters, digits, + - ., at least two characters, starting
# with a letter or digit; 5.6.12 (Version): digits, letters, . + ~ - and : (and * for an apt pin).
DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:*-]+)?")
# A URL path (RFC 3986 pchar, plus / and a query): no whitespace, quotes or backslashes.
URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")
HTTP_ADDR = re.compile(r"https?://(?P<host>[A-Za-z0-9.-]+)(:(?P<port>\d{1,5}))?/?")
SSH_KEY_NAME = re.compile(r"[\x21-\x7e ]{1,255}")
AMI_ID = re.compile(r"ami-[0-9a-f]{8,17}")
VPC_ID = re.compile(r"vpc-[0-9a-f]{8,17}")
SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8,17}")
RETRY_JOIN = re.compile(r"[^\s\"'\\]+( [^\s\"'\\]+)*")

# Pulumi's rule for a stack name (pulumi/pulumi sdk/go/common/tokens/stack_name.go ParseStackName):
# ASCII letters, digits, '-', '_' and '.', 1 to 100 characters. Resource names and tags carry it.
STACK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
ACTIONS = ("allow", "deny")
PROTOCOLS = ("http", "http2", "grpc", "tcp")
# Protocols whose discovery chain may split traffic and whose intentions may carry L7 permissions
# (hashicorp/consul agent/structs IsProtocolHTTPLike; agent/consul/discoverychain/compile.go
# enableAdvancedRoutingForProtocol).
HTTP_LIKE = ("http", "http2", "grpc")
# What Consul accepts in an intention permission's HTTP.Methods (agent/structs/
# config_entry_discoverychain.go isValidHTTPMethod: Go's net/http method constants).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")
# Consul's limit on an intention's Description (agent/structs/config_entry_intentions.go validate:
# metaValueMaxLength, agent/structs/config_entry.go).
MAX_DESCRIPTION = 512

# Ports the VM recipe itself uses. An application on one of them would collide with SSH, the
# Consul agent or Envoy (see components/templates and scripts/).
SSH_PORT = 22
ENVOY_PUBLIC_PORT = 21000
ENVOY_OUTBOUND_PORT = 15001
ENVOY_ADMIN_PORT = 19000
# Envoy's Prometheus listener (proxy-defaults envoy_prometheus_bind_addr, config envoyMetrics): kept
# out of the inbound redirect on every VM, whether metrics are on or not (userdata.redirect_exclusions).
ENVOY_METRICS_PORT = 20200
RESERVED_PORTS = {
    SSH_PORT: "SSH",
    8300: "Consul server RPC",
    8301: "Consul LAN gossip",
    8500: "Consul HTTP API",
    8501: "Consul HTTPS API",
    8502: "Consul gRPC (Envoy xDS)",
    8503: "Consul gRPC over TLS (Envoy xDS)",
    8600: "Consul DNS",
    ENVOY_OUTBOUND_PORT: "Envoy outbound listener",
    ENVOY_ADMIN_PORT: "Envoy admin",
    ENVOY_PUBLIC_PORT: "Envoy public listener",
    ENVOY_METRICS_PORT: "Envoy Prometheus metrics",
}


# Envoy versions each Consul release accepts. `consul connect envoy` runs Envoy only if its major.minor
# lies between the lowest and the highest line of envoyextensions/xdscommon/ENVOY_VERSIONS embedded in
# that Consul build (command/connect/envoy/envoy.go checkEnvoyVersionCompatibility: ">= min, < max+1";
# minors between the two that the file does not list pass too, patch versions are not compared,
# xdscommon.UnsupportedEnvoyVersions is empty), and the agent's xDS server refuses anything older than
# the lowest line (agent/xds/envoy_versioning.go). The file changes between PATCH releases of a line:
# on release/1.22.x its lowest line rose from 1.31/1.32 to 1.33 in 2026 (hashicorp/consul issue
# #23929; PRs #23056/#23058, #23113) while its highest stayed 1.35, and the published table's later
# "1.38.x, 1.37.x, 1.35.x" for 1.21.x/1.22.x describes consul-dataplane's bundled Envoy, not what
# `consul connect envoy` accepts (web-unified-docs PR #2718). Where the sources do not tie a change
# to a patch release, a row holds the range EVERY patch it covers is known to accept (the
# intersection), so an accepted pair never fails on a VM; a row per patch range is added once that
# release's file is read at its tag. A Consul version in no row is refused: its range is unknown.
@dataclass(frozen=True)
class EnvoyRange:
    """The Envoy major.minor range Consul releases `first`..`last` (inclusive) all accept."""

    first: tuple[int, int, int]
    last: tuple[int, int, int]
    low: tuple[int, int]
    high: tuple[int, int]
    source: str


ENVOY_RANGES: tuple[EnvoyRange, ...] = (
    EnvoyRange(
        (1, 22, 0),
        (1, 22, 999),
        (1, 33),
        (1, 35),
        "release/1.22.x: highest line 1.35 at 1.22.0 and 1.22.1 (PR #23058) and since; lowest 1.33 from "
        "2026-03 (issue #23929), 1.31 or 1.32 before: 1.33 is the lowest every 1.22 patch accepts",
    ),
    EnvoyRange(
        (1, 21, 0),
        (1, 21, 999),
        (1, 31),
        (1, 33),
        "release/1.21.x: 1.34/1.33/1.32/1.31 from 2025-09 (issue #23929), 1.33/1.32/1.31 on main when "
        "1.21 was cut (PR #22370): 1.31 to 1.33 every 1.21 patch accepts",
    ),
    EnvoyRange(
        (1, 20, 0),
        (1, 20, 999),
        (1, 30),
        (1, 31),
        "release/1.20.x: 1.31/1.30/1.29/1.28 in one stored copy, 1.33 to 1.30 in the v1.20.x docs table: "
        "1.30 to 1.31 every 1.20 patch accepts",
    ),
)


def envoy_range(consul_version: str) -> EnvoyRange | None:
    """The row of ENVOY_RANGES that covers `consul_version`; None for a release in no row."""
    version = tuple(int(part) for part in consul_version.split(".")[:3])
    return next((r for r in ENVOY_RANGES if r.first <= version <= r.last), None)


def envoy_supported(consul_version: str, envoy_version: str) -> bool | None:
    """Whether Consul `consul_version` runs Envoy `envoy_version`; None for a Consul release in no row."""
    row = envoy_range(consul_version)
    if row is None:
        return None
    major, minor = (int(part) for part in envoy_version.split(".")[:2])
    return row.low <= (major, minor) <= row.high


SERVER_COUNTS = (1, 3, 5)
# Installed and pinned by every mesh VM (userdata.packages): an app package of the same name would
# override the pin.
MESH_PACKAGES = ("consul", "hashicorp-envoy", "iptables")
MAX_COMMAND = 1024
# Names the stack gives its own parts. A service (or node) named like one would share its Consul
# name ("consul" is the servers' own service), its server node names (consul-server-N) or its
# component names (network, defaults, intentions, splits, consul-ready, mesh-ready).
RESERVED_NAMES = frozenset({"consul", "consul-ready", "mesh-ready", "network", "defaults", "intentions", "splits"})
RESERVED_PREFIX = "consul-server"
# Key names that look like secrets: their values are never echoed in a message.
SECRET_WORDS = ("token", "secret", "password", "gossip", "key", "pem")

DEFAULTS: dict[str, Any] = {
    "datacenter": "dc1",
    "consulVersion": "1.22.1",
    "envoyVersion": "1.35.3",
    "meshDestinationsOnly": False,
    "instanceType": "t3.small",
    "adminCidrs": [],
    "sshKeyName": "",
    "amiId": "",
    "imageGeneration": 0,
    "protectServerData": False,
    "vpcId": "",
    "subnetIds": [],
    "vpcCidr": "10.42.0.0/16",
    "zoneCount": 2,
    "serverCount": 1,
    "serverInstanceType": "t3.small",
    "consulReadyTimeoutSeconds": 600,
    "meshReadyTimeoutSeconds": 900,
    "consulHttpAddr": "",
    "consulRetryJoin": [],
    "consulCaPem": "",
    "intentions": [],
    "accessLogs": False,
    "envoyMetrics": False,
}
REQUIRED = ("services",)
# Keys that point the stack at an existing Consul cluster instead of creating servers. Empty (their
# default), they are unset; consulHttpAddr decides the mode, and the others need it.
EXISTING_CLUSTER_KEYS = ("consulHttpAddr", "consulRetryJoin", "consulToken", "consulGossipKey", "consulCaPem")
SECRET_KEYS = ("consulToken", "consulGossipKey")
# Optional structured keys without a default (Pulumi's project schema has no object type).
OPTIONAL_KEYS = ("gateway",)
TOP_LEVEL_KEYS = frozenset(DEFAULTS) | frozenset(REQUIRED) | frozenset(EXISTING_CLUSTER_KEYS) | frozenset(OPTIONAL_KEYS)

SERVICE_KEYS = frozenset(
    {
        "port",
        "nodeName",  # refused with its own message: nodes are named at boot
        "protocol",
        "upstreams",
        "command",
        "packages",
        "healthCheckPath",
        "instanceType",
        "instances",
        "excludeInboundPorts",
        "excludeOutboundPorts",
        "excludeOutboundCidrs",
        "excludeUids",
        "splits",  # the mesh's own: MeshSpec.splits, never in a VM's user data
    }
)
INTENTION_KEYS = frozenset({"source", "destination", "action", "permissions", "description"})
PERMISSION_KEYS = frozenset({"action", "http"})
PERMISSION_HTTP_KEYS = frozenset({"pathExact", "pathPrefix", "pathRegex", "methods", "header"})
SPLIT_KEYS = frozenset({"weight", "service"})
GATEWAY_KEYS = frozenset({"port", "routes", "allowCidrs", "instanceType"})
ROUTE_KEYS = frozenset({"pathPrefix", "pathExact", "service"})
# The API gateway's Consul service name (and its nodes' prefix, <name>-<instance id>), its listener's
# name, and the listener port when the config names none.
GATEWAY_NAME = "gateway"
GATEWAY_LISTENER = "http"
GATEWAY_DEFAULT_PORT = 8080
DEMO_HEALTH_PATH = "/health"
# The largest group a service may ask for: a group spreads over the stack's subnets, each of which
# must hold twice its share while an instance refresh launches before it terminates (network.py).
MAX_INSTANCES = 100


class MeshSpecError(ValueError):
    """Bad stack config. The message lists every problem found, each naming its key and value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        count = f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")
        super().__init__(f"invalid stack config for {PROJECT} ({count}):\n{listed}")


@dataclass(frozen=True)
class RedirectExclusions:
    """Traffic `consul connect redirect-traffic` must leave alone, beyond what every VM excludes."""

    inbound_ports: tuple[int, ...] = ()
    outbound_ports: tuple[int, ...] = ()
    outbound_cidrs: tuple[str, ...] = ()
    uids: tuple[int, ...] = ()


@dataclass(frozen=True)
class AppSpec:
    """The application beside the sidecar. `command=None` runs the bundled demo app."""

    command: str | None = None
    packages: tuple[str, ...] = ()
    health_check_path: str | None = DEMO_HEALTH_PATH

    @property
    def is_demo(self) -> bool:
        return self.command is None


@dataclass(frozen=True)
class ServiceSpec:
    """One mesh service, which gets one VM."""

    name: str
    port: int
    protocol: str = "http"
    upstreams: tuple[str, ...] = ()
    app: AppSpec = field(default_factory=AppSpec)
    instance_type: str = DEFAULTS["instanceType"]
    exclusions: RedirectExclusions = field(default_factory=RedirectExclusions)
    instances: int | None = None
    """How many VMs run the service as an EC2 Auto Scaling group (config `instances`); None: one VM
    of its own, not in a group. Only whether it is set reaches the VMs' user data, never the count:
    changing the count changes the group's capacity alone."""

    @property
    def grouped(self) -> bool:
        """Whether the service runs as an Auto Scaling group (its VMs complete lifecycle hooks)."""
        return self.instances is not None

    @property
    def virtual_hostname(self) -> str:
        return f"{self.name}.virtual.consul"

    @property
    def proxy_id(self) -> str:
        return f"{self.name}-sidecar-proxy"


@dataclass(frozen=True)
class PermissionSpec:
    """One L7 rule of an intention: `action` for the HTTP requests it matches (Consul's
    IntentionPermission). No path and no methods match nothing; Consul refuses that, and so does
    the spec. Header and regex matches are refused (see _permission)."""

    action: str
    path_exact: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    """Upper-case HTTP methods; empty: any method."""

    def matches(self, method: str, path: str) -> bool:
        """Whether a request `method path` (no query) is one this permission matches. Envoy's RBAC
        compares the path without its query: exactly, or as a plain string prefix."""
        if self.methods and method not in self.methods:
            return False
        if self.path_exact is not None:
            return path == self.path_exact
        if self.path_prefix is not None:
            return path.startswith(self.path_prefix)
        return True

    def as_config(self) -> dict[str, Any]:
        """The permission as the stack config spells it (camelCase), for the `intentions` output."""
        http: dict[str, Any] = {}
        if self.path_exact is not None:
            http["pathExact"] = self.path_exact
        if self.path_prefix is not None:
            http["pathPrefix"] = self.path_prefix
        if self.methods:
            http["methods"] = list(self.methods)
        return {"action": self.action, "http": http}


@dataclass(frozen=True)
class IntentionSpec:
    """Whether `source` may open connections to `destination`: `action` for every request, or
    (L7, `action` None) the first of `permissions` that matches a request decides."""

    source: str
    destination: str
    action: str | None
    description: str = ""
    permissions: tuple[PermissionSpec, ...] = ()

    @property
    def is_l7(self) -> bool:
        return bool(self.permissions)

    def admits(self, method: str, path: str) -> bool:
        """Whether the source's request `method path` certainly gets through (default deny).

        Consul reads permissions in order: a deny is subtracted from every allow after it, allows
        are ORed (agent/structs/config_entry_intentions.go, SourceIntention.Permissions), so the
        first permission matching a request decides, and with none matching the default (deny) does.
        """
        if not self.is_l7:
            return self.action == "allow"
        for permission in self.permissions:
            if permission.matches(method, path):
                return permission.action == "allow"
        return False

    def allows_any(self) -> bool:
        """Whether some request gets through: an allow, or an L7 intention with an allow permission."""
        return self.action == "allow" or any(p.action == "allow" for p in self.permissions)

    def key(self) -> str:
        """One line naming what the intention decides (the mesh gate's diff, the render)."""
        if not self.is_l7:
            return f"{self.source}->{self.destination}:{self.action}"
        rules = ",".join(
            f"{p.action} {'|'.join(p.methods) or '*'} "
            + (f"={p.path_exact}" if p.path_exact is not None else f"{p.path_prefix or '/'}*")
            for p in self.permissions
        )
        return f"{self.source}->{self.destination}:l7[{rules}]"


@dataclass(frozen=True)
class RouteSpec:
    """One route of the API gateway's listener: requests whose path matches go to `service`."""

    match: str
    """"prefix" or "exact": Consul's HTTPPathMatch Match (reference/config-entry/http-route)."""
    path: str
    service: str

    def key(self) -> str:
        return f"{self.match}:{self.path}->{self.service}"


@dataclass(frozen=True)
class GatewaySpec:
    """The API gateway (config `gateway`): an Envoy VM whose HTTP listener routes into the mesh."""

    port: int
    routes: tuple[RouteSpec, ...]
    allow_cidrs: tuple[str, ...]
    """Who may reach the listener; "deployer" is resolved with adminCidrs' (program.resolve_admin_cidrs)."""
    instance_type: str
    name: str = GATEWAY_NAME

    def intentions(self) -> tuple[IntentionSpec, ...]:
        """The gateway may call every routed service (Consul's docs for API gateways on VMs: "Add service
        intentions that allow the API gateway to send traffic to services in the mesh")."""
        routed = sorted({r.service for r in self.routes})
        return tuple(IntentionSpec(self.name, s, "allow", "the API gateway routes to this service") for s in routed)


@dataclass(frozen=True)
class SplitSpec:
    """A share of the calls to a service that its service-splitter sends to `service`."""

    weight: float
    """Percent, with at most two decimals (Consul keeps 0.01 % steps)."""
    service: str


def split_targets(service: str, splits: Mapping[str, Sequence[SplitSpec]]) -> tuple[str, ...]:
    """The services a call to `service` may land on: its splits with a weight, or itself."""
    targets = tuple(s.service for s in splits.get(service, ()) if s.weight > 0)
    return targets or (service,)


def split_http_addr(http_addr: str) -> tuple[str, str]:
    """https://host:port -> ("https", "host:port"): the consul provider's scheme and address."""
    scheme, _, rest = http_addr.partition("://")
    return scheme, rest.rstrip("/")


@dataclass(frozen=True)
class ConsulClusterSpec:
    """An existing Consul cluster: how agents and the Pulumi consul provider reach its servers."""

    http_addr: str
    retry_join: tuple[str, ...]
    ca_pem: str | None = None

    @property
    def scheme(self) -> str:
        return split_http_addr(self.http_addr)[0]

    @property
    def address(self) -> str:
        """host:port, as the consul provider's `address` wants it."""
        return split_http_addr(self.http_addr)[1]


@dataclass(frozen=True)
class ServersSpec:
    """Consul servers the stack creates when it is not given an existing cluster."""

    count: int = DEFAULTS["serverCount"]
    instance_type: str = DEFAULTS["serverInstanceType"]


@dataclass(frozen=True)
class NetworkSpec:
    """Where the VMs go: an existing VPC and subnets, or a VPC the stack creates."""

    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    vpc_cidr: str = DEFAULTS["vpcCidr"]
    zone_count: int = DEFAULTS["zoneCount"]
    zones: tuple[str, ...] = ()
    """The zones of the subnets to create, asked of AWS at program time (program.resolve_zones:
    available zones offering every instance type of the stack). Empty: not resolved (offline)."""

    @property
    def creates_vpc(self) -> bool:
        return not self.subnet_ids

    def subnet_cidrs(self) -> tuple[str, ...]:
        """One subnet per zone, each a sixteenth of the VPC, in order (stable across runs)."""
        vpc = ipaddress.ip_network(self.vpc_cidr)
        return tuple(str(net) for net, _ in zip(vpc.subnets(prefixlen_diff=4), range(self.zone_count), strict=False))


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


def stack_name_problem(stack: Any) -> str | None:
    """Why `stack` cannot be a Pulumi stack's name, or None when it can (STACK_NAME)."""
    if isinstance(stack, str) and STACK_NAME.fullmatch(stack):
        return None
    return (
        f"stack {stack!r}: is not a Pulumi stack name: ASCII letters, digits, '-', '_' and '.', "
        "1 to 100 characters (the stack's own name, without <organization>/<project>/)"
    )


def _names(names: Iterable[Any]) -> str:
    """Names for a message, whatever their types (YAML keys need not be strings)."""
    return ", ".join(sorted(str(n) for n in names))


def looks_secret(name: Any) -> bool:
    """A key whose value must not be echoed: a secret key, or a name that looks like one (consul_token)."""
    folded = str(name).lower().replace("_", "").replace("-", "")
    return folded in {k.lower() for k in SECRET_KEYS} or any(word in folded for word in SECRET_WORDS)


def unknown_keys(obj: Mapping[Any, Any], allowed: frozenset[str], key: str, problems: Problems) -> None:
    """A problem for each key of `obj` not in `allowed`, with the closest known key (a typo's fix).
    Public for projects that check their own keys the mesh's way (examples/consumer)."""
    for name in sorted(set(obj) - allowed, key=str):
        shown = "<secret>" if looks_secret(name) else obj[name]
        close = difflib.get_close_matches(str(name), sorted(allowed), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(allowed))}"
        problems.add(f"{key}.{name}" if key else str(name), shown, f"is not a known key ({hint})")


def _service(name: Any, raw: Any, default_instance_type: str, problems: Problems) -> ServiceSpec | None:
    key = f"services.{name}"
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
        problems.add(
            f"services.{name}",
            name,
            "is not a valid service name: use a DNS label (lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters) so <name>.virtual.consul resolves",
        )
        return None
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX):
        problems.add(
            key,
            name,
            f"is a name the stack uses itself ({', '.join(sorted(RESERVED_NAMES))}, "
            f"{RESERVED_PREFIX}*): choose another service name",
        )
        return None
    if not isinstance(raw, Mapping):
        problems.add(key, raw, "must be an object such as {port: 8080}")
        return None
    unknown_keys(raw, SERVICE_KEYS, key, problems)
    before = len(problems.items)

    port = None
    if "port" not in raw:
        problems.add(f"{key}.port", None, "is missing: every service needs the port its application listens on")
    else:
        port = integer(raw["port"], f"{key}.port", problems, 1, 65535, "a TCP port")
        if port in RESERVED_PORTS:
            problems.add(f"{key}.port", port, f"is reserved on mesh VMs for {RESERVED_PORTS[port]}")

    if "nodeName" in raw:
        problems.add(
            f"{key}.nodeName",
            raw["nodeName"],
            "is no longer set: a service's nodes are named <service>-<instance id> when each VM boots",
        )
    protocol = raw.get("protocol", "http")
    if protocol not in PROTOCOLS:
        problems.add(f"{key}.protocol", protocol, f"is not one of {', '.join(PROTOCOLS)}")

    upstreams = []
    for i, up in enumerate(json_list(raw.get("upstreams", []), f"{key}.upstreams", problems)):
        if string(up, f"{key}.upstreams[{i}]", problems, DNS_LABEL, "a service name") is not None:
            upstreams.append(up)

    command = raw.get("command")
    if command is not None and (
        not isinstance(command, str)
        or not command.startswith("/")
        # One line of printable characters: \r, \v, U+2028 and the like would end the ExecStart=
        # line of the unit file and start a setting of their own (ExecStartPre=+... runs as root).
        or not command.isprintable()
        # systemd joins a line that ends in a backslash with the next one (systemd.syntax(7)).
        or command.endswith("\\")
        or len(command) > MAX_COMMAND
    ):
        problems.add(
            f"{key}.command",
            command,
            f"must be a one-line command starting with an absolute path: printable characters only, "
            f"no trailing backslash, at most {MAX_COMMAND} characters",
        )
    packages = []
    for i, pkg in enumerate(json_list(raw.get("packages", []), f"{key}.packages", problems)):
        if (
            string(
                pkg,
                f"{key}.packages[{i}]",
                problems,
                DEBIAN_PACKAGE,
                "a Debian package name (optionally name=version)",
            )
            is not None
        ):
            if pkg.partition("=")[0] in MESH_PACKAGES:
                problems.add(
                    f"{key}.packages[{i}]",
                    pkg,
                    f"is installed and pinned by the mesh itself ({', '.join(MESH_PACKAGES)}): "
                    "set consulVersion or envoyVersion instead",
                )
            else:
                packages.append(pkg)
    health = raw.get("healthCheckPath", DEMO_HEALTH_PATH if command is None else None)
    if (
        health is not None
        and string(
            health,
            f"{key}.healthCheckPath",
            problems,
            URL_PATH,
            "an absolute URL path such as /health",
        )
        is None
    ):
        health = None
    elif health is not None and ("${" in health or "%{" in health):
        # HCL reads ${ and %{ in a quoted string as a template (escape.hcl).
        problems.add(f"{key}.healthCheckPath", health, "must not contain ${ or %{")
        health = None

    instance_type = raw.get("instanceType", default_instance_type)
    string(instance_type, f"{key}.instanceType", problems, INSTANCE_TYPE, "an EC2 instance type such as t3.small")
    instances = raw.get("instances")
    if instances is not None:
        instances = integer(instances, f"{key}.instances", problems, 1, MAX_INSTANCES, "a group size")
    uids = (
        integer(u, f"{key}.excludeUids[{i}]", problems, 0, 2**31 - 1, "a user ID")
        for i, u in enumerate(json_list(raw.get("excludeUids", []), f"{key}.excludeUids", problems))
    )
    exclusions = RedirectExclusions(
        inbound_ports=ports(raw.get("excludeInboundPorts", []), f"{key}.excludeInboundPorts", problems),
        outbound_ports=ports(raw.get("excludeOutboundPorts", []), f"{key}.excludeOutboundPorts", problems),
        outbound_cidrs=cidr_list(raw.get("excludeOutboundCidrs", []), f"{key}.excludeOutboundCidrs", problems),
        uids=tuple(sorted({u for u in uids if u is not None})),
    )
    if len(problems.items) != before or port is None:
        return None
    return ServiceSpec(
        name=name,
        port=port,
        protocol=protocol,
        upstreams=tuple(upstreams),
        app=AppSpec(command=command, packages=tuple(packages), health_check_path=health),
        instance_type=instance_type,
        exclusions=exclusions,
        instances=instances,
    )


def load_service(name: str, raw: Any, default_instance_type: str = DEFAULTS["instanceType"]) -> ServiceSpec:
    """One service's settings (as under `services.<name>`), validated; raises MeshSpecError.

    For projects that add a VM to an existing mesh: the same rules as the mesh's own services.
    """
    problems = Problems()
    decoded = decode(raw, f"services.{name}", problems)
    if isinstance(decoded, Mapping) and "splits" in decoded:
        problems.add(f"services.{name}.splits", decoded["splits"], "is the mesh stack's to declare, not a VM's")
    service = _service(name, decoded, default_instance_type, problems)
    if problems.items or service is None:
        raise MeshSpecError(problems.items)
    return service


def _permission(raw: Any, key: str, problems: Problems) -> PermissionSpec | None:
    """One L7 permission, checked as Consul checks it (agent/structs/config_entry_intentions.go
    ServiceIntentionsConfigEntry.validate): action allow|deny, an HTTP match that is not empty, at
    most one path match, PathExact/PathPrefix starting with "/", known methods, none twice."""
    if not isinstance(raw, Mapping):
        problems.add(key, raw, "must be an object such as {action: allow, http: {pathPrefix: /, methods: [GET]}}")
        return None
    before = len(problems.items)
    unknown_keys(raw, PERMISSION_KEYS, key, problems)
    action = raw.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        problems.add(f"{key}.action", action, "must be allow or deny")
    http = raw.get("http")
    if not isinstance(http, Mapping):
        problems.add(f"{key}.http", http, "must be an object such as {pathPrefix: /api, methods: [GET]}")
        return None
    unknown_keys(http, PERMISSION_HTTP_KEYS, f"{key}.http", problems)
    for unsupported in ("pathRegex", "header"):
        if unsupported in http:
            # pulumi-consul 3.15 (terraform-provider-consul 86cfc3a, consul/resource_consul_config_entry_
            # service_intentions.go Decode) writes path_regex into PathPrefix and never copies the headers
            # it reads into HTTP.Header: a header-restricted allow would reach Consul as an allow for all.
            problems.add(
                f"{key}.http.{unsupported}",
                http[unsupported],
                "is not supported: the consul provider would pass it to Consul wrongly (a regex as a path "
                "prefix, headers dropped); use pathExact, pathPrefix and methods",
            )
    paths = {}
    for name in ("pathExact", "pathPrefix"):
        if name in http:
            value = http[name]
            if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
                problems.add(f"{key}.http.{name}", value, "must be a path starting with / (printable characters)")
            else:
                paths[name] = value
    if "pathExact" in http and "pathPrefix" in http:
        problems.add(f"{key}.http", dict(http), "has both pathExact and pathPrefix: give at most one")
    methods = []
    for i, method in enumerate(json_list(http.get("methods", []), f"{key}.http.methods", problems)):
        if method not in HTTP_METHODS:
            # Upper case only: Consul upper-cases what it stores, and a lower-case method in the
            # config would differ from the provider's read-back on every refresh.
            problems.add(f"{key}.http.methods[{i}]", method, f"is not one of {', '.join(HTTP_METHODS)}")
        elif method in methods:
            problems.add(f"{key}.http.methods[{i}]", method, "is listed twice (Consul refuses repeats)")
        else:
            methods.append(method)
    if not paths and not methods and len(problems.items) == before:
        problems.add(f"{key}.http", dict(http), "matches nothing: give pathExact, pathPrefix or methods")
    if len(problems.items) != before:
        return None
    return PermissionSpec(
        action=action,
        path_exact=paths.get("pathExact"),
        path_prefix=paths.get("pathPrefix"),
        methods=tuple(methods),
    )


def _permissions(raw: Any, key: str, problems: Problems) -> tuple[PermissionSpec, ...] | None:
    before = len(problems.items)
    items = json_list(raw, key, problems)
    if not items and len(problems.items) == before:
        problems.add(key, raw, "is empty: give at least one {action, http} rule, or use action instead")
    found = [_permission(item, f"{key}[{i}]", problems) for i, item in enumerate(items)]
    if len(problems.items) != before:
        return None
    return tuple(p for p in found if p is not None)


def _intentions(
    raw: Any, services: Mapping[str, Any], problems: Problems, protocols: Mapping[str, str] | None = None
) -> tuple[IntentionSpec, ...]:
    """The intentions; `protocols` (service -> protocol) refuses L7 rules for a tcp destination."""
    protocols = protocols or {}
    result: list[IntentionSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(json_list(raw, "intentions", problems)):
        key = f"intentions[{i}]"
        if not isinstance(item, Mapping):
            problems.add(key, item, "must be an object such as {source: web, destination: api, action: allow}")
            continue
        unknown_keys(item, INTENTION_KEYS, key, problems)
        ok = True
        for end in ("source", "destination"):
            name = item.get(end)
            if name is None:
                problems.add(f"{key}.{end}", None, "is missing")
                ok = False
            elif not isinstance(name, str):
                problems.add(f"{key}.{end}", name, "must be a service name (a string)")
                ok = False
            elif name not in services:
                problems.add(f"{key}.{end}", name, f"is not a service of this stack (services: {_names(services)})")
                ok = False
        action = item.get("action")
        permissions: tuple[PermissionSpec, ...] | None = ()
        if ("action" in item) == ("permissions" in item):
            # Consul: "Action must be omitted if Permissions are specified", and one of them is required.
            problems.add(key, dict(item), "needs exactly one of action (allow|deny) and permissions (L7 rules)")
            ok = False
        elif "permissions" in item:
            action = None
            permissions = _permissions(item["permissions"], f"{key}.permissions", problems)
            destination = item.get("destination")
            protocol = protocols.get(destination) if isinstance(destination, str) else None
            if permissions is None:
                ok = False
            elif protocol is not None and protocol not in HTTP_LIKE:
                # agent/consul/state/config_entry.go validateProposedConfigEntryInServiceGraph: "service
                # %q has protocol %q, which is incompatible with L7 intentions permissions".
                problems.add(
                    f"{key}.permissions",
                    destination,
                    f"needs an HTTP destination, but services.{destination}.protocol is {protocol} "
                    f"(L7 rules need {', '.join(HTTP_LIKE)}): use action, or change the protocol",
                )
                ok = False
        elif not isinstance(action, str) or action not in ACTIONS:
            problems.add(f"{key}.action", action, "must be allow or deny")
            ok = False
        description = item.get("description", "")
        if not isinstance(description, str):
            problems.add(f"{key}.description", description, "must be a string")
            ok = False
        elif len(description) > MAX_DESCRIPTION:
            problems.add(f"{key}.description", description[:40] + "...", f"is longer than {MAX_DESCRIPTION} characters")
            ok = False
        if not ok:
            continue
        pair = (item["source"], item["destination"])
        if pair[0] == pair[1]:
            problems.add(
                key, dict(item), "names the same service as source and destination: a service always reaches itself"
            )
            continue
        if pair in seen:
            problems.add(key, dict(item), f"repeats the source/destination pair of intentions[{seen[pair]}]")
            continue
        seen[pair] = i
        result.append(
            IntentionSpec(
                source=pair[0],
                destination=pair[1],
                action=action,
                description=description,
                permissions=permissions or (),
            )
        )
    return tuple(result)


def _weight(raw: Any, key: str, problems: Problems) -> float | None:
    """A split's weight: a percentage 0-100 with at most two decimals. Consul scales weights to
    0.01 % steps and rounds (agent/structs/config_entry_discoverychain.go scaleWeight), so a third
    decimal would be changed silently, and the provider's read-back would differ on every refresh."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 100:
        problems.add(key, raw, "must be a number from 0 to 100 (percent)")
        return None
    if abs(raw * 100 - round(raw * 100)) > 1e-6:
        problems.add(key, raw, "has more than two decimals (Consul keeps steps of 0.01 %)")
        return None
    return float(raw)


def _service_splits(name: str, raw: Any, problems: Problems) -> tuple[SplitSpec, ...] | None:
    """The shape of services.<name>.splits; the services they name are checked by _splits."""
    key = f"services.{name}.splits"
    before = len(problems.items)
    items = json_list(raw, key, problems)
    if not items and len(problems.items) == before:
        # Consul: "no splits configured".
        problems.add(key, raw, "is empty: give at least one {weight, service}, or remove the key")
    result = []
    for i, item in enumerate(items):
        item_key = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            problems.add(item_key, item, "must be an object such as {weight: 90, service: api}")
            continue
        unknown_keys(item, SPLIT_KEYS, item_key, problems)
        weight = _weight(item.get("weight"), f"{item_key}.weight", problems)
        service = string(item.get("service"), f"{item_key}.service", problems, DNS_LABEL, "a service name")
        if weight is not None and service is not None:
            result.append(SplitSpec(weight=weight, service=service))
    if len(problems.items) != before:
        return None
    seen: set[str] = set()
    for i, split in enumerate(result):
        if split.service in seen:
            # Consul: "split destination occurs more than once".
            problems.add(f"{key}[{i}].service", split.service, "is split to twice")
        seen.add(split.service)
    total = sum(round(s.weight * 100) for s in result)
    if total != 100 * 100:
        # Consul: "the sum of all split weights must be 100".
        problems.add(key, [s.weight for s in result], f"has weights adding up to {total / 100:g}, not 100")
    if len(problems.items) != before:
        return None
    return tuple(result)


def _splits(
    raw_services: Mapping[Any, Any], services: Mapping[str, ServiceSpec], problems: Problems
) -> dict[str, tuple[SplitSpec, ...]]:
    """Every services.<name>.splits, each a service-splitter. Consul refuses a splitter unless its
    service's discovery chain is HTTP-like ("does not permit advanced routing or splitting
    behavior") and every service of the chain has the same protocol ("uses inconsistent
    protocols"), agent/consul/discoverychain/compile.go."""
    parsed: dict[str, tuple[SplitSpec, ...]] = {}
    for name in sorted(raw_services, key=str):
        raw = raw_services[name]
        if isinstance(name, str) and isinstance(raw, Mapping) and "splits" in raw:
            splits = _service_splits(name, raw["splits"], problems)
            if splits is not None:
                parsed[name] = splits
    for name, splits in parsed.items():
        key = f"services.{name}.splits"
        own = services.get(name)
        if own is not None and own.protocol not in HTTP_LIKE:
            problems.add(
                f"services.{name}.protocol",
                own.protocol,
                f"cannot be split (services.{name}.splits): splitting needs {', '.join(HTTP_LIKE)}",
            )
        for i, split in enumerate(splits):
            target = services.get(split.service)
            if split.service not in raw_services:
                problems.add(f"{key}[{i}].service", split.service, "is not a service of this stack")
            elif target is not None and own is not None and target.protocol != own.protocol:
                problems.add(
                    f"{key}[{i}].service",
                    split.service,
                    f"has protocol {target.protocol}, not {own.protocol} like {name}: a split's services "
                    "share one protocol",
                )
            elif split.service != name and split.service in parsed:
                # Consul flattens a splitter into a splitter; kept to one level here, so no cycles.
                problems.add(
                    f"{key}[{i}].service",
                    split.service,
                    f"has splits of its own: split to services without splits (or to {name} itself)",
                )
    return parsed


def check_versions(consul: str | None, envoy: str | None, problems: Problems) -> None:
    """A problem unless Consul `consul` runs Envoy `envoy` (ENVOY_RANGES)."""
    if consul is None or envoy is None:
        return
    row = envoy_range(consul)
    if row is None:
        known = ", ".join(f"{r.first[0]}.{r.first[1]}.x" for r in sorted(ENVOY_RANGES, key=lambda r: r.first))
        problems.add("consulVersion", consul, f"is not a Consul version this project supports ({known})")
    elif not envoy_supported(consul, envoy):
        (low_major, low_minor), (high_major, high_minor) = row.low, row.high
        problems.add(
            "envoyVersion",
            envoy,
            f"is not supported by Consul {consul} (supported Envoy: {low_major}.{low_minor}.x "
            f"to {high_major}.{high_minor}.x; `consul connect envoy` refuses to start any other)",
        )


def _http_addr(raw: Any, problems: Problems) -> str | None:
    return https_addr(raw, "consulHttpAddr", problems)


def https_addr(raw: Any, key: str, problems: Problems) -> str | None:
    """An https://host[:port] address of Consul's API (without a trailing /); else a problem naming
    `key` and None. Public for the component package's login.httpAddrs."""
    value = string(raw, key, problems, HTTP_ADDR, "an address such as https://10.0.1.10:8501")
    if not value:
        return None
    if not value.startswith("https://"):
        # VMs log in over this address and receive their tokens in the answer (consul-login).
        problems.add(key, value, "must be https://: the VMs log in over it and receive their tokens")
        return None
    port = HTTP_ADDR.fullmatch(value)["port"]  # type: ignore[index]
    if port is not None and not 1 <= int(port) <= 65535:
        problems.add(key, value, "has a port outside 1-65535")
        return None
    return value.rstrip("/")


def _is_gossip_key(value: Any) -> bool:
    try:
        return isinstance(value, str) and len(base64.b64decode(value, validate=True)) in (16, 24, 32)
    except ValueError:
        return False


def _optional(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key, DEFAULTS[key])
    return value or None


def node_prefix_clash(name: str, others: Iterable[str]) -> str | None:
    """Why service `name` may not sit beside `others`, or None. A VM's agent may write the nodes
    named <service>-... (acl.agent_rules): no service's nodes may fall under another's prefix.
    Public for projects that add a service to a mesh (examples/consumer)."""
    for other in sorted(others):
        if other != name and name.startswith(f"{other}-"):
            return (
                f"starts with the name of service {other} and '-': its nodes ({name}-<instance id>) "
                f"would fall under {other}'s node prefix ({other}-), which {other}'s VMs may write"
            )
    return None


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
    services: dict[str, ServiceSpec] = {}
    raw_services = decode(raw.get("services"), "services", problems)
    if raw_services is not None and not isinstance(raw_services, Mapping):
        problems.add("services", raw_services, "must be a map of service name to {port: ...}")
        raw_services = None  # one message per cause: not also "is empty"
    elif raw_services is not None and not raw_services and "services" in raw:
        problems.add("services", raw_services, "is empty: the mesh needs at least one service")
    for name in sorted(raw_services or {}, key=str):
        svc = _service(name, raw_services[name], instance_type, problems)
        if svc is not None:
            services[name] = svc
    known = set(raw_services or {})

    for svc in services.values():
        clash = node_prefix_clash(svc.name, services)
        if clash:
            problems.add(f"services.{svc.name}", svc.name, clash)
        for up in svc.upstreams:
            if up not in known:
                problems.add(f"services.{svc.name}.upstreams", up, "is not a service of this stack")
            elif up == svc.name:
                problems.add(f"services.{svc.name}.upstreams", up, "is the service itself")

    splits = _splits(raw_services or {}, services, problems)
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


def _route(index: int, raw: Any, services: Mapping[str, ServiceSpec], problems: Problems) -> RouteSpec | None:
    key = f"gateway.routes[{index}]"
    if not isinstance(raw, Mapping):
        problems.add(key, raw, "must be an object such as {pathPrefix: /, service: web}")
        return None
    unknown_keys(raw, ROUTE_KEYS, key, problems)
    kinds = [k for k in ("pathPrefix", "pathExact") if k in raw]
    if len(kinds) != 1:
        problems.add(key, dict(raw), "needs exactly one of pathPrefix and pathExact")
        return None
    kind = kinds[0]
    path = string(raw[kind], f"{key}.{kind}", problems, URL_PATH, "a URL path starting with /")
    name = raw.get("service")
    if name is None:
        problems.add(f"{key}.service", None, "is missing: the service the route sends requests to")
        return None
    svc = services.get(name) if isinstance(name, str) else None
    if svc is None:
        problems.add(f"{key}.service", name, "is not a service of this stack")
        return None
    if svc.protocol not in HTTP_LIKE:
        # An http-route sends HTTP requests; a tcp service has no HTTP route (Consul's http-route
        # reference: services of an HTTP listener speak http; tcp needs a tcp-route and listener).
        problems.add(
            f"{key}.service",
            name,
            f"has protocol {svc.protocol}: the gateway's HTTP listener routes only to http, http2 or grpc services",
        )
        return None
    if path is None:
        return None
    return RouteSpec("prefix" if kind == "pathPrefix" else "exact", path, name)


def _gateway(
    raw: Any, services: Mapping[str, ServiceSpec], admin_cidrs: tuple[str, ...], default_type: str, problems: Problems
) -> GatewaySpec | None:
    """Config `gateway`: {port, routes: [{pathPrefix | pathExact, service}], allowCidrs, instanceType}."""
    raw = decode(raw, "gateway", problems)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, Mapping):
        problems.add("gateway", raw, "must be an object such as {port: 8080, routes: [{pathPrefix: /, service: web}]}")
        return None
    unknown_keys(raw, GATEWAY_KEYS, "gateway", problems)
    before = len(problems.items)
    port = integer(raw.get("port", GATEWAY_DEFAULT_PORT), "gateway.port", problems, 1, 65535, "a TCP port")
    if port in RESERVED_PORTS:
        problems.add("gateway.port", port, f"is reserved on mesh VMs for {RESERVED_PORTS[port]}")
    raw_routes = json_list(raw.get("routes"), "gateway.routes", problems)
    if not raw_routes and "routes" in raw:
        problems.add("gateway.routes", raw_routes, "is empty: the gateway needs at least one route")
    elif "routes" not in raw:
        problems.add("gateway.routes", None, "is missing: the gateway needs at least one route")
    routes = [_route(i, r, services, problems) for i, r in enumerate(raw_routes)]
    seen: dict[tuple[str, str], int] = {}
    for i, route in enumerate(routes):
        if route is None:
            continue
        first = seen.setdefault((route.match, route.path), i)
        if first != i:
            problems.add(f"gateway.routes[{i}]", route.path, f"matches the same requests as gateway.routes[{first}]")
    allow = (
        cidr_list(raw["allowCidrs"], "gateway.allowCidrs", problems, deployer=True)
        if "allowCidrs" in raw
        else admin_cidrs
    )
    if not allow and len(problems.items) == before:
        problems.add(
            "gateway.allowCidrs",
            list(allow),
            "is empty (it defaults to adminCidrs): the listener would be open to no one; name the networks "
            "that may call the gateway (0.0.0.0/0 for everyone)",
        )
    instance_type = raw.get("instanceType", default_type)
    instance_type = string(instance_type, "gateway.instanceType", problems, INSTANCE_TYPE, "an EC2 instance type")
    for name in services:
        # The gateway's agent may write the nodes named <gateway>-... (acl.agent_rules), and a
        # service's the nodes <service>-...: neither may fall under the other's prefix.
        if name == GATEWAY_NAME or name.startswith(f"{GATEWAY_NAME}-") or GATEWAY_NAME.startswith(f"{name}-"):
            problems.add(
                f"services.{name}",
                name,
                f"clashes with the API gateway's Consul name {GATEWAY_NAME!r} (or its nodes, "
                f"{GATEWAY_NAME}-<instance id>): rename the service",
            )
    if len(problems.items) != before or port is None or instance_type is None:
        return None
    return GatewaySpec(port, tuple(r for r in routes if r is not None), allow, instance_type)


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


# What the demo app's upstream probe sends each upstream (scripts/mesh-demo-app.py: GET <uri>/health).
PROBE_REQUEST = ("GET", DEMO_HEALTH_PATH)


def probe_admitted(intentions: Iterable[IntentionSpec], source: str, destination: str) -> bool:
    """Whether the intentions certainly let the demo app's probe of `source` through to `destination`."""
    return any(i.source == source and i.destination == destination and i.admits(*PROBE_REQUEST) for i in intentions)


def _existing_cluster(raw: Mapping[str, Any], problems: Problems) -> ConsulClusterSpec | None:
    """The cluster named by consulHttpAddr and its companions; None when the stack creates servers."""
    given = [key for key in EXISTING_CLUSTER_KEYS if raw.get(key) not in (None, "", [], "[]")]
    if "consulHttpAddr" not in given:
        for key in given:
            # A token or CA for servers this stack is about to create would be silently ignored.
            shown = "<secret>" if key in SECRET_KEYS else raw[key]
            problems.add(
                key,
                shown,
                "is set but consulHttpAddr is not: without consulHttpAddr the stack creates its own Consul "
                "servers (with their own token, CA and gossip key); set consulHttpAddr to use an existing cluster",
            )
        return None

    for key in ("consulRetryJoin", "consulToken"):
        if key not in given:
            problems.add(
                key, None, "is missing: an existing cluster (consulHttpAddr) needs it (see README: Configuration)"
            )
    http_addr = _http_addr(raw["consulHttpAddr"], problems)
    retry_join = retry_join_targets(raw.get("consulRetryJoin"), "consulRetryJoin", problems)
    ca_pem = _optional(raw, "consulCaPem")
    if ca_pem is not None:
        why = ca_pem_problem(ca_pem)
        if why:
            problems.add("consulCaPem", "<text>", why)  # never echoed: it might be a key pasted by mistake
            ca_pem = None
    gossip_key = raw.get("consulGossipKey")
    if gossip_key and not _is_gossip_key(gossip_key):
        # Never echo a secret, even a malformed one.
        problems.add(
            "consulGossipKey", "<secret>", "is not a gossip key: base64 of 16, 24 or 32 random bytes (consul keygen)"
        )
    if http_addr is None or not retry_join:
        return None
    return ConsulClusterSpec(http_addr=http_addr, retry_join=tuple(retry_join), ca_pem=ca_pem)


def retry_join_targets(raw: Any, key: str, problems: Problems) -> list[str]:
    """Consul retry_join targets (a list, or its JSON text): IPv4 addresses, host names or cloud
    auto-join strings; a problem naming `key`[i] for each bad one. Public for the component package."""
    targets = []
    for i, target in enumerate(json_list(raw, key, problems)):
        if string(target, f"{key}[{i}]", problems, RETRY_JOIN, "an address or a cloud auto-join string") is None:
            continue
        if not target.startswith("provider=") and (target.startswith("[") or target.count(":") >= 2):
            # The redirect excludes servers given by address, and redirect-traffic is IPv4 only.
            problems.add(f"{key}[{i}]", target, "is an IPv6 address: the mesh is IPv4 only")
        else:
            targets.append(target)
    return targets


def ca_pem_problem(value: Any) -> str | None:
    """Why `value` cannot be the servers' CA certificate written on every VM, or None. The value is
    never to be echoed: it might be a private key pasted by mistake. Public for the component package."""
    text = str(value)
    if "PRIVATE KEY" in text:
        return "contains a private key: give the CA certificate only (it is written world-readable on every VM)"
    if "-----BEGIN CERTIFICATE-----" not in text:
        return "is not a PEM certificate (no BEGIN CERTIFICATE line)"
    if not all(line.isprintable() for line in text.split("\n")):
        return "has control characters (\\r, tabs...) outside its lines"
    return None


def _servers(get: Callable[[str], Any], problems: Problems) -> ServersSpec | None:
    count = get("serverCount")
    count_value = config_integer(count, "serverCount", problems, 1, 5, "a server count")
    if count_value is not None and count_value not in SERVER_COUNTS:
        problems.add(
            "serverCount",
            count_value,
            "is not 1, 3 or 5: one server for a demo, three or five for a quorum that survives one or two losses",
        )
    instance_type = string(
        get("serverInstanceType"),
        "serverInstanceType",
        problems,
        INSTANCE_TYPE,
        "an EC2 instance type such as t3.small",
    )
    if count_value not in SERVER_COUNTS or instance_type is None:
        return None
    return ServersSpec(count=count_value, instance_type=instance_type)


def _network(raw: Mapping[str, Any], get: Callable[[str], Any], problems: Problems) -> NetworkSpec | None:
    before = len(problems.items)
    vpc_id = _optional(raw, "vpcId")
    if vpc_id is not None:
        vpc_id = string(vpc_id, "vpcId", problems, VPC_ID, "a VPC id such as vpc-0123456789abcdef0")
    subnet_ids = []
    raw_subnets = json_list(get("subnetIds"), "subnetIds", problems)
    for i, subnet in enumerate(raw_subnets):
        if (
            string(
                subnet,
                f"subnetIds[{i}]",
                problems,
                SUBNET_ID,
                "a subnet id such as subnet-0123456789abcdef0",
            )
            is not None
        ):
            subnet_ids.append(subnet)
    if len(set(subnet_ids)) != len(subnet_ids):
        problems.add("subnetIds", subnet_ids, "names a subnet twice")
    if vpc_id and not raw_subnets:
        problems.add("subnetIds", [], "is empty: with vpcId set, name the subnets the VMs go into")
    vpc_cidr = parse_cidr(get("vpcCidr"), "vpcCidr", problems)
    if vpc_cidr is not None and not 16 <= ipaddress.ip_network(vpc_cidr).prefixlen <= 24:
        problems.add(
            "vpcCidr", vpc_cidr, "must be a /16 to /24 network (AWS allows /16-/28; subnets are 4 bits longer)"
        )
    if vpc_cidr is not None and ipaddress.ip_network(vpc_cidr).version != 4:
        problems.add("vpcCidr", vpc_cidr, "must be an IPv4 network")
    zone_count = config_integer(get("zoneCount"), "zoneCount", problems, 1, 6, "a number of availability zones")
    if len(problems.items) != before:
        return None
    assert vpc_cidr is not None and zone_count is not None
    return NetworkSpec(vpc_id=vpc_id, subnet_ids=tuple(subnet_ids), vpc_cidr=vpc_cidr, zone_count=zone_count)
