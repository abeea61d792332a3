"""The stack: config -> validated spec -> components -> outputs.

`main()` is what `pulumi up` runs (through __main__.py). `build()` declares the resources of a
validated spec and returns the stack outputs, so tests and tools run it under Pulumi's mocks.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_consul as consul

from components.intentions import ServiceIntentions, ServiceIntentionsArgs
from components.mesh_defaults import MeshDefaults, MeshDefaultsArgs
from components.mesh_vm import MeshVm, MeshVmArgs
from components.network import MeshNetwork, MeshNetworkArgs
from components.spec import PROJECT, SECRET_KEYS, TOP_LEVEL_KEYS, MeshSpec, MeshSpecError, load_spec
from components.userdata import VmRecipe


def read_config() -> dict[str, Any]:
    """Raw values of every config key set in this project's namespace, known or not.

    Unknown keys are kept so that validation can name a typo. Secret values are only checked for
    presence and shape here; the program reads them as secret Outputs.
    """
    prefix = f"{PROJECT}:"
    keys = {k for k in pulumi.runtime.config.CONFIG.get() if k.startswith(prefix)}
    keys |= {k for k in pulumi.runtime.config.get_config_env() if k.startswith(prefix)}
    keys |= {prefix + k for k in TOP_LEVEL_KEYS}
    raw = {}
    for key in sorted(keys):
        value = pulumi.runtime.get_config(key)
        if value is not None:
            raw[key[len(prefix) :]] = value
    return raw


def dns_policy_name(stack: str) -> str:
    """Consul policy names allow letters, digits, '-' and '_'; Pulumi stack names also allow '.'."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{PROJECT}-{stack}-dns-read")[:128]


def build(spec: MeshSpec, consul_token: pulumi.Input[str], gossip_key: pulumi.Input[str] | None) -> dict[str, Any]:
    """Declare the mesh described by `spec`; return the stack outputs (camelCase names)."""
    stack = pulumi.get_stack()
    provider = consul.Provider(
        "consul",
        address=spec.consul.address,
        scheme=spec.consul.scheme,
        datacenter=spec.datacenter,
        token=pulumi.Output.secret(consul_token),
        ca_pem=spec.consul.ca_pem,
    )
    with_consul = pulumi.ResourceOptions(providers=[provider])

    network = MeshNetwork("network", MeshNetworkArgs(vpc_id=spec.vpc_id, subnet_id=spec.subnet_id))
    defaults = MeshDefaults(
        "defaults",
        MeshDefaultsArgs(
            mesh_destinations_only=spec.mesh_destinations_only,
            protocols={name: svc.protocol for name, svc in spec.services.items()},
            dns_policy_name=dns_policy_name(stack),
            datacenter=spec.datacenter,
        ),
        opts=with_consul,
    )
    gossip = pulumi.Output.secret(gossip_key) if gossip_key is not None else None
    vms = {
        name: MeshVm(
            name,
            MeshVmArgs(
                recipe=VmRecipe(
                    service=svc,
                    datacenter=spec.datacenter,
                    consul_version=spec.consul_version,
                    envoy_version=spec.envoy_version,
                    retry_join=spec.consul.retry_join,
                    ca_pem=spec.consul.ca_pem,
                ),
                subnet_id=network.subnet_id,
                vpc_id=network.vpc_id,
                mesh_security_group_id=network.mesh_security_group_id,
                dns_policy_name=defaults.dns_policy_name,
                admin_cidrs=spec.admin_cidrs,
                gossip_key=gossip,
                ami_id=spec.ami_id,
                key_name=spec.ssh_key_name,
                tags={"consul-tproxy-vms:stack": stack},
            ),
            opts=with_consul,
        )
        for name, svc in spec.services.items()
    }
    # Intentions wait for the service-defaults so that protocol-dependent (L7) rules are accepted.
    intentions = ServiceIntentions(
        "intentions",
        ServiceIntentionsArgs(intentions=spec.intentions),
        opts=pulumi.ResourceOptions(providers=[provider], depends_on=[defaults]),
    )

    outputs: dict[str, Any] = {
        "services": {
            name: {
                "instanceId": vm.instance_id,
                "privateIp": vm.private_ip,
                "nodeName": vm.node_name,
                "virtualHostname": vm.virtual_hostname,
                "port": vm.port,
            }
            for name, vm in vms.items()
        },
        "intentions": intentions.applied,
        "consulHttpAddr": spec.consul.http_addr,
        "consulDatacenter": spec.datacenter,
        "consulRetryJoin": list(spec.consul.retry_join),
        "consulCaPem": spec.consul.ca_pem,
        "consulVersion": spec.consul_version,
        "envoyVersion": spec.envoy_version,
        "dnsPolicyName": defaults.dns_policy_name,
        "vpcId": network.vpc_id,
        "subnetId": network.subnet_id,
        "meshSecurityGroupId": network.mesh_security_group_id,
    }
    if gossip is not None:
        outputs["consulGossipKey"] = gossip
    return outputs


def main() -> dict[str, Any]:
    """Read and validate the stack's config, then declare and export the mesh."""
    try:
        spec = load_spec(read_config())
    except MeshSpecError as err:
        # RunError: Pulumi prints the message alone, without a traceback; nothing was declared.
        raise pulumi.RunError(str(err)) from None
    config = pulumi.Config()
    token_key, gossip_key_name = SECRET_KEYS
    outputs = build(spec, config.require_secret(token_key), config.get_secret(gossip_key_name))
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
