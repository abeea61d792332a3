"""Recipes and rendered VMs shared by the renderer, validator and iptables tests."""

from __future__ import annotations

from dataclasses import dataclass, replace

from components.spec import AppSpec, RedirectExclusions, ServiceSpec
from components.userdata import (
    ServerRecipe,
    ServerSecrets,
    VmFile,
    VmRecipe,
    VmSecrets,
    render_cloud_config,
    render_server_cloud_config,
    server_files,
    vm_files,
)

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBdemo\n-----END CERTIFICATE-----\n"
SECRETS = VmSecrets(
    agent_token="agent-secret-0001", service_token="service-secret-0002", dns_token="dns-secret-0006", gossip_key=None
)
GOSSIP_KEY = "c2VjcmV0LWdvc3NpcC1rZXktb2YtMzItYnl0ZXMhISE="
SERVER = ServerRecipe(
    node_name="consul-server-1",
    datacenter="dc1",
    consul_version="1.22.1",
    bootstrap_expect=3,
    retry_join=("provider=aws tag_key=consul-tproxy-vms-cluster tag_value=test-dc1",),
    ca_pem=CA_PEM,
    cert_pem="-----BEGIN CERTIFICATE-----\nMIIBserver\n-----END CERTIFICATE-----\n",
)
SERVER_SECRETS = ServerSecrets(
    management_token="management-secret-0003",
    gossip_key=GOSSIP_KEY,
    key_pem="-----BEGIN EC PRIVATE KEY-----\nserver-key-secret-0004\n-----END EC PRIVATE KEY-----\n",
)


def recipe(**service_overrides: object) -> VmRecipe:
    service = ServiceSpec(name="web", port=9090, upstreams=("api",))
    return VmRecipe(
        service=replace(service, **service_overrides),
        datacenter="dc1",
        consul_version="1.22.1",
        envoy_version="1.35.3",
        retry_join=("10.0.1.10", "consul.internal"),
    )


def tls_recipe() -> VmRecipe:
    return replace(recipe(), ca_pem=CA_PEM)


def server_made_recipe() -> VmRecipe:
    """A VM of a stack that created its servers: TLS, gossip, cloud auto-join."""
    return replace(recipe(), ca_pem=CA_PEM, retry_join=SERVER.retry_join)


def custom_app_recipe() -> VmRecipe:
    return recipe(
        name="billing",
        port=8080,
        upstreams=(),
        app=AppSpec(
            command="/opt/billing/bin/server --listen 127.0.0.1:8080",
            packages=("openjdk-21-jre-headless",),
            health_check_path=None,
        ),
        exclusions=RedirectExclusions(
            inbound_ports=(9100,), outbound_ports=(5432,), outbound_cidrs=("10.20.0.0/16",), uids=(1001,)
        ),
    )


def all_recipes() -> dict[str, tuple[VmRecipe, VmSecrets]]:
    """Every shape of VM the renderer makes: plain, with TLS and gossip, with a custom app."""
    return {
        "demo": (recipe(), SECRETS),
        "tls-gossip": (tls_recipe(), replace(SECRETS, gossip_key=GOSSIP_KEY)),
        "server-made": (server_made_recipe(), replace(SECRETS, gossip_key=GOSSIP_KEY)),
        "custom-app": (custom_app_recipe(), SECRETS),
    }


@dataclass(frozen=True)
class RenderedVm:
    """One VM's user data as rendered, the files it writes, and the units it starts."""

    cloud_config: str
    files: list[VmFile]
    units: list[str]


def rendered_vms() -> dict[str, RenderedVm]:
    """Every kind of VM the stack boots, mesh VMs and a Consul server, for the real validators."""
    cases = {
        case: RenderedVm(
            render_cloud_config(r, s),
            vm_files(r, s),
            ["consul.service", "mesh-app.service", f"envoy@{r.service.name}.service"],
        )
        for case, (r, s) in all_recipes().items()
    }
    cases["server"] = RenderedVm(
        render_server_cloud_config(SERVER, SERVER_SECRETS),
        server_files(SERVER, SERVER_SECRETS),
        ["consul-data.service", "consul.service"],
    )
    return cases
