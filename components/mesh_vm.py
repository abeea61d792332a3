"""MeshVm: one service on one EC2 VM, inside the Consul mesh in transparent-proxy mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_consul as consul
import pulumi_random as random

from . import acl, ec2, groups, identity
from .spec import ENVOY_PUBLIC_PORT, PROJECT, SSH_PORT, ServiceSpec
from .userdata import Login, VmRecipe, encode_user_data, group_node_meta, render_cloud_config


@dataclass
class ConsulJoinArgs:
    """How a VM's agent joins the cluster. Inputs, so a consumer project can pass stack outputs."""

    datacenter: pulumi.Input[str]
    """Consul datacenter of the servers."""
    retry_join: pulumi.Input[Sequence[str]]
    """Server addresses, or a cloud auto-join string ("provider=aws tag_key=... tag_value=...")."""
    ca_pem: pulumi.Input[str] | None = None
    """The servers' CA certificate: when set (not None or empty), the agent uses TLS and auto_encrypt."""
    cloud_auto_join: bool | None = None
    """Grant the VM ec2:DescribeInstances, which cloud auto-join needs. None: decided from retry_join,
    which must then be a plain list (an Output's value is not known when resources are declared)."""


@dataclass
class LoginArgs:
    """How the VM logs in to Consul at boot with its instance role (components/identity.py)."""

    prefix: str
    """identity.login_prefix(stack) of the mesh stack: names of its auth methods and roles."""
    iam_path: str
    """identity.iam_path(stack): the VM's IAM role lives there, where the auth methods look."""
    server_id: pulumi.Input[str]
    """The auth methods' ServerIDHeaderValue."""
    http_addrs: pulumi.Input[Sequence[str]]
    """https://host:port of the servers' API, as the VM reaches them (private addresses)."""
    gossip_key_path: pulumi.Input[str] = ""
    """Consul KV entry of the gossip key; empty: the cluster has none."""


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
    login: LoginArgs
    """How the VM obtains its tokens and the gossip key at boot."""
    subnet_id: pulumi.Input[str]
    """Subnet the VM is placed in (a service of one VM, not in a group)."""
    vpc_id: pulumi.Input[str]
    """VPC of that subnet, for the VM's security group."""
    mesh_security_group_id: pulumi.Input[str]
    """The mesh membership group: the VM joins it, and admits peers that are in it."""
    admin_cidrs: Sequence[str] = ()
    """Networks SSH is open to. Empty: no SSH from the network at all."""
    ami_id: pulumi.Input[str] | None = None
    """Image to boot. None: the newest Ubuntu 24.04 LTS image from Canonical."""
    key_name: str | None = None
    """EC2 key pair for SSH, if any."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags for every taggable resource of the VM."""
    instance_after: Sequence[pulumi.Resource] = ()
    """What the instance is created (and replaced) after: the stack passes the last server's gate,
    so that an upgrade replaces the servers before the mesh VMs."""
    consul_provider: pulumi.ProviderResource | None = None
    """The consul provider of the cluster, given to the Consul resources (the roles the login binds)
    alone. None: they take the one the component's options carry (`providers`). A provider given to
    the whole component holds back its every child, the instance included, until the provider exists
    (the Python SDK registers a component only once each provider in its `providers` has an id:
    pulumi/runtime/resource.py prepare_resource, `_create_provider_ref`; and a child waits for its
    parent's URN). The stack's provider waits for the cluster's readiness gate, the VMs need not."""
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]] | None = None
    """Subnets a service of many instances (ServiceSpec.instances) spreads its group's VMs over:
    the stack's, one per zone. Required for such a service; unused for one VM."""
    metrics_port: int | None = None
    """Envoy's Prometheus port (config envoyMetrics), opened to mesh members and admin_cidrs; None:
    closed. Security group rules only: turning it on or off never replaces the instance."""


def metrics_ingress(port: int | None, members: pulumi.Input[str], admin_cidrs: Sequence[str]) -> list[ec2.Ingress]:
    """Envoy's Prometheus port from the mesh's members (a Prometheus in the mesh) and the admin
    networks; nothing when metrics are off."""
    if port is None:
        return []
    what = "Envoy Prometheus metrics"
    return [
        ec2.Ingress("metrics", "tcp", port, f"{what} from mesh members", members),
        *ec2.admin_ingress("metrics-admin", port, what, admin_cidrs),
    ]


