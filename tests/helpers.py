"""Recipes and rendered VMs shared by the renderer, validator and iptables tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from components.spec import AppSpec, GatewaySpec, RedirectExclusions, RouteSpec, ServiceSpec
from components.userdata import (
    GATEWAY_UNIT,
    LIFECYCLE_UNITS,
    GatewayRecipe,
    Login,
    ServerRecipe,
    VmFile,
    VmRecipe,
    gateway_files,
    render_cloud_config,
    render_gateway_cloud_config,
    render_server_cloud_config,
    server_files,
    vm_files,
)

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBdemo\n-----END CERTIFICATE-----\n"
LOGIN = Login(
    prefix="consul-tproxy-vms-test",
    server_id="consul-tproxy-vms-test",
    http_addrs=("https://10.0.1.10:8501",),
    gossip_key_path="",
)
SERVER = ServerRecipe(
    node_name="consul-server-1",
    datacenter="dc1",
    consul_version="1.22.1",
    bootstrap_expect=3,
    retry_join=("provider=aws tag_key=consul-tproxy-vms-cluster tag_value=test-dc1",),
    ca_pem=CA_PEM,
    cert_pem="-----BEGIN CERTIFICATE-----\nMIIBserver\n-----END CERTIFICATE-----\n",
    region="us-east-1",
    gossip_key_parameter="/consul-tproxy-vms/consul-tproxy-vms-test/gossip-key",
    tls_key_parameter="/consul-tproxy-vms/consul-tproxy-vms-test/consul-server-1/tls-key",
    login_method="consul-tproxy-vms-test-server",
    server_id="consul-tproxy-vms-test",
    data_volume_id="vol-0123456789abcdef0",
    data_device="/dev/sdf",
)


def recipe(**service_overrides: object) -> VmRecipe:
    service = ServiceSpec(name="web", port=9090, upstreams=("api",))
    return VmRecipe(
        service=replace(service, **service_overrides),
        datacenter="dc1",
        consul_version="1.22.1",
        envoy_version="1.35.3",
        retry_join=("10.0.1.10", "consul.internal"),
        login=LOGIN,
    )


def tls_recipe() -> VmRecipe:
    return replace(recipe(), ca_pem=CA_PEM)


def server_made_recipe() -> VmRecipe:
    """A VM of a stack that created its servers: TLS, the gossip key in KV, cloud auto-join."""
    login = replace(LOGIN, gossip_key_path="consul-tproxy-vms/consul-tproxy-vms-test/gossip-key")
    return replace(recipe(), ca_pem=CA_PEM, retry_join=SERVER.retry_join, login=login)


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


def grouped_recipe() -> VmRecipe:
    """A VM of a service of many instances (an Auto Scaling group) of a stack that created its servers."""
    made = server_made_recipe()
    return replace(made, service=replace(made.service, instances=3), group_name="consul-tproxy-vms-test-web-0a1b2c3d")


def all_recipes() -> dict[str, VmRecipe]:
    """Every shape of VM the renderer makes: plain, with TLS, made by a stack with servers, a custom
    app, a VM of an Auto Scaling group."""
    return {
        "demo": recipe(),
        "tls": tls_recipe(),
        "server-made": server_made_recipe(),
        "custom-app": custom_app_recipe(),
        "grouped": grouped_recipe(),
    }


def gateway_recipe() -> GatewayRecipe:
    """The API gateway VM of a stack that created its servers (TLS, gossip key, cloud auto-join)."""
    made = server_made_recipe()
    gateway = GatewaySpec(8080, (RouteSpec("prefix", "/", "web"),), ("198.51.100.7/32",), "t3.small")
    return GatewayRecipe(
        gateway, made.datacenter, made.consul_version, made.envoy_version, made.retry_join, made.login, made.ca_pem
    )


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
            render_cloud_config(r),
            vm_files(r),
            [
                "mesh-imds-guard.service",
                "consul-login.service",
                "consul.service",
                "mesh-app.service",
                f"envoy@{r.service.name}.service",
                *(LIFECYCLE_UNITS if r.group_name else ()),
            ],
        )
        for case, r in all_recipes().items()
    }
    gateway = gateway_recipe()
    cases["gateway"] = RenderedVm(
        render_gateway_cloud_config(gateway),
        gateway_files(gateway),
        ["mesh-imds-guard.service", "consul-login.service", "consul.service", GATEWAY_UNIT],
    )
    cases["server"] = RenderedVm(
        render_server_cloud_config(SERVER),
        server_files(SERVER),
        ["consul-data.service", "consul-server-secrets.service", "consul.service", "consul-server-login.service"],
    )
    return cases


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in HTTP server on 127.0.0.1 with `handler`, for as long as the block runs: its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
