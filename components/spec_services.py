"""The spec of a service (config `services.<name>`): one VM, or a group of them, running an app
beside its sidecar.

Part of the mesh spec (components/spec.py, which re-exports every public name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .checks import (
    Problems,
    cidr_list,
    decode,
    integer,
    json_list,
    ports,
    string,
)
from .spec_common import (
    DEBIAN_PACKAGE,
    DEFAULTS,
    DEMO_HEALTH_PATH,
    DNS_LABEL,
    INSTANCE_TYPE,
    MAX_COMMAND,
    MAX_INSTANCES,
    MESH_PACKAGES,
    PROTOCOLS,
    RESERVED_NAMES,
    RESERVED_PORTS,
    RESERVED_PREFIX,
    URL_PATH,
    MeshSpecError,
    unknown_keys,
)


@dataclass(frozen=True)
class ServiceKey:
    """One key of a service's settings (config `services.<name>.<key>`)."""

    value: str
    """How its value is written."""
    description: str
    """What it does, on one line (and what leaving it unset means)."""


SERVICE_SCHEMA: dict[str, ServiceKey] = {
    "port": ServiceKey("int (required)", "the application's port, on 127.0.0.1"),
    "upstreams": ServiceKey("[service, ...]", "what the demo app calls, as http://<name>.virtual.consul"),
    "command": ServiceKey("/abs/path args", "your application instead of the demo app"),
    "packages": ServiceKey("[deb, deb=version]", "apt packages your application needs"),
    "healthCheckPath": ServiceKey("/path", "HTTP check; default /health for the demo app, else a TCP check"),
    "protocol": ServiceKey("http|http2|grpc|tcp", "service-defaults protocol (default http)"),
    "instanceType": ServiceKey("t3.small", "EC2 instance type of this service's VMs (default: instanceType)"),
    "instances": ServiceKey("int", "number of VMs, run as an EC2 Auto Scaling group (1-100); unset: one VM of its own"),
    "excludeInboundPorts": ServiceKey("[int]", "inbound ports the redirect leaves alone"),
    "excludeOutboundPorts": ServiceKey("[int]", "outbound ports the redirect leaves alone"),
    "excludeOutboundCidrs": ServiceKey("[cidr]", "outbound networks the redirect leaves alone"),
    "excludeUids": ServiceKey("[int]", "users whose outbound traffic the redirect leaves alone"),
    # The mesh's own: MeshSpec.splits, never in a VM's user data.
    "splits": ServiceKey(
        "[{weight, service}]",
        "service-splitter: calls to this service go to these services by weight (percent, adding up to 100, "
        "at most two decimals); every one http/http2/grpc like this one",
    ),
}
"""The one description of a service's keys: the spec accepts exactly these (and refuses the retired
ones by name), and Pulumi.yaml's comment block lists them (tests/test_service_schema.py)."""
RETIRED_SERVICE_KEYS = {
    "nodeName": "is no longer set: a service's nodes are named <service>-<instance id> when each VM boots",
}
"""Keys a service once had -> why each is refused: a message of its own, not "is not a known key"."""
SERVICE_KEYS = frozenset(SERVICE_SCHEMA) | frozenset(RETIRED_SERVICE_KEYS)


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


def _service(name: Any, raw: Any, default_instance_type: str, problems: Problems) -> ServiceSpec | None:
    """One service's settings, each key checked in turn; None (with its problems) when any is bad."""
    key = f"services.{name}"
    if not _usable_name(name, key, problems):
        return None
    if not isinstance(raw, Mapping):
        problems.add(key, raw, "must be an object such as {port: 8080}")
        return None
    unknown_keys(raw, SERVICE_KEYS, key, problems)
    before = len(problems.items)
    port = _port(raw, key, problems)
    for retired in sorted(RETIRED_SERVICE_KEYS.keys() & raw.keys()):
        problems.add(f"{key}.{retired}", raw[retired], RETIRED_SERVICE_KEYS[retired])
    protocol = raw.get("protocol", "http")
    if protocol not in PROTOCOLS:
        problems.add(f"{key}.protocol", protocol, f"is not one of {', '.join(PROTOCOLS)}")
    upstreams = [
        up
        for i, up in enumerate(json_list(raw.get("upstreams", []), f"{key}.upstreams", problems))
        if string(up, f"{key}.upstreams[{i}]", problems, DNS_LABEL, "a service name") is not None
    ]
    command = _command(raw, key, problems)
    packages = _packages(raw, key, problems)
    health = _health_check_path(raw, command, key, problems)
    instance_type = raw.get("instanceType", default_instance_type)
    string(instance_type, f"{key}.instanceType", problems, INSTANCE_TYPE, "an EC2 instance type such as t3.small")
    instances = raw.get("instances")
    if instances is not None:
        instances = integer(instances, f"{key}.instances", problems, 1, MAX_INSTANCES, "a group size")
    exclusions = _exclusions(raw, key, problems)
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