def cloud_auto_join(cluster: ConsulJoinArgs) -> bool:
    """Whether the VM's agent joins by cloud auto-join (and so its role needs ec2:DescribeInstances)."""
    if cluster.cloud_auto_join is not None:
        return cluster.cloud_auto_join
    if isinstance(cluster.retry_join, (list, tuple)) and all(isinstance(t, str) for t in cluster.retry_join):
        return ec2.is_cloud_auto_join(cluster.retry_join)
    raise ValueError(
        "ConsulJoinArgs.cloud_auto_join must be set when retry_join is an Output: "
        "True when agents join by cloud auto-join (provider=aws ...), else False"
    )


def declare_login_roles(
    name: str,
    subject: str,
    service: str,
    login: LoginArgs,
    datacenter: pulumi.Input[str],
    service_token_rules: str,
    service_token_what: str,
    opts: pulumi.ResourceOptions,
) -> None:
    """The two Consul roles (each with a policy of the same name) that the auth methods' binding rules
    name for the VMs of `service` (identity.binding_rules): the agent token's (its nodes, service
    read, agent read, the gossip key) and the one the service token links beside its service
    identity (`service_token_rules`, described as `service_token_what`). Named `<name>-agent[-role]`
    and `<name>-agent-read[-role]`; what each grants is in components/acl.py, checked by
    tests/test_acl.py. `subject` says whose they are in their descriptions."""
    gossip_path = pulumi.Output.from_input(login.gossip_key_path)

    def bound_role(suffix: str, role: str, rules: pulumi.Input[str], what: str) -> None:
        policy = consul.AclPolicy(
            f"{name}-{suffix}",
            name=identity.policy_name_for(role),
            description=f"{PROJECT}: {what} of {subject}",
            rules=rules,
            datacenters=[datacenter],
            opts=opts,
        )
        consul.AclRole(
            f"{name}-{suffix}-role",
            name=role,
            description=f"{PROJECT}: bound at login: {what} of {subject}",
            policies=[policy.name],
            opts=opts,
        )

    bound_role(
        "agent",
        identity.agent_role_name(login.prefix, service),
        gossip_path.apply(lambda path: acl.agent_rules(service, path)),
        "agent tokens of the nodes",
    )
    bound_role(
        "agent-read", identity.agent_read_role_name(login.prefix, service), service_token_rules, service_token_what
    )


def boot_inputs(
    cluster: ConsulJoinArgs, login: LoginArgs, consul_version: pulumi.Input[str], envoy_version: pulumi.Input[str]
) -> pulumi.Output[dict[str, object]]:
    """Everything of the cluster and the login that a VM's user data is rendered from, resolved."""
    return pulumi.Output.all(
        datacenter=cluster.datacenter,
        consul_version=consul_version,
        envoy_version=envoy_version,
        retry_join=cluster.retry_join,
        ca=cluster.ca_pem,
        server_id=login.server_id,
        http_addrs=login.http_addrs,
        gossip_path=login.gossip_key_path,
    )


def resolved_login(login: LoginArgs, v: Mapping[str, object]) -> Login:
    """The recipe's Login from boot_inputs' resolved values."""
    return Login(
        prefix=login.prefix,
        server_id=str(v["server_id"]),
        http_addrs=tuple(v["http_addrs"]),  # type: ignore[arg-type]
        gossip_key_path=str(v["gossip_path"] or ""),
    )


