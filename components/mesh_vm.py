"""MeshVm: one service on one EC2 VM, inside the Consul mesh in transparent-proxy mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_consul as consul

from components import acl, ec2
from components.spec import ENVOY_PUBLIC_PORT, PROJECT, SSH_PORT, ServiceSpec
from components.userdata import VmRecipe, VmSecrets, encode_user_data, render_cloud_config


@dataclass
class ConsulJoinArgs:
    """How a VM's agent joins the cluster. Inputs, so a consumer project can pass stack outputs."""

    datacenter: pulumi.Input[str]
    """Consul datacenter of the servers."""
    retry_join: pulumi.Input[Sequence[str]]
    """Server addresses, or a cloud auto-join string ("provider=aws tag_key=... tag_value=...")."""
    ca_pem: pulumi.Input[str] | None = None
    """The servers' CA certificate: when set (not None or empty), the agent uses TLS and auto_encrypt."""
    gossip_key: pulumi.Input[str] | None = None
    """The cluster's gossip encryption key (a secret), if it has one."""
    cloud_auto_join: bool | None = None
    """Grant the VM ec2:DescribeInstances, which cloud auto-join needs. None: decided from retry_join,
    which must then be a plain list (an Output's value is not known when resources are declared)."""


@dataclass
class MeshVmArgs:
    service: ServiceSpec
    """The service this VM runs: name, port, application, redirect exclusions, instance type."""
    consul_version: pulumi.Input[str]
    """Consul version to install (apt package consul=<version>-*)."""
    envoy_version: pulumi.Input[str]
    """Envoy version to install (apt package hashicorp-envoy=<version>-*); supported by consul_version."""
    cluster: ConsulJoinArgs
    """The cluster the agent joins."""
    subnet_id: pulumi.Input[str]
    """Subnet the VM is placed in."""
    vpc_id: pulumi.Input[str]
    """VPC of that subnet, for the VM's security group."""
    mesh_security_group_id: pulumi.Input[str]
    """The mesh membership group: the VM joins it, and admits peers that are in it."""
    dns_policy_name: pulumi.Input[str]
    """ACL policy of the VM's DNS token (read-only; MeshDefaults declares it)."""
    admin_cidrs: Sequence[str] = ()
    """Networks SSH is open to. Empty: no SSH from the network at all."""
    ami_id: pulumi.Input[str] | None = None
    """Image to boot. None: the newest Ubuntu 24.04 LTS image from Canonical."""
    key_name: str | None = None
    """EC2 key pair for SSH, if any."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags for every taggable resource of the VM."""


def _cloud_auto_join(cluster: ConsulJoinArgs) -> bool:
    if cluster.cloud_auto_join is not None:
        return cluster.cloud_auto_join
    if isinstance(cluster.retry_join, (list, tuple)) and all(isinstance(t, str) for t in cluster.retry_join):
        return ec2.is_cloud_auto_join(cluster.retry_join)
    raise ValueError(
        "ConsulJoinArgs.cloud_auto_join must be set when retry_join is an Output: "
        "True when agents join by cloud auto-join (provider=aws ...), else False"
    )


def _token_secret(value: object, which: str) -> str:
    """A token SecretID read from Consul; an empty answer must never reach a file as "None"."""
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"Consul returned no SecretID for the VM's {which} token: is the provider's token allowed acl:read?"
        )
    return value


