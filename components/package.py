"""The public components of the `consul-tproxy-vms` Pulumi component package (provider/).

TypeScript, Go, C#, Java and YAML programs consume them after
`pulumi package add github.com/<org>/consul-tproxy-vms/provider@<tag>`; Python programs may also
construct them directly (`from consul_tproxy_vms.package import MeshService`).

The schema is inferred by Pulumi's analyzer (pulumi.provider.experimental) from the annotations
below, so this module must NOT use `from __future__ import annotations` (the analyzer reads the
annotations as objects, not strings), and every field keeps its docstring right under it: the
analyzer copies those into the schema, hence into every language's SDK.

Plain and Input fields: a field annotated with a bare type (str, int, bool, list[str]) is marked
`plain` in the schema, so the generated SDKs accept only a known value there, never an Output. The
service's own settings are plain: they are validated with spec.load_service (the same rules as the
mesh's own services) before anything is declared, and they name resources, which needs known
values. The login prefix and IAM path are plain for the same reason (they name Consul and IAM
roles). Should a plain field still arrive as an Output (a secret value, or a value with
dependencies, is wrapped in one by the provider host), the component refuses it, naming the field.

The Consul provider: the components declare Consul ACL roles, policies and config entries. The
caller passes its Consul provider through the resource options (`providers: [consulProvider]` in
TypeScript, `opts=pulumi.ResourceOptions(providers=[provider])` in Python); the children inherit
it. The AWS provider is passed the same way, or the default one (aws:region) is used.
"""

import inspect
import re
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

import pulumi

from . import checks, identity, spec
from .intentions import ServiceIntentions, ServiceIntentionsArgs
from .mesh_defaults import service_defaults
from .mesh_vm import ConsulJoinArgs, LoginArgs, MeshVm, MeshVmArgs
from .spec import PROJECT, IntentionSpec, MeshSpecError

PACKAGE = PROJECT
"""The package name: resource tokens are consul-tproxy-vms:index:<Component>."""


class ConsulCluster(TypedDict):
    """How the VM's Consul agent joins the cluster: the mesh stack's consulDatacenter,
    consulRetryJoin and consulCaPem outputs."""

    datacenter: pulumi.Input[str]
    """Consul datacenter of the servers (the mesh stack's consulDatacenter output)."""
    retry_join: pulumi.Input[list[str]]
    (
        'Server addresses, or a cloud auto-join string such as "provider=aws tag_key=... tag_value=..." (the '
        "mesh stack's consulRetryJoin output)."
    )
    ca_pem: NotRequired[pulumi.Input[str]]
    """The servers' CA certificate (the mesh stack's consulCaPem output); set, the agent uses TLS."""
    cloud_auto_join: NotRequired[bool]
    (
        "Whether the agent joins by cloud auto-join, which needs ec2:DescribeInstances. Unset: decided from "
        "retryJoin, which must then be a known list; required when retryJoin is an Output (a stack reference "
        "output): true for a mesh stack that created its own servers."
    )


class ConsulLogin(TypedDict):
    """How the VM logs in to Consul at boot with its instance role: the fields of the mesh stack's
    consulLogin output."""

    prefix: str
    (
        "consulLogin.prefix: names the mesh stack's auth methods and the roles this VM's login binds. Plain "
        "(a known string): it names Consul roles. It is consul-tproxy-vms-<mesh stack name>."
    )
    iam_path: str
    (
        "consulLogin.iamPath: the IAM path of the VM's role, where the auth methods look. Plain (a known "
        "string): it is part of the IAM role. It is /consul-tproxy-vms/<mesh stack name>/."
    )
    server_id: pulumi.Input[str]
    """consulLogin.serverId: the auth methods' ServerIDHeaderValue."""
    http_addrs: pulumi.Input[list[str]]
    """consulLogin.httpAddrs: https://host:port of the servers' API, as the VM reaches them."""
    gossip_key_path: NotRequired[pulumi.Input[str]]
    """consulLogin.gossipKeyPath: the Consul KV entry of the gossip key. Unset or empty: no gossip key."""


