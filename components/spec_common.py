"""The spec's shared rules: the project's name, the patterns and limits values are checked against,
the config's keys and defaults, the Envoy versions each Consul accepts, and MeshSpecError.

Part of the mesh spec (components/spec.py, which re-exports every public name).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .checks import (
    Problems,
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


def _optional(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key, DEFAULTS[key])
    return value or None
