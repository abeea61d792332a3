"""Renders a mesh VM's cloud-init user data: a pure function of its recipe and its secrets.

Same input, byte-identical output: no clocks, no randomness, no dict-order surprises, and gzip with
a fixed mtime. Only what belongs to the VM's own service enters: never another service, never an
intention, so changing the mesh around a VM never replaces it.
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from components.spec import (
    ENVOY_OUTBOUND_PORT,
    ENVOY_PUBLIC_PORT,
    RedirectExclusions,
    ServiceSpec,
)

TEMPLATES = Path(__file__).parent / "templates"
SCRIPTS = Path(__file__).parent.parent / "scripts"

# HashiCorp's package signing key; apt trusts the repository only under this fingerprint.
HASHICORP_KEY_FINGERPRINT = "798AEC654E5C15428C8E42EEAA16FCBCA621E701"
# Instance metadata (IMDSv2 tokens, instance identity): reachable even with MeshDestinationsOnly.
IMDS_CIDR = "169.254.169.254/32"
# What EC2 accepts as user data, counted before base64.
EC2_USER_DATA_LIMIT = 16384
CA_PATH = "/etc/consul.d/ca.pem"
GRPC_CA_PATH = "/etc/consul.d/grpc-ca.pem"


@dataclass(frozen=True)
class VmRecipe:
    """Everything a VM's user data is made from, apart from secrets."""

    service: ServiceSpec
    """The service this VM runs."""
    datacenter: str
    """Consul datacenter the agent joins."""
    consul_version: str
    """Consul version, e.g. 1.22.1 (installed as the apt package consul=<version>-*)."""
    envoy_version: str
    """Envoy version, e.g. 1.35.3 (installed as hashicorp-envoy=<version>-*)."""
    retry_join: tuple[str, ...]
    """Addresses (or a cloud auto-join string) of the Consul servers."""
    ca_pem: str | None = None
    """CA certificate of the Consul servers; when set, the agent uses TLS and auto_encrypt."""
    grpc_ca_pem: str | None = None
    """CA of the agent's auto_encrypt certificate (the Connect CA); when set, Envoy reaches the agent
    over gRPC TLS (8503) and plaintext gRPC is off. Needs ca_pem."""

    def __post_init__(self) -> None:
        if self.grpc_ca_pem is not None and self.ca_pem is None:
            raise ValueError("grpc_ca_pem needs ca_pem: gRPC TLS uses the auto_encrypt certificate, which needs TLS")


@dataclass(frozen=True)
class ServerRecipe:
    """Everything a Consul server's user data is made from, apart from secrets."""

    node_name: str
    """Consul node name of the server."""
    datacenter: str
    """Consul datacenter."""
    consul_version: str
    """Consul version (apt package consul=<version>-*)."""
    bootstrap_expect: int
    """How many servers the cluster has: the first leader election waits for all of them."""
    retry_join: tuple[str, ...]
    """How the servers find each other (a cloud auto-join string)."""
    ca_pem: str
    """The stack's CA certificate: TLS for every agent, and the Connect CA root."""
    cert_pem: str
    """This server's certificate, signed by the CA."""


@dataclass(frozen=True)
class ServerSecrets:
    """A server's secret material. Never logged, never exported in plain text."""

    management_token: str
    """The initial management token the server bootstraps ACLs with."""
    gossip_key: str
    """The cluster's gossip encryption key."""
    key_pem: str
    """This server's TLS private key."""
    ca_key_pem: str
    """The CA's private key: the Connect CA signs mesh and auto_encrypt certificates with it."""


@dataclass(frozen=True)
class VmSecrets:
    """Secret values written into the VM's files. Never logged, never exported in plain text."""

    agent_token: str
    """SecretID of the node-identity token (agent and default token)."""
    service_token: str
    """SecretID of the service-identity token (registration and Envoy)."""
    gossip_key: str | None = None
    """Gossip encryption key of the cluster, if it has one."""


@dataclass(frozen=True)
class VmFile:
    """One file cloud-init writes."""

    path: str
    content: str
    permissions: str = "0644"
    owner: str = "root:root"


def _hcl(value: Any) -> str:
    # A JSON string or list of strings is a valid HCL literal, and escapes what needs escaping.
    return json.dumps(value)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["hcl"] = _hcl
    return env


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


@cache
def _static(path: Path) -> str:
    return path.read_text()