class MeshServiceArgs(TypedDict):
    """The inputs of MeshService."""

    service_name: str
    """The service's name, a DNS label: the VM answers as <serviceName>.virtual.consul. Plain."""
    port: int
    """The TCP port the application listens on (on loopback; callers reach it through Envoy). Plain."""
    protocol: NotRequired[str]
    """http (default), http2, grpc or tcp: written as the service's service-defaults. Plain."""
    command: NotRequired[str]
    """The application's command line, starting with an absolute path. Unset: the bundled demo app. Plain."""
    packages: NotRequired[list[str]]
    """Debian packages the application needs (name or name=version). Plain."""
    health_check_path: NotRequired[str]
    (
        "HTTP path of the application's health check, such as /health. Unset: /health for the demo app, no "
        "HTTP check for a command. Plain."
    )
    upstreams: NotRequired[list[str]]
    """Services this one calls (documentation and the diagram; transparent proxy needs no list). Plain."""
    instance_type: NotRequired[str]
    """EC2 instance type of the VM (default t3.small). Plain."""
    instances: NotRequired[int]
    (
        "How many VMs run the service, as an EC2 Auto Scaling group over subnet_ids (1-100). Unset: one VM "
        "of its own in subnet_id. Plain."
    )
    cluster: ConsulCluster
    """The Consul cluster the agent joins."""
    login: ConsulLogin
    """How the VM obtains its tokens and the gossip key at boot."""
    subnet_id: pulumi.Input[str]
    """Subnet the VM is placed in (one of the mesh stack's subnetIds)."""
    subnet_ids: NotRequired[pulumi.Input[list[str]]]
    """Subnets a service of `instances` VMs spreads over (the mesh stack's subnetIds); required with `instances`."""
    vpc_id: pulumi.Input[str]
    """VPC of that subnet, for the VM's security group (the mesh stack's vpcId)."""
    mesh_security_group_id: pulumi.Input[str]
    (
        "The mesh membership security group (the mesh stack's meshSecurityGroupId): the VM joins it and "
        "admits Envoy and gossip traffic from its members."
    )
    admin_cidrs: NotRequired[list[str]]
    """IPv4 networks SSH is open to. Unset or empty: no SSH from the network. Plain."""
    ami_id: NotRequired[pulumi.Input[str]]
    """Image to boot. Unset: the newest Ubuntu 24.04 LTS image from Canonical."""
    key_name: NotRequired[str]
    """EC2 key pair for SSH, if any. Plain."""
    consul_version: pulumi.Input[str]
    """Consul version to install, such as 1.22.1 (the mesh stack's consulVersion output)."""
    envoy_version: pulumi.Input[str]
    """Envoy version to install, supported by consulVersion (the mesh stack's envoyVersion output)."""
    tags: NotRequired[dict[str, str]]
    """Extra tags for every taggable AWS resource of the VM. Plain."""


SERVICE_FIELDS = {
    "port": "port",
    "protocol": "protocol",
    "command": "command",
    "packages": "packages",
    "health_check_path": "healthCheckPath",
    "upstreams": "upstreams",
    "instance_type": "instanceType",
    "instances": "instances",
}
"""MeshServiceArgs fields that spec.load_service validates -> their key there (and in the schema)."""