def _usable_name(name: Any, key: str, problems: Problems) -> bool:
    """A DNS label (so <name>.virtual.consul resolves) that the stack does not use itself."""
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
        problems.add(
            key,
            name,
            "is not a valid service name: use a DNS label (lowercase letters, digits and '-', "
            "starting with a letter, at most 63 characters) so <name>.virtual.consul resolves",
        )
        return False
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIX):
        problems.add(
            key,
            name,
            f"is a name the stack uses itself ({', '.join(sorted(RESERVED_NAMES))}, "
            f"{RESERVED_PREFIX}*): choose another service name",
        )
        return False
    return True


def _port(raw: Mapping[str, Any], key: str, problems: Problems) -> int | None:
    """The application's port: required, a TCP port, none the VM uses itself."""
    if "port" not in raw:
        problems.add(f"{key}.port", None, "is missing: every service needs the port its application listens on")
        return None
    port = integer(raw["port"], f"{key}.port", problems, 1, 65535, "a TCP port")
    if port in RESERVED_PORTS:
        problems.add(f"{key}.port", port, f"is reserved on mesh VMs for {RESERVED_PORTS[port]}")
    return port


def _command(raw: Mapping[str, Any], key: str, problems: Problems) -> Any:
    """The application's command line, which lands on a unit file's ExecStart= line."""
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
    return command


def _packages(raw: Mapping[str, Any], key: str, problems: Problems) -> list[str]:
    """Debian packages the application needs, none of those the mesh pins itself."""
    packages = []
    for i, pkg in enumerate(json_list(raw.get("packages", []), f"{key}.packages", problems)):
        what = "a Debian package name (optionally name=version)"
        if string(pkg, f"{key}.packages[{i}]", problems, DEBIAN_PACKAGE, what) is None:
            continue
        if pkg.partition("=")[0] in MESH_PACKAGES:
            problems.add(
                f"{key}.packages[{i}]",
                pkg,
                f"is installed and pinned by the mesh itself ({', '.join(MESH_PACKAGES)}): "
                "set consulVersion or envoyVersion instead",
            )
        else:
            packages.append(pkg)
    return packages


def _health_check_path(raw: Mapping[str, Any], command: Any, key: str, problems: Problems) -> str | None:
    """The HTTP check's path (the demo app's /health by default); None: a TCP check."""
    health = raw.get("healthCheckPath", DEMO_HEALTH_PATH if command is None else None)
    if health is None:
        return None
    if string(health, f"{key}.healthCheckPath", problems, URL_PATH, "an absolute URL path such as /health") is None:
        return None
    if "${" in health or "%{" in health:
        # HCL reads ${ and %{ in a quoted string as a template (escape.hcl).
        problems.add(f"{key}.healthCheckPath", health, "must not contain ${ or %{")
        return None
    return health


def _exclusions(raw: Mapping[str, Any], key: str, problems: Problems) -> RedirectExclusions:
    """The traffic the redirect leaves alone: ports in and out, CIDRs out, user IDs."""
    uids = (
        integer(u, f"{key}.excludeUids[{i}]", problems, 0, 2**31 - 1, "a user ID")
        for i, u in enumerate(json_list(raw.get("excludeUids", []), f"{key}.excludeUids", problems))
    )
    return RedirectExclusions(
        inbound_ports=ports(raw.get("excludeInboundPorts", []), f"{key}.excludeInboundPorts", problems),
        outbound_ports=ports(raw.get("excludeOutboundPorts", []), f"{key}.excludeOutboundPorts", problems),
        outbound_cidrs=cidr_list(raw.get("excludeOutboundCidrs", []), f"{key}.excludeOutboundCidrs", problems),
        uids=tuple(sorted({u for u in uids if u is not None})),
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