def redirect_exclusions(recipe: VmRecipe) -> RedirectExclusions:
    """The service's own exclusions plus what every VM needs to reach outside the mesh.

    Consul servers given by IP are excluded too: the agent's traffic already is (by UID), this keeps
    the CLI and other local tools able to reach them when MeshDestinationsOnly is on.
    """
    own = recipe.service.exclusions
    servers = set()
    for target in recipe.retry_join:
        try:
            servers.add(str(ipaddress.ip_network(target)))
        except ValueError:
            continue  # a DNS name or a cloud auto-join string: nothing to exclude by address
    return RedirectExclusions(
        inbound_ports=own.inbound_ports,
        outbound_ports=own.outbound_ports,
        outbound_cidrs=tuple(sorted({IMDS_CIDR, *servers, *own.outbound_cidrs})),
        uids=own.uids,
    )


def vm_files(recipe: VmRecipe, secrets: VmSecrets) -> list[VmFile]:
    """Every file the VM gets, in the order cloud-init writes them."""
    svc = recipe.service
    grpc_ca_file = _grpc_ca_path(recipe)
    context: dict[str, Any] = {
        "service": svc,
        "datacenter": recipe.datacenter,
        "retry_join": list(recipe.retry_join),
        "tls": recipe.ca_pem is not None,
        "grpc_tls": recipe.grpc_ca_pem is not None,
        "grpc_ca_file": grpc_ca_file,
        "gossip_key": secrets.gossip_key,
        "agent_token": secrets.agent_token,
        "service_token": secrets.service_token,
        "envoy_public_port": ENVOY_PUBLIC_PORT,
        "envoy_outbound_port": ENVOY_OUTBOUND_PORT,
        "exclusions": redirect_exclusions(recipe),
        "upstream_hosts": [f"{up}.virtual.consul" for up in svc.upstreams],
    }
    files = [
        VmFile("/etc/consul.d/consul.hcl", _render("consul.hcl.j2", **context), "0640", "root:consul"),
        VmFile(f"/etc/consul.d/service-{svc.name}.hcl", _render("service.hcl.j2", **context), "0640", "root:consul"),
    ]
    if recipe.ca_pem is not None:
        files.append(VmFile(CA_PATH, recipe.ca_pem))
    if recipe.grpc_ca_pem is not None and grpc_ca_file != CA_PATH:
        files.append(VmFile(GRPC_CA_PATH, recipe.grpc_ca_pem))
    files += [
        VmFile(f"/etc/envoy/{svc.name}.env", _render("envoy.env.j2", **context), "0640", "root:envoy"),
        VmFile("/etc/systemd/resolved.conf.d/consul.conf", _static(TEMPLATES / "consul-resolved.conf")),
        VmFile("/etc/systemd/system/consul.service", _static(TEMPLATES / "consul.service")),
        VmFile("/etc/systemd/system/envoy@.service", _static(TEMPLATES / "envoy@.service")),
        VmFile("/etc/systemd/system/mesh-app.service", _render("mesh-app.service.j2", **context)),
        VmFile("/usr/local/sbin/consul-redirect-traffic", _static(SCRIPTS / "consul-redirect-traffic.sh"), "0755"),
        VmFile("/usr/local/sbin/consul-cleanup-traffic", _static(SCRIPTS / "consul-cleanup-traffic.sh"), "0755"),
    ]
    if svc.app.is_demo:
        files.append(VmFile("/usr/local/bin/mesh-demo-app", _static(SCRIPTS / "mesh-demo-app.py"), "0755"))
    return _one_newline(files)


def _one_newline(files: list[VmFile]) -> list[VmFile]:
    # A YAML literal block keeps exactly one trailing newline, so with one each the file on the VM is
    # byte for byte what is rendered here.
    return [VmFile(f.path, f.content.rstrip("\n") + "\n", f.permissions, f.owner) for f in files]


def _grpc_ca_path(recipe: VmRecipe) -> str | None:
    if recipe.grpc_ca_pem is None:
        return None
    return CA_PATH if recipe.grpc_ca_pem == recipe.ca_pem else GRPC_CA_PATH


