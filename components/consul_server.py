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
        tags = {**args.tags, JOIN_TAG_KEY: args.join_tag_value}
        self.retry_join = [auto_join(args.join_tag_value)]
        secrets = declare_cluster_secrets(name, args, self)
        api_ip = declare_api_address(name, tags, self)
        self.http_addr = api_ip.public_ip.apply(lambda ip: f"https://{ip}:{HTTPS_PORT}")
        store = declare_secret_store(name, args, tags, self)
        gossip_parameter = secure_parameter(
            store,
            f"{name}-gossip-key-parameter",
            "gossip-key",
            secrets.gossip.base64,
            "the Consul gossip key of the servers",
        )
        group, https_rules = declare_security_group(name, args, tags, self)
        self._rule_prefix = name
        self._group_id = group.id
        self._mesh_security_group_id = args.mesh_security_group_id
        shared = SharedByServers(
            name=name,
            args=args,
            tags=tags,
            secrets=secrets,
            store=store,
            gossip_parameter=gossip_parameter,
            api_ip=api_ip,
            http_addr=self.http_addr,
            group_id=group.id,
            https_rules=https_rules,
            retry_join=tuple(self.retry_join),
        )

        self.servers = []
        self.gates = []
        self.api_access = []
        self.instance_ids = []
        for index in range(args.count):
            server = declare_server(shared, index, self.gates[-1:], self.api_access, self)
            self.api_access = server.api_access
            self.instance_ids.append(server.instance.id)
            self.gates.append(server.gate)
            self.servers.append(
                {
                    "instanceId": server.instance.id,
                    "privateIp": server.interface.private_ip,
                    "nodeName": pulumi.Output.from_input(server.node),
                }
            )

        self.private_https_addrs = [s["privateIp"].apply(lambda ip: f"https://{ip}:{HTTPS_PORT}") for s in self.servers]
        self.ca_pem = secrets.ca.cert_pem
        self.management_token = pulumi.Output.secret(secrets.token.result)
        self.gossip_key = pulumi.Output.secret(secrets.gossip.base64)
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


# --- The steps of ConsulServer.__init__, in order ------------------------------------------------


@dataclass(frozen=True)
class ClusterSecrets:
    """What the cluster generates once, in the stack: kept secret in its state."""

    token: random.RandomUuid
    """The initial management token."""
    gossip: random.RandomBytes
    """The gossip encryption key (32 bytes)."""
    ca_key: tls.PrivateKey
    ca: tls.SelfSignedCert
    """The CA of the servers' certificates: its key signs them in Pulumi and never reaches a VM."""