class MeshVm(pulumi.ComponentResource):
    """The VMs of one mesh service: the Consul roles their login binds, their IAM role, security
    group, and either one instance or (config `instances`) an Auto Scaling group of them.

    Its user data holds no secret: at boot the VM logs in with its instance role (tagged with its
    service) and gets its tokens and the gossip key (scripts/consul-login.sh). So the user data is
    not a Pulumi secret, is the same for every instance of the service, and needs nothing from
    Consul: the VM boots in parallel with the servers. It holds nothing about other services or
    intentions, so the mesh can change around the VM without replacing it; a change to its own
    recipe does replace it (cloud-init runs once per instance): a lone VM by a new instance, a
    group's VMs by an instance refresh.
    """

    instance_id: pulumi.Output[str] | None
    """The lone VM's instance; None for a group (its VMs come and go)."""
    private_ip: pulumi.Output[str] | None
    public_ip: pulumi.Output[str] | None
    node_name: pulumi.Output[str] | None
    """<service>-<instance id>: the Consul node the lone VM registers at boot (a group's VMs name
    themselves the same way)."""
    group_name: pulumi.Output[str] | None
    """The Auto Scaling group's name; None for a lone VM."""
    node_meta: pulumi.Output[dict[str, str]] | None
    """The node metadata every VM of the group registers with (userdata.group_node_meta); None for a lone VM."""
    instances: int
    """How many VMs run the service."""
    virtual_hostname: pulumi.Output[str]
    port: pulumi.Output[int]
    cloud_config: pulumi.Output[str]
    """The rendered cloud-config text: what cloud-init reads once it has unzipped it."""

    def __init__(self, name: str, args: MeshVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:MeshVm", name, None, opts)
        # Only the Consul resources wait for the provider (see MeshVmArgs.consul_provider).
        with_consul = pulumi.ResourceOptions(parent=self, provider=args.consul_provider)
        svc = args.service
        tags = {**args.tags, "consul-tproxy-vms:service": svc.name}
        declare_login_roles(
            name,
            f"service {svc.name}",
            svc.name,
            args.login,
            args.cluster.datacenter,
            acl.agent_read_rules(svc.name),
            "agent read on the nodes (/v1/agent/self) for the service tokens",
            with_consul,
        )
        group_name = declare_group_name(name, svc.name, args.login.prefix, self) if svc.grouped else None
        recipe = recipe_of(name, args, group_name)
        self.cloud_config = recipe.apply(render_cloud_config)
        # What a group's VMs register as node metadata (their group, their recipe): the mesh gate
        # counts those nodes alone.
        self.node_meta = recipe.apply(group_node_meta) if group_name is not None else None
        profile = ec2.instance_profile(
            name,
            f"VM of mesh service {svc.name}",
            cloud_auto_join(args.cluster),
            # The tag names the service the login binds (identity.SERVICE_TAG); the role may read itself.
            {**tags, identity.SERVICE_TAG: svc.name},
            self,
            path=args.login.iam_path,
            login=True,
            statements=hook_statements(group_name, self) if group_name is not None else None,
            statements_name="lifecycle",
        )
        security_groups = [vm_security_group(name, args, tags, self).id, args.mesh_security_group_id]
        self.instances = svc.instances or 1
        self.group_name = group_name
        if group_name is None:
            self._lone_vm(name, args, profile, security_groups, tags)
        else:
            self._group(name, args, group_name, profile, security_groups, tags)
        self.virtual_hostname = pulumi.Output.from_input(svc.virtual_hostname)
        self.port = pulumi.Output.from_input(svc.port)
        self.register_outputs(self.summary())

    def _lone_vm(
        self,
        name: str,
        args: MeshVmArgs,
        profile: aws.iam.InstanceProfile,
        security_groups: list[pulumi.Input[str]],
        tags: dict[str, str],
    ) -> None:
        """One instance of its own, in the subnet the stack placed the service in."""
        instance = ec2.instance(
            name,
            ami_id=args.ami_id,
            instance_type=args.service.instance_type,
            subnet_id=args.subnet_id,
            security_group_ids=security_groups,
            profile=profile,
            key_name=args.key_name,
            user_data_base64=self.cloud_config.apply(encode_user_data),
            tags=tags,
            parent=self,
            depends_on=args.instance_after,
        )
        self.instance_id = instance.id
        self.private_ip = instance.private_ip
        self.public_ip = instance.public_ip
        self.node_name = instance.id.apply(lambda iid: f"{acl.node_prefix(args.service.name)}{iid}")

    def _group(
        self,
        name: str,
        args: MeshVmArgs,
        group_name: pulumi.Output[str],
        profile: aws.iam.InstanceProfile,
        security_groups: list[pulumi.Input[str]],
        tags: dict[str, str],
    ) -> None:
        """A launch template and an Auto Scaling group of `instances` VMs over every subnet of the stack."""
        if args.subnet_ids is None:
            raise ValueError(f"{name}: a service of many instances needs subnet_ids (MeshVmArgs.subnet_ids)")
        template = ec2.launch_template(
            name,
            ami_id=args.ami_id if args.ami_id is not None else ec2.pinned_image(f"{name}-image", self).image_id,
            instance_type=args.service.instance_type,
            profile=profile,
            key_name=args.key_name,
            user_data_base64=self.cloud_config.apply(encode_user_data),
            security_group_ids=security_groups,
            tags=tags,
            parent=self,
            depends_on=args.instance_after,
        )
        ec2.auto_scaling_group(
            name,
            group_name=group_name,
            template=template,
            size=self.instances,
            subnet_ids=args.subnet_ids,
            tags=tags,
            parent=self,
            depends_on=args.instance_after,
        )
        self.instance_id = self.private_ip = self.public_ip = self.node_name = None

    def summary(self) -> dict[str, pulumi.Input[object]]:
        """What the stack exports of this service (camelCase, the `services` output's contract): the
        lone VM's instance, addresses and node, or the group's name; always the count."""
        outputs: dict[str, pulumi.Input[object]] = {"instances": self.instances}
        if self.group_name is not None:
            outputs["groupName"] = self.group_name
        else:
            outputs.update(
                instanceId=self.instance_id,
                privateIp=self.private_ip,
                publicIp=self.public_ip,
                nodeName=self.node_name,
            )
        return {**outputs, "virtualHostname": self.virtual_hostname, "port": self.port}


def declare_group_name(name: str, service: str, prefix: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """The group's name (groups.group_name), with a random suffix chosen once: `<name>-group-id`."""
    suffix = random.RandomId(
        f"{name}-group-id", byte_length=groups.GROUP_SUFFIX_BYTES, opts=pulumi.ResourceOptions(parent=parent)
    )
    return suffix.hex.apply(lambda hex_: groups.group_name(prefix, service, hex_))


def hook_statements(group_name: pulumi.Output[str], parent: pulumi.Resource) -> pulumi.Output[list[dict[str, object]]]:
    """The VMs' right to complete their own group's lifecycle hooks, and no other group's."""
    invoke = pulumi.InvokeOutputOptions(parent=parent)
    return pulumi.Output.all(
        aws.get_partition_output(opts=invoke).partition,
        aws.get_region_output(opts=invoke).region,
        aws.get_caller_identity_output(opts=invoke).account_id,
        group_name,
    ).apply(lambda v: [ec2.allow(groups.HOOK_ACTIONS, [groups.group_arn_pattern(*v)])])


def recipe_of(name: str, args: MeshVmArgs, group_name: pulumi.Output[str] | None) -> pulumi.Output[VmRecipe]:
    """What the service's VMs are made from, once every boot input is known."""
    svc = args.service
    auto_join = cloud_auto_join(args.cluster)

    def recipe(inputs: list[object]) -> VmRecipe:
        v, group = inputs
        recipe = VmRecipe(
            service=svc,
            datacenter=str(v["datacenter"]),  # type: ignore[index]
            consul_version=str(v["consul_version"]),  # type: ignore[index]
            envoy_version=str(v["envoy_version"]),  # type: ignore[index]
            retry_join=tuple(v["retry_join"]),  # type: ignore[index]
            login=resolved_login(args.login, v),  # type: ignore[arg-type]
            ca_pem=str(v["ca"]) if v["ca"] else None,  # type: ignore[index]
            group_name=str(group) if group is not None else None,
        )
        if ec2.is_cloud_auto_join(recipe.retry_join) and not auto_join:
            raise ValueError(f"{name}: retry_join uses cloud auto-join, but cloud_auto_join is False")
        return recipe

    inputs = boot_inputs(args.cluster, args.login, args.consul_version, args.envoy_version)
    return pulumi.Output.all(inputs, group_name).apply(recipe)


def vm_security_group(
    name: str, args: MeshVmArgs, tags: dict[str, str], parent: pulumi.Resource
) -> aws.ec2.SecurityGroup:
    """The service's VMs' own group. The application's own port gets no rule: it listens on loopback
    and is reached only via Envoy's public listener."""
    return ec2.security_group(
        name,
        args.vpc_id,
        f"Mesh VM of {args.service.name}: Envoy and gossip from mesh members, SSH from admins",
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
            *metrics_ingress(args.metrics_port, args.mesh_security_group_id, args.admin_cidrs),
        ],
        tags,
        parent,
    )
