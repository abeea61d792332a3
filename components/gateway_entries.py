"""ApiGatewayEntries: the API gateway's Consul config entries, its listener and one route per route.

Consul's API gateway on VMs is configured by config entries alone (developer.hashicorp.com/consul/
docs/north-south/api-gateway/vm): an `api-gateway` entry naming the listeners, and `http-route`
entries attached to a listener. The VM that runs Envoy for it (components/gateway_vm.py) only
registers the gateway; what it listens on and where it sends requests comes from here, so changing
the routes changes config entries and never replaces a VM.

The pulumi-consul SDK has no typed resource for either kind (it has service-defaults, -intentions,
-resolver, -router, -splitter), so they are the generic `consul.ConfigEntry` with the entry's fields
as JSON, in the PascalCase the HTTP API takes (reference/config-entry/api-gateway: Listeners
[{Name, Port, Protocol}]; reference/config-entry/http-route: Parents [{Kind, Name, SectionName}],
Rules [{Matches [{Path {Match, Value}}], Services [{Name}]}]).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pulumi
import pulumi_consul as consul

from .spec import GATEWAY_LISTENER, PROJECT, GatewaySpec, RouteSpec


def listener_config(gateway: GatewaySpec) -> dict[str, object]:
    """The api-gateway entry's fields besides Kind and Name: one plain-HTTP listener."""
    return {"Listeners": [{"Name": GATEWAY_LISTENER, "Port": gateway.port, "Protocol": "http"}]}


def route_name(gateway: GatewaySpec, route: RouteSpec) -> str:
    """The http-route's name, from what it matches alone: reordering the routes or changing where one
    sends requests keeps every entry's name (an update in place, never a delete and create)."""
    digest = hashlib.sha256(f"{route.match}:{route.path}".encode()).hexdigest()[:10]
    return f"{gateway.name}-route-{digest}"


def route_config(gateway: GatewaySpec, route: RouteSpec) -> dict[str, object]:
    """The http-route entry's fields besides Kind and Name: attached to the gateway's listener, one
    rule sending the matching requests to the route's service."""
    return {
        "Parents": [{"Kind": "api-gateway", "Name": gateway.name, "SectionName": GATEWAY_LISTENER}],
        "Rules": [
            {
                "Matches": [{"Path": {"Match": route.match, "Value": route.path}}],
                "Services": [{"Name": route.service}],
            }
        ],
    }


@dataclass
class ApiGatewayEntriesArgs:
    gateway: GatewaySpec
    """The validated gateway: its listener port and routes."""


class ApiGatewayEntries(pulumi.ComponentResource):
    """The `api-gateway` entry and an `http-route` per route. Give it the consul provider, and make it
    depend on the service-defaults: a route's service must be HTTP-like when the route is written."""

    routes: pulumi.Output[list[str]]
    """The routes as `prefix:/path->service` lines (the mesh gate's diff, the render)."""

    def __init__(self, name: str, args: ApiGatewayEntriesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:ApiGatewayEntries", name, None, opts)
        gateway = args.gateway
        entry = consul.ConfigEntry(
            f"{name}-api-gateway",
            kind="api-gateway",
            name=gateway.name,
            config_json=json.dumps(listener_config(gateway), sort_keys=True),
            opts=pulumi.ResourceOptions(parent=self),
        )
        for route in gateway.routes:
            entry_name = route_name(gateway, route)
            consul.ConfigEntry(
                f"{name}-{entry_name.removeprefix(gateway.name + '-')}",
                kind="http-route",
                name=entry_name,
                config_json=json.dumps(route_config(gateway, route), sort_keys=True),
                # A route names its parent gateway: written after it, deleted before it.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]),
            )
        self.routes = pulumi.Output.from_input([r.key() for r in gateway.routes])
        self.register_outputs({"routes": self.routes})