def server_files(recipe: ServerRecipe, secrets: ServerSecrets) -> list[VmFile]:
    """Every file a Consul server gets, in the order cloud-init writes them."""
    context = {
        "node_name": recipe.node_name,
        "datacenter": recipe.datacenter,
        "bootstrap_expect": recipe.bootstrap_expect,
        "retry_join": list(recipe.retry_join),
        "gossip_key": secrets.gossip_key,
        "management_token": secrets.management_token,
        "ca_pem": recipe.ca_pem,
        "ca_key_pem": secrets.ca_key_pem,
    }
    return _one_newline(
        [
            VmFile("/etc/consul.d/consul.hcl", _render("consul-server.hcl.j2", **context), "0640", "root:consul"),
            VmFile(CA_PATH, recipe.ca_pem),
            VmFile("/etc/consul.d/server.pem", recipe.cert_pem),
            VmFile("/etc/consul.d/server-key.pem", secrets.key_pem, "0640", "root:consul"),
            VmFile("/etc/systemd/system/consul.service", _static(TEMPLATES / "consul.service")),
        ]
    )


def packages(recipe: VmRecipe) -> list[tuple[str, str]]:
    """Packages as (name, apt version pattern): Consul and Envoy pinned, then the app's own."""
    pinned = [("consul", f"{recipe.consul_version}-*"), ("hashicorp-envoy", f"{recipe.envoy_version}-*")]
    extra = []
    for pkg in recipe.service.app.packages:
        name, _, version = pkg.partition("=")
        extra.append((name, version or "*"))
    return pinned + sorted(extra)


# System users the VMs' services run as: name -> home directory.
CONSUL_USER = ("consul", "/var/lib/consul")
ENVOY_USER = ("envoy", "/nonexistent")


def _cloud_config(
    title: str,
    users: list[tuple[str, str]],
    packages: list[tuple[str, str]],
    files: list[VmFile],
    restart: list[str],
    start: list[str],
) -> str:
    """runcmd restarts the `restart` units (already running, reconfigured), then enables and starts
    the `start` units, each in the order given."""
    return _render(
        "cloud-config.yaml.j2",
        title=title,
        users=users,
        hashicorp_key_fingerprint=HASHICORP_KEY_FINGERPRINT,
        packages=packages,
        files=files,
        restart=restart,
        start=start,
    )


def render_cloud_config(recipe: VmRecipe, secrets: VmSecrets) -> str:
    """The cloud-config text for one mesh VM."""
    svc = recipe.service
    return _cloud_config(
        title=f'Mesh VM for service "{svc.name}" (Consul node "{svc.node_name}", datacenter "{recipe.datacenter}").',
        users=[CONSUL_USER, ENVOY_USER],
        packages=packages(recipe),
        files=vm_files(recipe, secrets),
        restart=["systemd-resolved.service"],
        # The application starts before Envoy, whose ExecStartPre redirects the VM's traffic.
        start=["consul.service", "mesh-app.service", f"envoy@{svc.name}.service"],
    )


def render_server_cloud_config(recipe: ServerRecipe, secrets: ServerSecrets) -> str:
    """The cloud-config text for one Consul server."""
    return _cloud_config(
        title=f'Consul server "{recipe.node_name}" of datacenter "{recipe.datacenter}".',
        users=[CONSUL_USER],
        packages=[("consul", f"{recipe.consul_version}-*")],
        files=server_files(recipe, secrets),
        restart=[],
        start=["consul.service"],
    )


def unpack_cloud_config(text: str) -> dict[str, str]:
    """Path -> content of the files a cloud-config writes (what lands on the VM)."""
    doc = yaml.safe_load(text)
    return {f["path"]: f["content"] for f in doc.get("write_files", [])}


def encode_user_data(cloud_config: str) -> str:
    """Gzip (mtime 0, so deterministic) and base64: what EC2's user_data_base64 takes.

    cloud-init recognises gzip by its magic bytes; compressed, a VM's user data stays far below
    EC2's limit whatever exclusions and packages it carries.
    """
    packed = gzip.compress(cloud_config.encode(), compresslevel=9, mtime=0)
    if len(packed) > EC2_USER_DATA_LIMIT:
        raise ValueError(f"user data is {len(packed)} bytes gzipped, over EC2's limit of {EC2_USER_DATA_LIMIT}")
    return base64.b64encode(packed).decode()


def decode_user_data(user_data_base64: str) -> str:
    """The inverse of encode_user_data: the cloud-config text cloud-init will read."""
    return gzip.decompress(base64.b64decode(user_data_base64)).decode()
