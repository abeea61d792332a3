"""GatewayVm: the VM that runs the mesh's API gateway, the way in for a browser.

Built from a mesh VM's pieces (components/ec2.py, the login of components/identity.py, the user
data renderer of components/userdata.py): the Consul agent logs in with the instance role like every
VM, and Envoy runs as `consul connect envoy -gateway api -register -service <gateway>`. What the
gateway listens on and routes comes from config entries (components/gateway_entries.py), so the
VM's user data holds only its name and the cluster's: routes change without replacing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi

from . import acl, ec2, identity
from .mesh_vm import ConsulJoinArgs, LoginArgs, boot_inputs, cloud_auto_join, declare_login_roles, resolved_login
from .spec import PROJECT, SSH_PORT, GatewaySpec
from .userdata import GatewayRecipe, encode_user_data, render_gateway_cloud_config


@dataclass
class GatewayVmArgs:
    gateway: GatewaySpec
    """The validated gateway: its name, listener port, allowed networks and instance type."""
    consul_version: pulumi.Input[str]
    envoy_version: pulumi.Input[str]
    cluster: ConsulJoinArgs
    login: LoginArgs
    subnet_id: pulumi.Input[str]
    vpc_id: pulumi.Input[str]
    mesh_security_group_id: pulumi.Input[str]
    admin_cidrs: Sequence[str] = ()
    """Networks SSH is open to."""
    ami_id: pulumi.Input[str] | None = None
    key_name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    instance_after: Sequence[pulumi.Resource] = ()
    consul_provider: pulumi.ProviderResource | None = None
    """Given to the Consul roles alone, as for a MeshVm (see MeshVmArgs.consul_provider)."""


def gateway_ingress(gateway: GatewaySpec, members: pulumi.Input[str], admin_cidrs: Sequence[str]) -> list[ec2.Ingress]:
    """The listener from `allowCidrs` only, gossip from the mesh's members, SSH from the admins. No
    Envoy public port: the gateway calls into the mesh and is never called by it."""
    return [
        *(
            ec2.Ingress(f"listener-{i}", "tcp", gateway.port, "API gateway listener from an allowed network", cidr=c)
            for i, c in enumerate(gateway.allow_cidrs)
        ),
        *ec2.gossip_ingress(members),
        *ec2.admin_ingress("ssh", SSH_PORT, "SSH", admin_cidrs),
    ]


class GatewayVm(pulumi.ComponentResource):
    """The gateway's Consul roles (bound at login like a mesh VM's), IAM role, security group and instance."""

    instance_id: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    url: pulumi.Output[str]
    """http://<public ip>:<listener port>: what a browser opens."""
    cloud_config: pulumi.Output[str]

    def __init__(self, name: str, args: GatewayVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:GatewayVm", name, None, opts)
        gateway = args.gateway
        login = args.login
        cluster = args.cluster
        with_consul = pulumi.ResourceOptions(parent=self, provider=args.consul_provider)
        tags = {**args.tags, "consul-tproxy-vms:service": gateway.name}

        # The same roles the binding rules name for a mesh VM's service (identity.login_roles): the
        # agent's, and the one its service token links beside the gateway's service identity.
        declare_login_roles(
            name,
            f"the API gateway {gateway.name}",
            gateway.name,
            login,
            cluster.datacenter,
            acl.gateway_service_rules(gateway.name),
            "agent read on the nodes and mesh read for the gateway's service token",
            with_consul,
        )

        def render(v: dict[str, object]) -> str:
            recipe = GatewayRecipe(
                gateway=gateway,
                datacenter=str(v["datacenter"]),
                consul_version=str(v["consul_version"]),
                envoy_version=str(v["envoy_version"]),
                retry_join=tuple(v["retry_join"]),  # type: ignore[arg-type]
                login=resolved_login(login, v),
                ca_pem=str(v["ca"]) if v["ca"] else None,
            )
            return render_gateway_cloud_config(recipe)

        cloud_config = boot_inputs(cluster, login, args.consul_version, args.envoy_version).apply(render)
        auto_join = cloud_auto_join(cluster)
        profile = ec2.instance_profile(
            name,
            f"API gateway {gateway.name}",
            auto_join,
            {**tags, identity.SERVICE_TAG: gateway.name},
            self,
            path=login.iam_path,
            login=True,
        )
        group = ec2.security_group(
            name,
            args.vpc_id,
            f"API gateway {gateway.name}: listener from allowed networks, gossip from mesh members, SSH from admins",
            gateway_ingress(gateway, args.mesh_security_group_id, args.admin_cidrs),
            tags,
            self,
        )
        instance = ec2.instance(
            name,
            ami_id=args.ami_id,
            instance_type=gateway.instance_type,
            subnet_id=args.subnet_id,
            # In the mesh group: the routed services' sidecars admit their callers from it.
            security_group_ids=[group.id, args.mesh_security_group_id],
            profile=profile,
            key_name=args.key_name,
            user_data_base64=cloud_config.apply(encode_user_data),
            tags=tags,
            parent=self,
            depends_on=args.instance_after,
        )
        self.instance_id = instance.id
        self.public_ip = instance.public_ip
        self.private_ip = instance.private_ip
        self.url = instance.public_ip.apply(lambda ip: f"http://{ip}:{gateway.port}")
        self.cloud_config = cloud_config
        self.register_outputs({"instanceId": self.instance_id, "url": self.url})
