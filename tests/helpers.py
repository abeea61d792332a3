"""Recipes and rendered VMs shared by the renderer, validator and iptables tests."""

from __future__ import annotations

from dataclasses import replace

from components.spec import AppSpec, RedirectExclusions, ServiceSpec
from components.userdata import VmRecipe, VmSecrets

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBdemo\n-----END CERTIFICATE-----\n"
SECRETS = VmSecrets(agent_token="agent-secret-0001", service_token="service-secret-0002", gossip_key=None)


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
        "tls-gossip": (tls_recipe(), replace(SECRETS, gossip_key="c2VjcmV0LWdvc3NpcC1rZXktb2YtMzItYnl0ZXMhISE=")),
        "custom-app": (custom_app_recipe(), SECRETS),
    }
