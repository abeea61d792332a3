"""ConsulServer: the Consul servers of a stack that has no existing cluster, secured from the start.

Built for day two as much as for the first `up`:

- Each server's Consul data lives on its own encrypted EBS volume (`<node>-data`), attached at a
  fixed device and mounted at boot as data_dir: a replaced instance comes back with the Raft log,
  tokens, policies, config entries and intentions. The volume is `retain_on_delete`: a deletion,
  `pulumi destroy` included, leaves it in AWS (destroy still completes); `protect_data` protects
  it as well, so that an `up` that would replace it fails instead.
- Each server keeps its private address: its own network interface (`<node>-eni`), the instance's
  primary, outlives the instance. So does its public address (an Elastic IP on that interface;
  server 0's is the API's). An interface can only be one instance's primary, so a server instance
  is deleted before its replacement is created.
- Servers are replaced one at a time: server i+1's instance depends on server i's gate
  (readiness.ServerReady), which, when server i was replaced, waits until autopilot reports it a
  healthy voter again. On the first `up` the gates wait for nothing, so the chain cannot deadlock
  against bootstrap_expect; the stack's ConsulReady waits for the bootstrapped cluster instead.
- Server certificates renew ahead of expiry (early_renewal_hours): a renewed certificate changes
  its server's user data, and the replacement goes through the same chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random
import pulumi_tls as tls

from . import ec2, identity
from .readiness import ServerReady
from .spec import PROJECT, SSH_PORT
from .userdata import ServerRecipe, encode_user_data, render_server_cloud_config

HTTPS_PORT = 8501
SERVER_RPC_PORT = 8300
SERF_WAN_PORT = 8302
# The CA outlives many server generations; server certificates are renewed by replacing servers.
CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_CERT_VALIDITY_HOURS = 2 * 365 * 24
# Renew a server certificate in the first `up` of its last 90 days (pulumi-tls early_renewal_hours:
# the certificate is then "ready for renewal" and replaced; terraform-provider-tls
# internal/provider/resource_locally_signed_cert.go). The CA has no early renewal: a new CA must
# be rolled out to every agent first (a CA bundle), a planned act, never an automatic one.
SERVER_CERT_EARLY_RENEWAL_HOURS = 90 * 24
# Where each server's data volume is attached; the boot script mounts it as /var/lib/consul.
DATA_DEVICE = "/dev/sdf"
DATA_VOLUME_GB = 10
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
    """Image to boot (a pin's image_id). None: each server pins the newest Ubuntu 24.04 LTS of its
    first `up` (ec2.pinned_image)."""
    key_name: str | None = None
    """EC2 key pair for SSH, if any."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags for every taggable resource."""
    zones: Sequence[pulumi.Input[str]] = ()
    """Availability zone of each subnet, in the same order (the data volumes go there). Empty: looked
    up from the subnets."""
    network_path: Sequence[pulumi.Resource] = ()
    """The route between the deployer and the subnets (MeshNetwork.path): the public addresses and
    the gates depend on it, so destroy removes it only after them."""
    ready_timeout_seconds: int = 600
    """How long a server's gate waits for it to be a healthy voter again after its replacement."""
    protect_data: bool = False
    """Also `protect` the data volumes: an `up` or `destroy` that would delete one fails."""
    data_volume_gb: int = DATA_VOLUME_GB
    """Size of each server's data volume (grows in place; never shrinks)."""
    login_prefix: str = PROJECT
    """identity.login_prefix(stack): the servers log in to <prefix>-server for their agent tokens."""
    iam_path: str = "/"
    """identity.iam_path(stack): the servers' roles live there, where the auth methods look."""
    region: pulumi.Input[str] = ""
    """AWS region of the SSM parameters holding the gossip key and the TLS keys."""


class ConsulServer(pulumi.ComponentResource):
    """Consul servers with ACLs (default deny), gossip encryption, TLS and auto_encrypt, and the UI.

    Everything secret is generated in the stack and kept secret in its state: the initial management
    token (random UUID), the gossip key (32 random bytes), the CA's and servers' private keys (ECDSA
    P-256). The CA signs the servers' certificates (RPC and HTTPS TLS) in Pulumi; its key never
    reaches a VM. The Connect CA is Consul's built-in one, whose root key lives in Raft. The HTTPS
    API and UI are served at a fixed public address (an Elastic IP on server 0, in every server
    certificate), so Pulumi's consul provider verifies the servers like any client does.
    """

    http_addr: pulumi.Output[str]
    """https://<public address>:8501, where the API and UI answer. Known at preview once the
    address exists: it is the Elastic IP's, whatever happens to the servers."""
    api_access: list[pulumi.Resource]
    """What carries the deployer's requests to the API: the address's association and the admin
    HTTPS rules. Whatever talks to the API depends on these (and on the network's path)."""
    gates: list[pulumi.Resource]
    """Each server's readiness.ServerReady, in server order."""
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
    private_https_addrs: list[pulumi.Output[str]]
    """https://<private address>:8501 of each server: where mesh VMs log in (stable addresses)."""

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
        self.http_addr = api_ip.public_ip.apply(lambda ip: f"https://{ip}:{HTTPS_PORT}")

        # Secrets go to SSM Parameter Store, never into user data: SecureStrings encrypted with a key
        # of the stack's own. Not the account's aws/ssm key: its key policy lets every principal of
        # the account decrypt through SSM, and AWS's ReadOnlyAccess policy includes ssm:GetParameter.
        # This key's default policy delegates to IAM (AWS KMS developer guide, "Default key policy"),
        # so only principals whose IAM policies allow kms:Decrypt on it read the values: the servers.
        secrets_key = aws.kms.Key(
            f"{name}-secrets-key",
            description=f"{PROJECT}: encrypts the Consul servers' secrets in SSM Parameter Store",
            enable_key_rotation=True,
            deletion_window_in_days=7,
            tags=tags,
            opts=child,
        )
        parameter_prefix = f"/{PROJECT}/{args.login_prefix}"

        def secure_parameter(resource: str, path: str, value: pulumi.Input[str], what: str) -> aws.ssm.Parameter:
            return aws.ssm.Parameter(
                resource,
                name=f"{parameter_prefix}/{path}",
                type="SecureString",
                key_id=secrets_key.arn,
                value=value,
                description=f"{PROJECT}: {what}, read at boot",
                tags=tags,
                opts=child,
            )

        gossip_parameter = secure_parameter(
            f"{name}-gossip-key-parameter", "gossip-key", gossip.base64, "the Consul gossip key of the servers"
        )
        group, rules = ec2.security_group_with_rules(
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
                # The mesh members' 8501 rule comes later, once ACLs are bootstrapped (admit_mesh_to_api).
                *ec2.admin_ingress("ssh", SSH_PORT, "SSH", args.admin_cidrs),
            ],
            tags,
            self,
        )
        self._rule_prefix = name
        self._group_id = group.id
        self._mesh_security_group_id = args.mesh_security_group_id
        https_rules = [rule for key, rule in sorted(rules.items()) if key.startswith("https-")]
        # An Elastic IP can only be associated in a VPC with an internet gateway: after the path.
        after_path = pulumi.ResourceOptions(parent=self, depends_on=list(args.network_path))

        instances = []
        self.servers = []
        self.gates = []
        self.api_access = []
        for index in range(args.count):
            node = f"{name}-{index}"
            subnet = args.subnet_ids[index % len(args.subnet_ids)]
            zone = (
                args.zones[index % len(args.zones)]
                if args.zones
                else aws.ec2.get_subnet_output(
                    id=subnet, opts=pulumi.InvokeOutputOptions(parent=self)
                ).availability_zone
            )
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
                early_renewal_hours=SERVER_CERT_EARLY_RENEWAL_HOURS,
                allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
                opts=child,
            )

            tls_parameter = secure_parameter(
                f"{node}-tls-key-parameter", f"{node}/tls-key", key.private_key_pem, f"the TLS key of server {node}"
            )
            # Each server its own role: it may read the gossip key and its own TLS key, nothing more;
            # its node tag names the node identity its aws-iam login gets (identity.NODE_TAG).
            profile = ec2.instance_profile(
                node,
                f"Consul server {node} of datacenter {args.datacenter}",
                True,
                {**tags, identity.NODE_TAG: node},
                self,
                path=args.iam_path,
                login=True,
                statements=pulumi.Output.all(gossip_parameter.arn, tls_parameter.arn, secrets_key.arn).apply(
                    lambda arns: secrets_statements(arns[:2], arns[2])
                ),
            )
            # The server's address and security groups live on an interface of its own, which the
            # instance only borrows: its Raft peers find it at the same address after a replacement.
            interface = aws.ec2.NetworkInterface(
                f"{node}-eni",
                subnet_id=subnet,
                security_groups=[group.id, args.mesh_security_group_id],
                description=f"{PROJECT}: Consul server {node}, kept across instance replacements",
                tags={**tags, "Name": f"{node}-eni"},
                opts=child,
            )
            # Server 0's public address is the API's; the others need one too: a server installs
            # Consul from HashiCorp's apt repository at boot, and the subnets have no NAT.
            public_ip = (
                api_ip
                if index == 0
                else aws.ec2.Eip(
                    f"{node}-public-ip", domain="vpc", tags={**tags, "Name": f"{node}-public-ip"}, opts=child
                )
            )
            association = aws.ec2.EipAssociation(
                f"{name}-api-ip-association" if index == 0 else f"{node}-public-ip-association",
                allocation_id=public_ip.allocation_id,
                network_interface_id=interface.id,
                opts=after_path,
            )
            if index == 0:
                self.api_access = [association, *https_rules]
            data = aws.ebs.Volume(
                f"{node}-data",
                availability_zone=zone,
                size=args.data_volume_gb,
                type="gp3",
                encrypted=True,
                tags={**tags, "Name": f"{node}-data", "consul-tproxy-vms:node": node},
                # Consul's state: never deleted with the stack, and protected on request.
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True, protect=args.protect_data),
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
                        region=v["region"],
                        gossip_key_parameter=v["gossip_parameter"],
                        tls_key_parameter=v["tls_parameter"],
                        login_method=identity.method_name(args.login_prefix, "server"),
                        server_id=args.login_prefix,
                        data_volume_id=v["data_volume"],
                        data_device=DATA_DEVICE,
                    )
                )

            # Nothing secret goes in: the parameters' names, not their values.
            cloud_config = pulumi.Output.all(
                ca=ca.cert_pem,
                cert=cert.cert_pem,
                region=args.region,
                gossip_parameter=gossip_parameter.name,
                tls_parameter=tls_parameter.name,
                # The retained volume's id, known before the instance exists: the boot finds the
                # volume by it (its NVMe serial), never by elimination.
                data_volume=data.id,
            ).apply(render)
            server = ec2.instance(
                node,
                ami_id=args.ami_id,
                instance_type=args.instance_type,
                network_interface_id=interface.id,
                profile=profile,
                key_name=args.key_name,
                user_data_base64=cloud_config.apply(encode_user_data),
                tags={**tags, "consul-tproxy-vms:node": node},
                parent=self,
                # One at a time: never touch this server before the previous one is back. And after
                # what its first boot needs: the way to the internet (apt) and its public address,
                # and what it reads (its parameters, their key, its role's policies: the profile
                # waits for those, ec2.instance_profile).
                depends_on=[
                    *self.gates[-1:],
                    *args.network_path,
                    association,
                    gossip_parameter,
                    tls_parameter,
                    secrets_key,
                    profile,
                ],
            )
            attachment = aws.ec2.VolumeAttachment(
                f"{node}-data-attachment",
                device_name=DATA_DEVICE,
                volume_id=data.id,
                instance_id=server.id,
                # Stop Consul cleanly (the instance) before its data volume is taken away.
                stop_instance_before_detaching=True,
                opts=child,
            )
            gate = ServerReady(
                f"{node}-ready",
                http_addr=self.http_addr,
                token=token.result,
                ca_pem=ca.cert_pem,
                node_name=node,
                timeout_seconds=args.ready_timeout_seconds,
                # A new instance (new id) or a resize (stop and start in place): wait for it again.
                triggers=[server.id, args.instance_type],
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[attachment, association, *self.api_access, *args.network_path],
                ),
            )
            instances.append(server)
            self.gates.append(gate)
            self.servers.append(
                {
                    "instanceId": server.id,
                    "privateIp": interface.private_ip,
                    "nodeName": pulumi.Output.from_input(node),
                }
            )

        self.private_https_addrs = [s["privateIp"].apply(lambda ip: f"https://{ip}:{HTTPS_PORT}") for s in self.servers]
        self.ca_pem = ca.cert_pem
        self.management_token = pulumi.Output.secret(token.result)
        self.gossip_key = pulumi.Output.secret(gossip.base64)
        self.instance_ids = [server.id for server in instances]
        self.mesh_api_rule: aws.vpc.SecurityGroupIngressRule | None = None
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

    def admit_mesh_to_api(self, after: Sequence[pulumi.Resource]) -> aws.vpc.SecurityGroupIngressRule:
        """Open the HTTPS API (8501) to the mesh members, after `after`: the stack's readiness gate,
        which bootstraps ACLs. Mesh VMs log in (aws-iam) and read the gossip key over it before
        their agent runs; but `PUT /v1/acl/bootstrap` needs no token (hashicorp/consul
        agent/consul/acl_endpoint.go BootstrapTokens checks none), so until the gate has
        bootstrapped, whoever reaches the API may. The gate reaches it through the admin rules
        alone (api_access), so it never waits for this one. Their RPC port (8300) admits no
        bootstrap: internal_rpc verify_incoming wants a certificate of the stack's CA for every
        RPC but AutoEncrypt.Sign (agent/consul/server.go setupRPC), which needs node:write
        (agent/consul/connect_ca_endpoint.go Sign), which no token grants before the bootstrap."""
        if self.mesh_api_rule is None:
            self.mesh_api_rule = ec2.ingress_rule(
                self._rule_prefix,
                self._group_id,
                ec2.Ingress(
                    "mesh-https",
                    "tcp",
                    HTTPS_PORT,
                    "Consul HTTPS API from mesh members (login)",
                    self._mesh_security_group_id,
                ),
                self,
                depends_on=after,
            )
        return self.mesh_api_rule


def secrets_statements(parameter_arns: Sequence[str], key_arn: str) -> list[dict[str, object]]:
    """What a server's role may read at boot: its parameters, and their key only to decrypt them.

    SSM calls KMS with the encryption context {"PARAMETER_ARN": <the parameter's ARN>} for a
    SecureString (AWS KMS Developer Guide, "AWS KMS encryption for AWS Systems Manager Parameter
    Store SecureString parameters", encryption context), and kms:EncryptionContext:<key> conditions
    a policy on it (AWS KMS Developer Guide, "AWS KMS condition keys"). So kms:Decrypt holds for
    this server's own parameters only, whatever SSM permissions the role gains elsewhere.
    """
    arns = sorted(parameter_arns)
    return [
        ec2.allow(["ssm:GetParameter"], arns),
        ec2.allow(["kms:Decrypt"], [key_arn], {"StringEquals": {"kms:EncryptionContext:PARAMETER_ARN": arns}}),
    ]