def declare_cluster_secrets(name: str, args: ConsulServerArgs, parent: pulumi.Resource) -> ClusterSecrets:
    """The initial management token (random UUID), the gossip key (32 random bytes), and the CA
    (an ECDSA P-256 key and its self-signed certificate)."""
    child = pulumi.ResourceOptions(parent=parent)
    token = random.RandomUuid(
        f"{name}-management-token", opts=pulumi.ResourceOptions(parent=parent, additional_secret_outputs=["result"])
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
    return ClusterSecrets(token=token, gossip=gossip, ca_key=ca_key, ca=ca)


def declare_api_address(name: str, tags: Mapping[str, str], parent: pulumi.Resource) -> aws.ec2.Eip:
    """The fixed public address of the HTTPS API and UI: an Elastic IP on server 0's interface, in
    every server certificate. Whatever happens to the servers, Pulumi's consul provider and the
    deployer verify and reach the API at it."""
    return aws.ec2.Eip(
        f"{name}-api-ip",
        domain="vpc",
        tags={**tags, "Name": f"{name}-api-ip"},
        opts=pulumi.ResourceOptions(parent=parent),
    )


@dataclass(frozen=True)
class SecretStore:
    """Where the servers' secrets are kept: SecureString parameters under `prefix`, encrypted with `key`."""

    key: aws.kms.Key
    prefix: str
    tags: Mapping[str, str]
    parent: pulumi.Resource


def declare_secret_store(
    name: str, args: ConsulServerArgs, tags: Mapping[str, str], parent: pulumi.Resource
) -> SecretStore:
    """Secrets go to SSM Parameter Store, never into user data: SecureStrings encrypted with a key
    of the stack's own. Not the account's aws/ssm key: its key policy lets every principal of the
    account decrypt through SSM, and AWS's ReadOnlyAccess policy includes ssm:GetParameter. This
    key's default policy delegates to IAM (AWS KMS developer guide, "Default key policy"), so only
    principals whose IAM policies allow kms:Decrypt on it read the values: the servers."""
    key = aws.kms.Key(
        f"{name}-secrets-key",
        description=f"{PROJECT}: encrypts the Consul servers' secrets in SSM Parameter Store",
        enable_key_rotation=True,
        deletion_window_in_days=7,
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return SecretStore(key=key, prefix=f"/{PROJECT}/{args.login_prefix}", tags=tags, parent=parent)


def secure_parameter(
    store: SecretStore, resource: str, path: str, value: pulumi.Input[str], what: str
) -> aws.ssm.Parameter:
    """The SecureString `<prefix>/<path>` holding `value`, read by a server at boot."""
    return aws.ssm.Parameter(
        resource,
        name=f"{store.prefix}/{path}",
        type="SecureString",
        key_id=store.key.arn,
        value=value,
        description=f"{PROJECT}: {what}, read at boot",
        tags=store.tags,
        opts=pulumi.ResourceOptions(parent=store.parent),
    )


def declare_security_group(
    name: str, args: ConsulServerArgs, tags: Mapping[str, str], parent: pulumi.Resource
) -> tuple[aws.ec2.SecurityGroup, list[aws.vpc.SecurityGroupIngressRule]]:
    """The servers' group: RPC and gossip from the mesh members, WAN gossip among the servers, the
    HTTPS API and SSH from the admins. Returns the group and its admin HTTPS rules (in name order).
    The mesh members' 8501 rule comes later, once ACLs are bootstrapped (admit_mesh_to_api)."""
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
            *ec2.admin_ingress("ssh", SSH_PORT, "SSH", args.admin_cidrs),
        ],
        tags,
        parent,
    )
    return group, [rule for key, rule in sorted(rules.items()) if key.startswith("https-")]


@dataclass(frozen=True)
class SharedByServers:
    """What every server's resources refer to: declared once for the cluster."""

    name: str
    """The component's name: server i is the node <name>-<i>."""
    args: ConsulServerArgs
    tags: Mapping[str, str]
    secrets: ClusterSecrets
    store: SecretStore
    gossip_parameter: aws.ssm.Parameter
    api_ip: aws.ec2.Eip
    """The API's public address: server 0's."""
    http_addr: pulumi.Output[str]
    group_id: pulumi.Output[str]
    https_rules: Sequence[aws.vpc.SecurityGroupIngressRule]
    """The admins' HTTPS rules: with server 0's address association, what carries the API."""
    retry_join: tuple[str, ...]


@dataclass(frozen=True)
class Server:
    """One server's resources that the cluster and the next server refer to."""

    node: str
    instance: aws.ec2.Instance
    interface: aws.ec2.NetworkInterface
    gate: ServerReady
    api_access: list[pulumi.Resource]
    """What carries the deployer's requests to the API (set by server 0: its address association)."""


