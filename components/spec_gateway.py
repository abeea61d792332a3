"""The spec of the API gateway (config `gateway`): its listener and its routes into the mesh.

Part of the mesh spec (components/spec.py, which re-exports every public name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .checks import (
    Problems,
    cidr_list,
    decode,
    integer,
    json_list,
    string,
)
from .spec_common import (
    GATEWAY_DEFAULT_PORT,
    GATEWAY_KEYS,
    GATEWAY_NAME,
    HTTP_LIKE,
    INSTANCE_TYPE,
    RESERVED_PORTS,
    ROUTE_KEYS,
    URL_PATH,
    unknown_keys,
)
from .spec_intentions import (
    IntentionSpec,
)
from .spec_services import (
    ServiceSpec,
)


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
