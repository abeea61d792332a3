"""The spec of where the mesh runs: an existing Consul cluster (consulHttpAddr and its companions)
or the servers the stack creates, and the network (an existing VPC or one the stack creates).

Part of the mesh spec (components/spec.py, which re-exports every public name).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .checks import (
    Problems,
    config_integer,
    json_list,
    parse_cidr,
    string,
)
from .spec_common import (
    DEFAULTS,
    EXISTING_CLUSTER_KEYS,
    HTTP_ADDR,
    INSTANCE_TYPE,
    RETRY_JOIN,
    SECRET_KEYS,
    SERVER_COUNTS,
    SUBNET_ID,
    VPC_ID,
    _optional,
)


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