def declare_server(
    shared: SharedByServers,
    index: int,
    previous_gate: Sequence[pulumi.Resource],
    api_access: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
) -> Server:
    """Server `index` of the cluster: its certificate, identity, interface and address, data volume,
    instance and gate. `previous_gate`: the gate of the server before it (none for server 0), which
    its instance waits for; `api_access`: server 0's (empty when this is server 0)."""
    args = shared.args
    node = f"{shared.name}-{index}"
    subnet = args.subnet_ids[index % len(args.subnet_ids)]
    zone = (
        args.zones[index % len(args.zones)]
        if args.zones
        else aws.ec2.get_subnet_output(id=subnet, opts=pulumi.InvokeOutputOptions(parent=parent)).availability_zone
    )
    key, cert = declare_server_certificate(shared, node, parent)
    tls_parameter = secure_parameter(
        shared.store,
        f"{node}-tls-key-parameter",
        f"{node}/tls-key",
        key.private_key_pem,
        f"the TLS key of server {node}",
    )
    profile = declare_server_profile(shared, node, tls_parameter, parent)
    interface, association = declare_server_address(shared, node, index, subnet, parent)
    if index == 0:
        api_access = [association, *shared.https_rules]
    data = declare_data_volume(shared, node, zone, parent)
    cloud_config = server_cloud_config(shared, node, cert, tls_parameter, data)
    server = declare_server_instance(
        shared, node, interface, profile, cloud_config, previous_gate, association, tls_parameter, parent
    )
    attachment = aws.ec2.VolumeAttachment(
        f"{node}-data-attachment",
        device_name=DATA_DEVICE,
        volume_id=data.id,
        instance_id=server.id,
        # Stop Consul cleanly (the instance) before its data volume is taken away.
        stop_instance_before_detaching=True,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    gate = declare_server_gate(shared, node, server, [attachment, association, *api_access], parent)
    return Server(node=node, instance=server, interface=interface, gate=gate, api_access=list(api_access))


def declare_server_certificate(
    shared: SharedByServers, node: str, parent: pulumi.Resource
) -> tuple[tls.PrivateKey, tls.LocallySignedCert]:
    """The server's key and its certificate, signed by the cluster's CA in Pulumi. Named
    server.<dc>.consul: what agents check (verify_server_hostname). With the public address and
    loopback: what Pulumi, browsers and the CLI on the server dial."""
    args = shared.args
    child = pulumi.ResourceOptions(parent=parent)
    key = tls.PrivateKey(f"{node}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
    request = tls.CertRequest(
        f"{node}-csr",
        private_key_pem=key.private_key_pem,
        subject=tls.CertRequestSubjectArgs(common_name=f"server.{args.datacenter}.consul"),
        dns_names=[f"server.{args.datacenter}.consul", "localhost"],
        ip_addresses=["127.0.0.1", shared.api_ip.public_ip],
        opts=child,
    )
    cert = tls.LocallySignedCert(
        f"{node}-cert",
        cert_request_pem=request.cert_request_pem,
        ca_private_key_pem=shared.secrets.ca_key.private_key_pem,
        ca_cert_pem=shared.secrets.ca.cert_pem,
        validity_period_hours=SERVER_CERT_VALIDITY_HOURS,
        early_renewal_hours=SERVER_CERT_EARLY_RENEWAL_HOURS,
        allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
        opts=child,
    )
    return key, cert


def declare_server_profile(
    shared: SharedByServers, node: str, tls_parameter: aws.ssm.Parameter, parent: pulumi.Resource
) -> aws.iam.InstanceProfile:
    """Each server its own role: it may read the gossip key and its own TLS key, nothing more; its
    node tag names the node identity its aws-iam login gets (identity.NODE_TAG)."""
    args = shared.args
    return ec2.instance_profile(
        node,
        f"Consul server {node} of datacenter {args.datacenter}",
        True,
        {**shared.tags, identity.NODE_TAG: node},
        parent,
        path=args.iam_path,
        login=True,
        statements=pulumi.Output.all(shared.gossip_parameter.arn, tls_parameter.arn, shared.store.key.arn).apply(
            lambda arns: secrets_statements(arns[:2], arns[2])
        ),
    )


def declare_server_address(
    shared: SharedByServers, node: str, index: int, subnet: pulumi.Input[str], parent: pulumi.Resource
) -> tuple[aws.ec2.NetworkInterface, aws.ec2.EipAssociation]:
    """The server's address and security groups live on an interface of its own, which the instance
    only borrows: its Raft peers find it at the same address after a replacement. Server 0's public
    address is the API's; the others need one too: a server installs Consul from HashiCorp's apt
    repository at boot, and the subnets have no NAT. An Elastic IP can only be associated in a VPC
    with an internet gateway: the association comes after the network's path."""
    args = shared.args
    child = pulumi.ResourceOptions(parent=parent)
    interface = aws.ec2.NetworkInterface(
        f"{node}-eni",
        subnet_id=subnet,
        security_groups=[shared.group_id, args.mesh_security_group_id],
        description=f"{PROJECT}: Consul server {node}, kept across instance replacements",
        tags={**shared.tags, "Name": f"{node}-eni"},
        opts=child,
    )
    public_ip = (
        shared.api_ip
        if index == 0
        else aws.ec2.Eip(
            f"{node}-public-ip", domain="vpc", tags={**shared.tags, "Name": f"{node}-public-ip"}, opts=child
        )
    )
    association = aws.ec2.EipAssociation(
        f"{shared.name}-api-ip-association" if index == 0 else f"{node}-public-ip-association",
        allocation_id=public_ip.allocation_id,
        network_interface_id=interface.id,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(args.network_path)),
    )
    return interface, association


def declare_data_volume(
    shared: SharedByServers, node: str, zone: pulumi.Input[str], parent: pulumi.Resource
) -> aws.ebs.Volume:
    """The server's Consul state (Raft log, tokens, config entries): never deleted with the stack
    (retain_on_delete), and protected on request (protect_data)."""
    args = shared.args
    return aws.ebs.Volume(
        f"{node}-data",
        availability_zone=zone,
        size=args.data_volume_gb,
        type="gp3",
        encrypted=True,
        tags={**shared.tags, "Name": f"{node}-data", "consul-tproxy-vms:node": node},
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True, protect=args.protect_data),
    )