class MeshVm(pulumi.ComponentResource):
    """The VM of one mesh service: its ACL tokens and policy, IAM role, security group and instance.

    Its user data is rendered from the service, the cluster's join settings and the tokens' secret
    IDs, so it is a secret; it holds nothing about other services or intentions, so the mesh can
    change around the VM without replacing it. A change to its own recipe does replace it
    (cloud-init runs once per instance).
    """

    instance_id: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    node_name: pulumi.Output[str]
    virtual_hostname: pulumi.Output[str]
    port: pulumi.Output[int]
    cloud_config: pulumi.Output[str]
    """The rendered cloud-config text (secret): what cloud-init reads once it has unzipped it."""

    def __init__(self, name: str, args: MeshVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:MeshVm", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        svc = args.service
        cluster = args.cluster
        auto_join = _cloud_auto_join(cluster)
        tags = {**args.tags, "consul-tproxy-vms:service": svc.name, "consul-tproxy-vms:node": svc.node_name}

        # Three tokens, each with what its processes need (components/acl.py, tests/test_acl.py):
        # the agent's, the registration's and Envoy's (the service token), and DNS's (read-only).
        # Both the agent and the service token need agent read on this node for /v1/agent/self.
        agent_read = consul.AclPolicy(
            f"{name}-agent-read",
            name=acl.policy_name(pulumi.get_stack(), svc.node_name, "agent-read"),
            description=f"{PROJECT}: agent read on node {svc.node_name} (/v1/agent/self)",
            rules=acl.agent_read_rules(svc.node_name),
            datacenters=[cluster.datacenter],
            opts=child,
        )
        agent_token = consul.AclToken(
            f"{name}-agent-token",
            description=f"{PROJECT}: agent token of node {svc.node_name}",
            node_identities=[consul.AclTokenNodeIdentityArgs(node_name=svc.node_name, datacenter=cluster.datacenter)],
            policies=[agent_read.name],
            opts=child,
        )
        service_token = consul.AclToken(
            f"{name}-service-token",
            description=f"{PROJECT}: registration, traffic redirect and Envoy token of service {svc.name}",
            service_identities=[
                consul.AclTokenServiceIdentityArgs(service_name=svc.name, datacenters=[cluster.datacenter])
            ],
            policies=[agent_read.name],
            opts=child,
        )
        dns_token = consul.AclToken(
            f"{name}-dns-token",
            description=f"{PROJECT}: DNS token of node {svc.node_name} (read-only)",
            policies=[args.dns_policy_name],
            opts=child,
        )

        def render(v: dict[str, object]) -> str:
            recipe = VmRecipe(
                service=svc,
                datacenter=str(v["datacenter"]),
                consul_version=str(v["consul_version"]),
                envoy_version=str(v["envoy_version"]),
                retry_join=tuple(v["retry_join"]),  # type: ignore[arg-type]
                ca_pem=str(v["ca"]) if v["ca"] else None,
            )
            if ec2.is_cloud_auto_join(recipe.retry_join) and not auto_join:
                raise ValueError(f"{name}: retry_join uses cloud auto-join, but cloud_auto_join is False")
            secrets = VmSecrets(
                agent_token=_token_secret(v["agent"], "agent"),
                service_token=_token_secret(v["service"], "service"),
                dns_token=_token_secret(v["dns"], "DNS"),
                gossip_key=str(v["gossip"]) if v["gossip"] else None,
            )
            return render_cloud_config(recipe, secrets)

        # The secret IDs are wrapped in Output.secret, so everything rendered from them is secret too.
        cloud_config = pulumi.Output.secret(
            pulumi.Output.all(
                datacenter=cluster.datacenter,
                consul_version=args.consul_version,
                envoy_version=args.envoy_version,
                retry_join=cluster.retry_join,
                ca=cluster.ca_pem,
                gossip=pulumi.Output.secret(cluster.gossip_key) if cluster.gossip_key is not None else None,
                agent=self._secret_id(agent_token),
                service=self._secret_id(service_token),
                dns=self._secret_id(dns_token),
            ).apply(render)
        )

        profile = ec2.instance_profile(name, f"VM of mesh service {svc.name}", auto_join, tags, self)
        # The application's own port gets no rule: it listens on loopback and is reached only via
        # Envoy's public listener.
        group = ec2.security_group(
            name,
            args.vpc_id,
            f"Mesh VM of {svc.name}: Envoy and gossip from mesh members, SSH from admins",
            [
                ec2.Ingress(
                    "envoy",
                    "tcp",
                    ENVOY_PUBLIC_PORT,
                    "Envoy public listener (mTLS) from mesh members",
                    args.mesh_security_group_id,
                ),
                *ec2.gossip_ingress(args.mesh_security_group_id),
                *ec2.admin_ingress("ssh", SSH_PORT, "SSH", args.admin_cidrs),
            ],
            tags,
            self,
        )
        instance = ec2.instance(
            name,
            ami_id=args.ami_id,
            instance_type=svc.instance_type,
            subnet_id=args.subnet_id,
            security_group_ids=[group.id, args.mesh_security_group_id],
            profile=profile,
            key_name=args.key_name,
            user_data_base64=cloud_config.apply(encode_user_data),
            tags=tags,
            parent=self,
        )

        self.instance_id = instance.id
        self.private_ip = instance.private_ip
        self.public_ip = instance.public_ip
        self.node_name = pulumi.Output.from_input(svc.node_name)
        self.virtual_hostname = pulumi.Output.from_input(svc.virtual_hostname)
        self.port = pulumi.Output.from_input(svc.port)
        self.cloud_config = cloud_config
        self.register_outputs(self.summary())

    def summary(self) -> dict[str, pulumi.Output]:
        """What the stack exports of this VM (camelCase, the `services` output's contract)."""
        return {
            "instanceId": self.instance_id,
            "privateIp": self.private_ip,
            "publicIp": self.public_ip,
            "nodeName": self.node_name,
            "virtualHostname": self.virtual_hostname,
            "port": self.port,
        }

    def _secret_id(self, token: consul.AclToken) -> pulumi.Output[str]:
        # The token resource does not hold its SecretID; read it, and keep it secret (the invoke's
        # result is not marked secret on its own).
        result = consul.get_acl_token_secret_id_output(
            accessor_id=token.accessor_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        return pulumi.Output.secret(result.secret_id)
