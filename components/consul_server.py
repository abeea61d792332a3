"""ConsulServer: the Consul servers of a stack that has no existing cluster, secured from the start."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random
import pulumi_tls as tls

from components import ec2
from components.spec import PROJECT, SSH_PORT
from components.userdata import ServerRecipe, ServerSecrets, encode_user_data, render_server_cloud_config

HTTPS_PORT = 8501
SERVER_RPC_PORT = 8300
SERF_WAN_PORT = 8302
# The CA outlives many server generations; server certificates are renewed by replacing servers.
CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_CERT_VALIDITY_HOURS = 2 * 365 * 24
# EC2 tag by which the servers find each other, and agents find the servers (cloud auto-join).
JOIN_TAG_KEY = "consul-tproxy-vms-cluster"


def auto_join(tag_value: str) -> str:
    """The retry_join entry that finds this cluster's servers by their EC2 tag."""
    return f"provider=aws tag_key={JOIN_TAG_KEY} tag_value={tag_value}"


@dataclass
class ConsulServerArgs:
    datacenter: str
    """Consul datacenter of the servers."""
    consul_version: str
    """Consul version to install (apt package consul=<version>-*)."""
    count: int
    """How many servers: 1 for a demo, 3 or 5 for a quorum (also bootstrap_expect)."""
    instance_type: str
    """EC2 instance type of the servers."""
    join_tag_value: str
    """Value of the JOIN_TAG_KEY tag: unique per cluster, so no other stack's servers are joined."""
    subnet_ids: Sequence[pulumi.Input[str]]
    """Subnets to spread the servers over, in turn. Server 0 carries the API's public address, so its
    subnet must route to an internet gateway."""
    vpc_id: pulumi.Input[str]
    """VPC of those subnets, for the servers' security group."""
    mesh_security_group_id: pulumi.Input[str]
    """The mesh membership group: servers join it, and admit RPC and gossip from its members."""
    admin_cidrs: Sequence[str]
    """Networks the HTTPS API and UI (and SSH) are open to; Pulumi itself must be in one."""
    ami_id: pulumi.Input[str] | None = None
    """Image to boot. None: the newest Ubuntu 24.04 LTS image from Canonical."""
    key_name: str | None = None
    """EC2 key pair for SSH, if any."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags for every taggable resource."""


