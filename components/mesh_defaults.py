"""MeshDefaults: the mesh-wide Consul settings every mesh VM relies on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_consul as consul

from .acl import dns_rules
from .spec import PROJECT


def service_defaults(
    resource_name: str, service: str, protocol: str, opts: pulumi.ResourceOptions
) -> consul.ConfigEntry:
    """A service's `service-defaults` entry: its protocol (L7 intentions need http)."""
    return consul.ConfigEntry(
        resource_name,
        kind="service-defaults",
        name=service,
        config_json=json.dumps({"Protocol": protocol}),
        opts=opts,
    )


@dataclass
class MeshDefaultsArgs:
    mesh_destinations_only: bool
    """When true, proxies reach only mesh destinations: other outbound traffic is refused."""
    protocols: Mapping[str, str]
    """Service name -> protocol (http, http2, grpc, tcp), written as each service's service-defaults."""
    dns_policy_name: str
    """Name of the ACL policy of the agents' DNS tokens (read-only); unique within the Consul cluster."""
    datacenter: str
    """Datacenter the DNS policy applies in."""


class MeshDefaults(pulumi.ComponentResource):
    """The `mesh` config entry, one `service-defaults` per service, and the DNS tokens' read-only policy."""

    dns_policy_name: pulumi.Output[str]

    def __init__(self, name: str, args: MeshDefaultsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:MeshDefaults", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        consul.ConfigEntry(
            f"{name}-mesh",
            kind="mesh",
            name="mesh",
            config_json=json.dumps({"TransparentProxy": {"MeshDestinationsOnly": args.mesh_destinations_only}}),
            opts=child,
        )
        for service in sorted(args.protocols):
            service_defaults(f"{name}-{service}-defaults", service, args.protocols[service], child)
        policy = consul.AclPolicy(
            f"{name}-dns-read",
            name=args.dns_policy_name,
            description=f"{PROJECT}: read-only rights of Consul DNS (the agents' DNS token)",
            rules=dns_rules(),
            datacenters=[args.datacenter],
            opts=child,
        )

        self.dns_policy_name = policy.name
        self.register_outputs({"dnsPolicyName": self.dns_policy_name})