class MeshServiceError(MeshSpecError):
    """Bad MeshService or MeshIntentions inputs; the message names every bad input and its value."""

    def __init__(self, component: str, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        count = f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")
        ValueError.__init__(self, f"{component}: invalid inputs ({count}):\n{listed}")


def _is_output(value: Any) -> bool:
    return isinstance(value, pulumi.Output)


def _plain(value: Any, key: str, problems: list[str]) -> Any:
    """The value when it is known; None (and a problem naming `key`) when it is an Output."""
    if _is_output(value) or (isinstance(value, list | tuple) and any(_is_output(v) for v in value)):
        problems.append(
            f"{key}: must be a plain value, not an Output: it is validated and names resources before "
            "anything is declared (pass a known value: a literal, config, or a stack output read with "
            "StackReference.getOutputDetails)"
        )
        return None
    return value


def _service(args: Mapping[str, Any], problems: list[str]) -> spec.ServiceSpec | None:
    """The service's settings validated by spec.load_service, its keys renamed to the inputs'."""
    name = _plain(args.get("service_name"), "serviceName", problems)
    raw: dict[str, Any] = {}
    for field, key in SERVICE_FIELDS.items():
        if field in args and args[field] is not None:
            raw[key] = _plain(args[field], key, problems)
    if problems:
        return None
    if not isinstance(name, str):
        problems.append(f"serviceName: {name!r} must be a string")
        return None
    try:
        return spec.load_service(name, raw)
    except MeshSpecError as err:
        prefix = f"services.{name}"
        for problem in err.problems:
            if problem.startswith(prefix + "."):
                problems.append(problem[len(prefix) + 1 :])
            elif problem.startswith(prefix + ":"):
                problems.append("serviceName" + problem[len(prefix) :])
            else:
                problems.append(problem)
        return None


def _match(value: Any, key: str, pattern: Any, what: str, problems: list[str]) -> None:
    """Check a plain string against `pattern`; Outputs are checked by AWS when they resolve."""
    if value is None or _is_output(value):
        return
    if not isinstance(value, str) or not pattern.fullmatch(value):
        problems.append(f"{key}: {value!r} is not {what}")


def _check_inputs(args: Mapping[str, Any], problems: list[str]) -> tuple[tuple[str, ...], bool | None]:
    """Everything but the service fields: admin networks, IDs, versions, cluster and login."""
    admin = _plain(args.get("admin_cidrs") or [], "adminCidrs", problems)
    collected = checks.Problems()
    admin_cidrs = checks.cidr_list(admin or [], "adminCidrs", collected) if admin is not None else ()
    problems += collected.items

    key_name = _plain(args.get("key_name"), "keyName", problems)
    _match(key_name, "keyName", spec.SSH_KEY_NAME, "an EC2 key pair name", problems)
    _match(args.get("ami_id"), "amiId", spec.AMI_ID, "an AMI ID (ami-...)", problems)
    _match(args.get("subnet_id"), "subnetId", spec.SUBNET_ID, "a subnet ID (subnet-...)", problems)
    subnet_ids = args.get("subnet_ids")
    if args.get("instances") is not None and subnet_ids is None:
        problems.append("subnetIds: is missing: a service of many instances spreads over the mesh stack's subnetIds")
    if isinstance(subnet_ids, (list, tuple)):
        for i, subnet in enumerate(subnet_ids):
            _match(subnet, f"subnetIds[{i}]", spec.SUBNET_ID, "a subnet ID (subnet-...)", problems)
    _match(args.get("vpc_id"), "vpcId", spec.VPC_ID, "a VPC ID (vpc-...)", problems)
    for key, field in (("consulVersion", "consul_version"), ("envoyVersion", "envoy_version")):
        _match(args.get(field), key, spec.VERSION, "a version such as 1.22.1", problems)
    consul, envoy = args.get("consul_version"), args.get("envoy_version")
    if isinstance(consul, str) and isinstance(envoy, str) and spec.VERSION.fullmatch(consul):
        collected = checks.Problems()
        spec.check_versions(consul, envoy, collected)
        problems += collected.items
    tags = _plain(args.get("tags") or {}, "tags", problems)
    if tags is not None and (
        not isinstance(tags, Mapping) or not all(isinstance(v, str) and not _is_output(v) for v in tags.values())
    ):
        problems.append("tags: must be a map of plain strings")

    auto_join = _check_cluster(args.get("cluster"), problems)
    _check_login(args.get("login"), problems)
    return tuple(admin_cidrs), auto_join


def _whole(value: Any, key: str, fields: str, problems: list[str]) -> Mapping[str, Any] | None:
    """An object input given field by field; None (and a problem) when missing or one whole Output."""
    if _is_output(value):
        problems.append(
            f"{key}: is one Output: give its fields ({fields}) each, as a plain value or an Output of its own "
            "(e.g. each field of the mesh stack's output, read with StackReference.getOutput(...).apply)"
        )
        return None
    if not isinstance(value, Mapping):
        problems.append(f"{key}: is missing ({fields})")
        return None
    return value


def _check_cluster(cluster: Any, problems: list[str]) -> bool | None:
    """cluster's known values checked as the mesh checks its own keys; returns cloudAutoJoin."""
    cluster = _whole(cluster, "cluster", "datacenter, retryJoin, caPem, cloudAutoJoin", problems)
    if cluster is None:
        return None
    auto_join = _plain(cluster.get("cloud_auto_join"), "cluster.cloudAutoJoin", problems)
    if auto_join is not None and not isinstance(auto_join, bool):
        problems.append(f"cluster.cloudAutoJoin: {auto_join!r} must be true or false")
    retry_join = cluster.get("retry_join")
    if auto_join is None and _is_output(retry_join):
        problems.append(
            "cluster.cloudAutoJoin: must be set when cluster.retryJoin is an Output (its value is not known "
            "when the VM's IAM role is declared): true when agents join by cloud auto-join (provider=aws ...), "
            "as with a mesh stack that created its own servers"
        )
    elif isinstance(retry_join, list | tuple) and not retry_join:
        problems.append("cluster.retryJoin: [] is empty: the agent would join no server")
    elif isinstance(retry_join, list | tuple) and not any(_is_output(t) for t in retry_join):
        _collect(spec.retry_join_targets, list(retry_join), "cluster.retryJoin", problems)
    _match(cluster.get("datacenter"), "cluster.datacenter", spec.DATACENTER, "a Consul datacenter name", problems)
    ca_pem = cluster.get("ca_pem")
    if ca_pem is not None and not _is_output(ca_pem):
        why = spec.ca_pem_problem(ca_pem)
        if why:
            problems.append(f"cluster.caPem: {why}")  # never echoed: it might be a private key
    return auto_join


# What the mesh stack's consulLogin holds for a stack named S (identity.login_prefix, iam_path):
# prefix consul-tproxy-vms-<label>, iamPath /consul-tproxy-vms/<label>/, where the label is S with
# '.' made '-' (and a short hash added): ASCII letters, digits, '-' and '_', up to 107 characters.
LOGIN_LABEL = re.compile(r"[A-Za-z0-9_-]{1,107}")
IAM_PATH = re.compile(f"/{PROJECT}/{LOGIN_LABEL.pattern}/")
# consulLogin.serverId (the prefix) and gossipKeyPath (a Consul KV path): one line of safe characters,
# no path segment starting with '.'.
SERVER_ID = re.compile(r"[A-Za-z0-9_.-]{1,256}")
KV_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")


def _check_login(login: Any, problems: list[str]) -> None:
    """login's known values checked against what a mesh stack's consulLogin output holds."""
    fields = "prefix, iamPath, serverId, httpAddrs, gossipKeyPath: the mesh stack's consulLogin output"
    login = _whole(login, "login", fields, problems)
    if login is None:
        return
    prefix = _plain(login.get("prefix"), "login.prefix", problems)
    path = _plain(login.get("iam_path"), "login.iamPath", problems)
    label = prefix.removeprefix(f"{PROJECT}-") if isinstance(prefix, str) else None
    if prefix is not None and not (
        isinstance(prefix, str) and prefix.startswith(f"{PROJECT}-") and LOGIN_LABEL.fullmatch(label or "")
    ):
        problems.append(f"login.prefix: {prefix!r} is not a mesh stack's consulLogin.prefix ({PROJECT}-<stack name>)")
        label = None
    # Against the prefix's label when the prefix is good; else against the form alone (one problem per mistake).
    expected = identity.iam_path(label) if label is not None else None
    if path is not None and not (
        isinstance(path, str) and (path == expected if expected else bool(IAM_PATH.fullmatch(path)))
    ):
        shown = f"{expected!r}, as for login.prefix" if expected else f"/{PROJECT}/<stack name>/"
        problems.append(f"login.iamPath: {path!r} is not the mesh stack's consulLogin.iamPath ({shown})")
    _match(login.get("server_id"), "login.serverId", SERVER_ID, "the mesh stack's consulLogin.serverId", problems)
    gossip_key_path = login.get("gossip_key_path")
    if gossip_key_path:
        _match(gossip_key_path, "login.gossipKeyPath", KV_PATH, "a Consul KV path", problems)
    addrs = login.get("http_addrs")
    if isinstance(addrs, list | tuple) and not any(_is_output(a) for a in addrs):
        if not addrs:
            problems.append("login.httpAddrs: [] is empty: the VM would have no server to log in to")
        for i, addr in enumerate(addrs):
            _collect(spec.https_addr, addr, f"login.httpAddrs[{i}]", problems)
    elif addrs is not None and not _is_output(addrs) and not isinstance(addrs, list | tuple):
        problems.append(f"login.httpAddrs: {addrs!r} must be a list of https:// addresses")


def _collect(check: Any, value: Any, key: str, problems: list[str]) -> Any:
    """Run one of spec's checkers (which collect into checks.Problems) into `problems`."""
    collected = checks.Problems()
    result = check(value, key, collected)
    problems += collected.items
    return result


def _checked_ca_pem(ca_pem: Any) -> Any:
    """cluster.caPem as the VM gets it: an Output is checked when it resolves (a private key fails
    the update before the VM's user data, which is readable on the instance, is made)."""
    if not _is_output(ca_pem):
        return ca_pem

    def check(value: Any) -> Any:
        why = spec.ca_pem_problem(value) if value else None
        if why:
            raise MeshSpecError([f"cluster.caPem: {why}"])
        return value

    return ca_pem.apply(check)


class MeshService(pulumi.ComponentResource):
    """A VM of a service in the Consul mesh of a consul-tproxy-vms stack, declared by another program.

    Its inputs come from the mesh stack's outputs (through a StackReference) and the service's own
    settings, validated with the same rules as the mesh's own services. It declares the service's
    service-defaults entry (its protocol), the Consul roles its login binds, its IAM role, security
    group and EC2 instance; the VM's user data holds no secret (it logs in to Consul at boot).

    Pass the Consul provider of the mesh's cluster in the resource options (providers). Intentions
    to this service: a MeshIntentions component, or the mesh stack's own intentions.
    """

    instance_id: pulumi.Output[str] | None
    """ID of the EC2 instance; unset for a service of `instances` VMs (a group)."""
    private_ip: pulumi.Output[str] | None
    """Private IPv4 address of the VM; unset for a group."""
    public_ip: pulumi.Output[str] | None
    """Public IPv4 address of the VM, if its subnet gives one (else empty); unset for a group."""
    node_name: pulumi.Output[str] | None
    """The Consul node the VM registers at boot, <serviceName>-<instance id>; unset for a group."""
    group_name: pulumi.Output[str] | None
    """The Auto Scaling group of a service of `instances` VMs; unset for one VM."""
    instances: pulumi.Output[int]
    """How many VMs run the service."""
    virtual_hostname: pulumi.Output[str]
    """<serviceName>.virtual.consul: how other mesh services call this one (on port 80 for http)."""

    def __init__(self, name: str, args: MeshServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PACKAGE}:index:MeshService", name, None, opts)
        problems: list[str] = []
        service = _service(args, problems)
        admin_cidrs, auto_join = _check_inputs(args, problems)
        if problems or service is None:
            raise MeshServiceError(f"MeshService {name}", problems)
        cluster, login = args["cluster"], args["login"]
        child = pulumi.ResourceOptions(parent=self)

        service_defaults(f"{name}-defaults", service.name, service.protocol, child)
        vm = MeshVm(
            name,
            MeshVmArgs(
                service=service,
                consul_version=args["consul_version"],
                envoy_version=args["envoy_version"],
                cluster=ConsulJoinArgs(
                    datacenter=cluster["datacenter"],
                    retry_join=cluster["retry_join"],
                    ca_pem=_checked_ca_pem(cluster.get("ca_pem")),
                    cloud_auto_join=auto_join,
                ),
                login=LoginArgs(
                    prefix=login["prefix"],
                    iam_path=login["iam_path"],
                    server_id=login["server_id"],
                    http_addrs=login["http_addrs"],
                    gossip_key_path=login.get("gossip_key_path") or "",
                ),
                subnet_id=args["subnet_id"],
                subnet_ids=args.get("subnet_ids"),
                vpc_id=args["vpc_id"],
                mesh_security_group_id=args["mesh_security_group_id"],
                admin_cidrs=admin_cidrs,
                ami_id=args.get("ami_id") or None,
                key_name=args.get("key_name") or None,
                tags=dict(args.get("tags") or {}),
            ),
            opts=child,
        )
        self.instance_id = vm.instance_id
        self.private_ip = vm.private_ip
        self.public_ip = vm.public_ip
        self.node_name = vm.node_name
        self.group_name = vm.group_name
        self.instances = pulumi.Output.from_input(vm.instances)
        self.virtual_hostname = vm.virtual_hostname
        self.register_outputs(vm.summary())


class Intention(TypedDict):
    """Whether `source` may open connections to `destination`."""

    source: str
    """The calling service's name. Plain."""
    destination: str
    """The called service's name. Plain."""
    action: str
    """allow or deny. Plain."""
    description: NotRequired[str]
    """A note kept with the intention in Consul. Plain."""


class MeshIntentionsArgs(TypedDict):
    """The inputs of MeshIntentions."""

    intentions: list[Intention]
    (
        "Intentions, at most one per source/destination pair. Consul keeps one service-intentions entry per "
        "destination: list only destinations no other program (such as the mesh stack) writes. Plain."
    )


def _intentions(raw: Any, problems: list[str]) -> list[IntentionSpec]:
    """The intentions validated: names, actions, one per source/destination pair."""
    raw = _plain(raw, "intentions", problems)
    if not isinstance(raw, list | tuple):
        if raw is not None:
            problems.append(f"intentions: {raw!r} must be a list")
        return []
    result: list[IntentionSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(raw):
        key = f"intentions[{i}]"
        if not isinstance(item, Mapping):
            problems.append(
                f"{key}: {item!r} must be an object such as {{source: web, destination: api, action: allow}}"
            )
            continue
        before = len(problems)
        ends = []
        for end in ("source", "destination"):
            value = _plain(item.get(end), f"{key}.{end}", problems)
            if value is None and not _is_output(item.get(end)):
                problems.append(f"{key}.{end}: is missing")
            elif value is not None and not (isinstance(value, str) and spec.DNS_LABEL.fullmatch(value)):
                problems.append(f"{key}.{end}: {value!r} is not a service name")
            ends.append(value)
        action = _plain(item.get("action"), f"{key}.action", problems)
        if action not in spec.ACTIONS:
            problems.append(f"{key}.action: {action!r} must be allow or deny")
        description = _plain(item.get("description") or "", f"{key}.description", problems)
        if not isinstance(description, str):
            problems.append(f"{key}.description: must be a string")
        if len(problems) != before:
            continue
        pair = (ends[0], ends[1])
        if pair[0] == pair[1]:
            problems.append(f"{key}: names {pair[0]} as source and destination: a service always reaches itself")
        elif pair in seen:
            problems.append(f"{key}: repeats the source/destination pair of intentions[{seen[pair]}]")
        else:
            seen[pair] = i
            result.append(IntentionSpec(pair[0], pair[1], action, description))
    return result


class MeshIntentions(pulumi.ComponentResource):
    """Consul service-intentions entries: who may call whom in the mesh, one entry per destination.

    Pass the Consul provider of the mesh's cluster in the resource options (providers).
    """

    applied: pulumi.Output[list[dict[str, str]]]
    """The intentions written: source, destination and action of each."""

    def __init__(self, name: str, args: MeshIntentionsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PACKAGE}:index:MeshIntentions", name, None, opts)
        problems: list[str] = []
        intentions = _intentions(args.get("intentions"), problems)
        if problems:
            raise MeshServiceError(f"MeshIntentions {name}", problems)
        inner = ServiceIntentions(
            name, ServiceIntentionsArgs(intentions=intentions), opts=pulumi.ResourceOptions(parent=self)
        )
        self.applied = inner.applied
        self.register_outputs({"applied": self.applied})


COMPONENTS: list[type[pulumi.ComponentResource]] = [MeshService, MeshIntentions]
"""What provider/__main__.py hosts."""

# The analyzer copies class docstrings into the schema as they are; without their source indentation
# they read as prose, not as code blocks, in the SDKs' docs.
for _documented in (
    ConsulCluster,
    ConsulLogin,
    MeshServiceArgs,
    MeshService,
    Intention,
    MeshIntentionsArgs,
    MeshIntentions,
):
    _documented.__doc__ = inspect.cleandoc(_documented.__doc__ or "")
