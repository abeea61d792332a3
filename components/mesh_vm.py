"""MeshVm: one service on one EC2 VM, inside the Consul mesh in transparent-proxy mode."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_consul as consul

from components.spec import ENVOY_PUBLIC_PORT, PROJECT, SSH_PORT
from components.userdata import VmRecipe, VmSecrets, encode_user_data, render_cloud_config

UBUNTU_OWNER = "099720109477"  # Canonical
UBUNTU_IMAGE = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
SERF_LAN_PORT = 8301

ASSUME_ROLE_EC2 = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
)
# All that Consul's cloud auto-join (retry_join = "provider=aws ...") calls.
AUTO_JOIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}]}
)


@dataclass
class MeshVmArgs:
    recipe: VmRecipe
    """What goes onto the VM: its service, the datacenter, pinned versions, how to reach the servers."""
    subnet_id: pulumi.Input[str]
    """Subnet the VM is placed in."""
    vpc_id: pulumi.Input[str]
    """VPC of that subnet, for the VM's security group."""
    mesh_security_group_id: pulumi.Input[str]
    """The mesh membership group: the VM joins it, and admits peers that are in it."""
    dns_policy_name: pulumi.Input[str]
    """ACL policy added to the node token so that DNS works under the default token."""
    admin_cidrs: Sequence[str] = ()
    """Networks SSH is open to. Empty: no SSH from the network at all."""
    gossip_key: pulumi.Input[str] | None = None
    """The cluster's gossip encryption key (a secret), if it has one."""
    ami_id: pulumi.Input[str] | None = None
    """Image to boot. None: the newest Ubuntu 24.04 LTS image from Canonical."""
    key_name: str | None = None
    """EC2 key pair for SSH, if any."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags for every taggable resource of the VM."""


class MeshVm(pulumi.ComponentResource):
    """The VM of one mesh service: its two ACL tokens, IAM role, security group and instance.

    Its user data is rendered from the recipe and the tokens' secret IDs, so it is a secret; it holds
    nothing about other services or intentions, so the mesh can change around the VM without
    replacing it. A change to the recipe itself does replace it (cloud-init runs once per instance).
    """

    instance_id: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    node_name: pulumi.Output[str]
    virtual_hostname: pulumi.Output[str]
    port: pulumi.Output[int]
    cloud_config: pulumi.Output[str]
    """The rendered cloud-config text (secret): what cloud-init reads once it has unzipped it."""

    def __init__(self, name: str, args: MeshVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:MeshVm", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        recipe = args.recipe
        svc = recipe.service
        tags = {**args.tags, "consul-tproxy-vms:service": svc.name, "consul-tproxy-vms:node": svc.node_name}

        agent_token = consul.AclToken(
            f"{name}-agent-token",
            description=f"{PROJECT}: agent and default token of node {svc.node_name}",
            node_identities=[consul.AclTokenNodeIdentityArgs(node_name=svc.node_name, datacenter=recipe.datacenter)],
            policies=[args.dns_policy_name],
            opts=child,
        )
        service_token = consul.AclToken(
            f"{name}-service-token",
            description=f"{PROJECT}: registration and Envoy token of service {svc.name}",
            service_identities=[
                consul.AclTokenServiceIdentityArgs(service_name=svc.name, datacenters=[recipe.datacenter])
            ],
            opts=child,
        )
        secrets = pulumi.Output.all(
            agent=self._secret_id(agent_token),
            service=self._secret_id(service_token),
            gossip=pulumi.Output.secret(args.gossip_key) if args.gossip_key is not None else None,
        ).apply(lambda s: VmSecrets(agent_token=s["agent"], service_token=s["service"], gossip_key=s["gossip"]))
        # The secret IDs are wrapped in Output.secret, so everything rendered from them is secret too.
        cloud_config = pulumi.Output.secret(secrets.apply(lambda s: render_cloud_config(recipe, s)))

        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=ASSUME_ROLE_EC2,
            description=f"{PROJECT}: VM of mesh service {svc.name}",
            tags=tags,
            opts=child,
        )
        if any(target.startswith("provider=aws") for target in recipe.retry_join):
            aws.iam.RolePolicy(f"{name}-auto-join", role=role.id, policy=AUTO_JOIN_POLICY, opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)

        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            vpc_id=args.vpc_id,
            description=f"Mesh VM of {svc.name}: Envoy and gossip from mesh members, SSH from admins",
            tags={**tags, "Name": f"{name}-sg"},
            opts=child,
        )
        # The application's own port gets no rule: it listens on loopback and is reached only via
        # Envoy's public listener.
        peer_rules = [
            ("envoy", "tcp", ENVOY_PUBLIC_PORT, "Envoy public listener (mTLS) from mesh members"),
            ("gossip-tcp", "tcp", SERF_LAN_PORT, "Consul LAN gossip from mesh members"),
            ("gossip-udp", "udp", SERF_LAN_PORT, "Consul LAN gossip from mesh members"),
        ]
        for rule, protocol, port, description in peer_rules:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{rule}",
                security_group_id=group.id,
                referenced_security_group_id=args.mesh_security_group_id,
                ip_protocol=protocol,
                from_port=port,
                to_port=port,
                description=description,
                opts=child,
            )
        for index, cidr in enumerate(args.admin_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-ssh-{index}",
                security_group_id=group.id,
                cidr_ipv4=cidr,
                ip_protocol="tcp",
                from_port=SSH_PORT,
                to_port=SSH_PORT,
                description="SSH from an admin network",
                opts=child,
            )
        # Packages, Consul servers and peers' Envoys: outbound is open, the mesh decides the rest.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-egress",
            security_group_id=group.id,
            cidr_ipv4="0.0.0.0/0",
            ip_protocol="-1",
            description="All outbound traffic",
            opts=child,
        )

        ami = args.ami_id
        if ami is None:
            ami = aws.ec2.get_ami_output(
                most_recent=True,
                owners=[UBUNTU_OWNER],
                filters=[{"name": "name", "values": [UBUNTU_IMAGE]}],
                opts=pulumi.InvokeOutputOptions(parent=self),
            ).id
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=ami,
            instance_type=svc.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[group.id, args.mesh_security_group_id],
            iam_instance_profile=profile.name,
            key_name=args.key_name,
            user_data_base64=pulumi.Output.secret(cloud_config.apply(encode_user_data)),
            user_data_replace_on_change=True,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_tokens="required", http_endpoint="enabled", http_put_response_hop_limit=1
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(encrypted=True, volume_type="gp3"),
            tags={**tags, "Name": f"{name}"},
            opts=child,
        )

        self.instance_id = instance.id
        self.private_ip = instance.private_ip
        self.node_name = pulumi.Output.from_input(svc.node_name)
        self.virtual_hostname = pulumi.Output.from_input(svc.virtual_hostname)
        self.port = pulumi.Output.from_input(svc.port)
        self.cloud_config = cloud_config
        self.register_outputs(
            {
                "instanceId": self.instance_id,
                "privateIp": self.private_ip,
                "nodeName": self.node_name,
                "virtualHostname": self.virtual_hostname,
                "port": self.port,
            }
        )

    def _secret_id(self, token: consul.AclToken) -> pulumi.Output[str]:
        # The token resource does not hold its SecretID; read it, and keep it secret (the invoke's
        # result is not marked secret on its own).
        result = consul.get_acl_token_secret_id_output(
            accessor_id=token.accessor_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        return pulumi.Output.secret(result.secret_id)
