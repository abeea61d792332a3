"""MeshDefaults: the mesh-wide Consul settings every mesh VM relies on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_consul as consul

from .acl import dns_rules
from .spec import ENVOY_METRICS_PORT, PROJECT

# Where each Envoy serves its Prometheus metrics: a static listener of Envoy's bootstrap, made by
# `consul connect envoy` (command/connect/envoy/bootstrap_config.go generatePrometheusConfig: path
# /metrics, rewritten to the admin API's /stats/prometheus).
PROMETHEUS_BIND_ADDR = f"0.0.0.0:{ENVOY_METRICS_PORT}"


def proxy_defaults_config(access_logs: bool, envoy_metrics: bool) -> dict[str, object]:
    """The mesh-wide `proxy-defaults` entry (named "global") for these settings, PascalCase as
    Consul reads it. The agent merges its Config and AccessLogs into every sidecar's registration
    (agent/configentry/merge_service_config.go MergeServiceConfig).

    AccessLogs: Type unset is stdout (agent/xds/accesslogs), which systemd puts in the journal of
    envoy@<service>; delivered over xDS, so a running Envoy starts logging without a restart.
    envoy_prometheus_bind_addr: read when Envoy starts (bootstrap), so a running Envoy opens the
    port at its next restart; `consul connect redirect-traffic` also excludes that port when it
    sees it then (command/connect/redirecttraffic/redirect_traffic.go), and the VMs exclude it
    always (userdata.redirect_exclusions)."""
    entry: dict[str, object] = {}
    if access_logs:
        entry["AccessLogs"] = {"Enabled": True}
    if envoy_metrics:
        entry["Config"] = {"envoy_prometheus_bind_addr": PROMETHEUS_BIND_ADDR}
    return entry


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
    access_logs: bool = False
    """Envoy access logs of every sidecar (proxy-defaults AccessLogs), into its journal."""
    envoy_metrics: bool = False
    """Envoy's Prometheus endpoint on every sidecar (proxy-defaults envoy_prometheus_bind_addr)."""


class MeshDefaults(pulumi.ComponentResource):
    """The `mesh` config entry, one `service-defaults` per service, the `proxy-defaults` entry when
    access logs or Envoy metrics are on, and the DNS tokens' read-only policy."""

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
        proxy_defaults = proxy_defaults_config(args.access_logs, args.envoy_metrics)
        if proxy_defaults:
            # Declared only when something is on: a stack on an existing cluster leaves that
            # cluster's own global proxy-defaults alone unless it asks for these settings.
            consul.ConfigEntry(
                f"{name}-proxy-defaults",
                kind="proxy-defaults",
                name="global",
                config_json=json.dumps(proxy_defaults, sort_keys=True),
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