def server_cloud_config(
    shared: SharedByServers,
    node: str,
    cert: tls.LocallySignedCert,
    tls_parameter: aws.ssm.Parameter,
    data: aws.ebs.Volume,
) -> pulumi.Output[str]:
    """The server's cloud-config. Nothing secret goes in: the parameters' names, not their values.
    The retained volume's id is known before the instance exists: the boot finds the volume by it
    (its NVMe serial), never by elimination."""
    args = shared.args

    def render(v: dict[str, str]) -> str:
        return render_server_cloud_config(
            ServerRecipe(
                node_name=node,
                datacenter=args.datacenter,
                consul_version=args.consul_version,
                bootstrap_expect=args.count,
                retry_join=shared.retry_join,
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

    return pulumi.Output.all(
        ca=shared.secrets.ca.cert_pem,
        cert=cert.cert_pem,
        region=args.region,
        gossip_parameter=shared.gossip_parameter.name,
        tls_parameter=tls_parameter.name,
        data_volume=data.id,
    ).apply(render)


def declare_server_instance(
    shared: SharedByServers,
    node: str,
    interface: aws.ec2.NetworkInterface,
    profile: aws.iam.InstanceProfile,
    cloud_config: pulumi.Output[str],
    previous_gate: Sequence[pulumi.Resource],
    association: aws.ec2.EipAssociation,
    tls_parameter: aws.ssm.Parameter,
    parent: pulumi.Resource,
) -> aws.ec2.Instance:
    """The server's instance, on its own interface. One at a time: never touch this server before
    the previous one is back (`previous_gate`). And after what its first boot needs: the way to
    the internet (apt) and its public address (`association`), and what it reads (its parameters,
    their key, its role's policies: the profile waits for those, ec2.instance_profile)."""
    args = shared.args
    return ec2.instance(
        node,
        ami_id=args.ami_id,
        instance_type=args.instance_type,
        network_interface_id=interface.id,
        profile=profile,
        key_name=args.key_name,
        user_data_base64=cloud_config.apply(encode_user_data),
        tags={**shared.tags, "consul-tproxy-vms:node": node},
        parent=parent,
        depends_on=[
            *previous_gate,
            *args.network_path,
            association,
            shared.gossip_parameter,
            tls_parameter,
            shared.store.key,
            profile,
        ],
    )


def declare_server_gate(
    shared: SharedByServers,
    node: str,
    server: aws.ec2.Instance,
    after: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
) -> ServerReady:
    """The server's link in the one-at-a-time chain (readiness.ServerReady): a new instance (new id)
    or a resize (stop and start in place) makes it wait for the server again. After `after` (its
    data volume's attachment and the way to the API) and the network's path."""
    args = shared.args
    return ServerReady(
        f"{node}-ready",
        http_addr=shared.http_addr,
        token=shared.secrets.token.result,
        ca_pem=shared.secrets.ca.cert_pem,
        node_name=node,
        timeout_seconds=args.ready_timeout_seconds,
        triggers=[server.id, args.instance_type],
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*after, *args.network_path]),
    )