class ConsulServer(pulumi.ComponentResource):
    """Consul servers with ACLs (default deny), gossip encryption, TLS and auto_encrypt, and the UI.

    Everything secret is generated in the stack and kept secret in its state: the initial management
    token (random UUID), the gossip key (32 random bytes), the CA's and servers' private keys (ECDSA
    P-256). The CA signs the servers' certificates and is the Connect CA as well, so agents and
    Envoy trust one ca.pem. The HTTPS API and UI are served at a fixed public address (an Elastic
    IP on server 0, in every server certificate), so Pulumi's consul provider verifies the
    servers like any client does.
    """

    http_addr: pulumi.Output[str]
    """https://<public address>:8501, where the API and UI answer."""
    ca_pem: pulumi.Output[str]
    management_token: pulumi.Output[str]
    """The initial management token (secret)."""
    gossip_key: pulumi.Output[str]
    """The gossip encryption key (secret)."""
    retry_join: list[str]
    """What agents join: the cloud auto-join string of these servers."""
    instance_ids: list[pulumi.Output[str]]
    servers: list[dict[str, pulumi.Output[str]]]
    """instanceId, privateIp and nodeName of each server."""

    def __init__(self, name: str, args: ConsulServerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:ConsulServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, JOIN_TAG_KEY: args.join_tag_value}
        self.retry_join = [auto_join(args.join_tag_value)]

        token = random.RandomUuid(
            f"{name}-management-token", opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["result"])
        )
        gossip = random.RandomBytes(f"{name}-gossip-key", length=32, opts=child)
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            subject=tls.SelfSignedCertSubjectArgs(common_name=f"Consul CA {args.datacenter}", organization=PROJECT),
            opts=child,
        )
        api_ip = aws.ec2.Eip(f"{name}-api-ip", domain="vpc", tags={**tags, "Name": f"{name}-api-ip"}, opts=child)

        profile = ec2.instance_profile(name, f"Consul servers of datacenter {args.datacenter}", True, tags, self)
        group = ec2.security_group(
            name,
            args.vpc_id,
            f"Consul servers of {args.datacenter}: RPC and gossip from mesh members, HTTPS API from admins",
            [
                ec2.Ingress(
                    "rpc", "tcp", SERVER_RPC_PORT, "Consul server RPC from mesh members", args.mesh_security_group_id
                ),
                *ec2.gossip_ingress(args.mesh_security_group_id),
                # Servers gossip in the WAN pool with each other too, even in a single datacenter.
                ec2.Ingress("wan-tcp", "tcp", SERF_WAN_PORT, "Consul WAN gossip among servers", ec2.SELF),
                ec2.Ingress("wan-udp", "udp", SERF_WAN_PORT, "Consul WAN gossip among servers", ec2.SELF),
                *ec2.admin_ingress("https", HTTPS_PORT, "Consul HTTPS API and UI", args.admin_cidrs),
                *ec2.admin_ingress("ssh", SSH_PORT, "SSH", args.admin_cidrs),
            ],
            tags,
            self,
        )

        instances = []
        self.servers = []
        for index in range(args.count):
            node = f"{name}-{index}"
            key = tls.PrivateKey(f"{node}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
            request = tls.CertRequest(
                f"{node}-csr",
                private_key_pem=key.private_key_pem,
                subject=tls.CertRequestSubjectArgs(common_name=f"server.{args.datacenter}.consul"),
                # server.<dc>.consul: what agents check (verify_server_hostname). The public address
                # and loopback: what Pulumi, browsers and the CLI on the server dial.
                dns_names=[f"server.{args.datacenter}.consul", "localhost"],
                ip_addresses=["127.0.0.1", api_ip.public_ip],
                opts=child,
            )
            cert = tls.LocallySignedCert(
                f"{node}-cert",
                cert_request_pem=request.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem,
                ca_cert_pem=ca.cert_pem,
                validity_period_hours=SERVER_CERT_VALIDITY_HOURS,
                allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
                opts=child,
            )

            def render(v: dict[str, str], node: str = node) -> str:
                return render_server_cloud_config(
                    ServerRecipe(
                        node_name=node,
                        datacenter=args.datacenter,
                        consul_version=args.consul_version,
                        bootstrap_expect=args.count,
                        retry_join=tuple(self.retry_join),
                        ca_pem=v["ca"],
                        cert_pem=v["cert"],
                    ),
                    ServerSecrets(
                        management_token=v["token"], gossip_key=v["gossip"], key_pem=v["key"], ca_key_pem=v["ca_key"]
                    ),
                )

            cloud_config = pulumi.Output.secret(
                pulumi.Output.all(
                    ca=ca.cert_pem,
                    cert=cert.cert_pem,
                    token=token.result,
                    gossip=gossip.base64,
                    key=key.private_key_pem,
                    ca_key=ca_key.private_key_pem,
                ).apply(render)
            )
            server = ec2.instance(
                node,
                ami_id=args.ami_id,
                instance_type=args.instance_type,
                subnet_id=args.subnet_ids[index % len(args.subnet_ids)],
                security_group_ids=[group.id, args.mesh_security_group_id],
                profile=profile,
                key_name=args.key_name,
                user_data_base64=cloud_config.apply(encode_user_data),
                tags={**tags, "consul-tproxy-vms:node": node},
                parent=self,
            )
            instances.append(server)
            self.servers.append(
                {"instanceId": server.id, "privateIp": server.private_ip, "nodeName": pulumi.Output.from_input(node)}
            )
        association = aws.ec2.EipAssociation(
            f"{name}-api-ip-association", allocation_id=api_ip.allocation_id, instance_id=instances[0].id, opts=child
        )

        # Read through the association, so whoever uses the address waits until it points at a server.
        self.http_addr = pulumi.Output.all(api_ip.public_ip, association.id).apply(
            lambda v: f"https://{v[0]}:{HTTPS_PORT}"
        )
        self.ca_pem = ca.cert_pem
        self.management_token = pulumi.Output.secret(token.result)
        self.gossip_key = pulumi.Output.secret(gossip.base64)
        self.instance_ids = [server.id for server in instances]
        self.register_outputs(
            {
                "httpAddr": self.http_addr,
                "caPem": self.ca_pem,
                "managementToken": self.management_token,
                "gossipKey": self.gossip_key,
                "retryJoin": self.retry_join,
                "servers": self.servers,
            }
        )
