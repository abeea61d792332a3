"""What the Pulumi engine would do with the program's second run: a lifecycle simulator over mocks.

Pulumi's mocks show what a program declares, not what the engine does with it on the next `up`.
This module runs the program under mocks twice (before, after) and judges each resource of the
second run as the engine's step generator would: same, update, replace or create, and for the
first run's leftovers delete, in an order the dependency graph allows. It follows the engine's
rules (pulumi/pkg/resource/deploy/step_generator.go):

- A resource is replaced when an input changes that its provider declares force-new (FORCE_NEW
  below, per resource type, from the providers' schemas), or that its `replace_on_changes` names,
  or when its provider reference or `replacement_trigger` changes; it is updated when any other
  input changes. `ignore_changes` paths are not compared. Dynamic resources (the gates, the image
  pin) are judged by their own provider's `diff`, called for real.
- A replaced resource gets new outputs (a new id, address, certificate...), and an updated one
  keeps its outputs except those its new inputs give and those its provider recomputes on update
  (RECOMPUTED_ON_UPDATE: a launch template's new version, which moves its group's
  `launchTemplate.version`); a resource whose step is "same" keeps its old outputs even when the
  mock runtime would answer differently (the engine never asks the provider). The simulator
  hands exactly those values to the program as it runs, so a change cascades the way it does in
  the engine: an instance id feeds a volume attachment's force-new `instance_id`, a renewed
  certificate a server's user data, a launch template's new version its group.
- Inputs a provider declares as sets (UNORDERED) are compared regardless of their order.
- In preview mode the new outputs of created, replaced and updated-in-place resources are
  unknown, as in `pulumi preview`; an unknown value in a force-new input means a replacement.
  Comparing a preview plan with an update plan shows where preview would not tell the truth.
- An Auto Scaling group's update that makes its provider start an instance refresh (a new launch
  template version, or a change its refresh triggers name) is marked so: Step.label "update
  (instance refresh)", Plan.refreshed.
- Deletes: a resource is deleted after everything that depends on it (its `dependencies`,
  `propertyDependencies`, its provider reference and its parent): `delete_waves` orders them.

Everything is keyed by URN, never by arrival order: the mock runtime registers resources in a
different order on each run. The pure parts (diff_paths, decide, delete_waves...) take plain data.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.dynamic import ResourceProvider
from pulumi.output import Unknown
from pulumi.runtime import rpc, settings
from pulumi.runtime.mocks import MockMonitor

from .image import ImagePinProvider
from .mesh_ready import MeshReadyProvider
from .readiness import ConsulReadyProvider, ServerReadyProvider
from .render import PlanMocks, settle, unwrap
from .spec import PROJECT

UNKNOWN = rpc.UNKNOWN
"""How an unknown value (preview) appears in recorded inputs and outputs."""
SAME, UPDATE, REPLACE, CREATE, DELETE = "same", "update", "replace", "create", "delete"
DYNAMIC_PREFIX = "pulumi-python:dynamic/"
PROVIDER_PREFIX = "pulumi:providers:"
DYNAMIC_PROVIDER_KEY = "__provider"
REPLACED_MARK = "~replaced"
AMI_INVOKE = "aws:ec2/getAmi:getAmi"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"

# Inputs whose change replaces a resource, per resource type, with the provider's own statement.
# Paths are the engine's (camelCase) names; "a.b" is a field of a block. Sources (ForceNew /
# RequiresReplace in the schema; the Pulumi registry page of each resource carries the same
# schema, https://www.pulumi.com/registry/packages/aws/api-docs/ec2/instance/ and siblings):
FORCE_NEW: dict[str, tuple[str, ...]] = {
    # terraform-provider-aws internal/service/ec2/vpc_.go: cidr_block, instance_tenancy, the IPAM pools.
    "aws:ec2/vpc:Vpc": ("cidrBlock", "instanceTenancy", "ipv4IpamPoolId", "ipv4NetmaskLength"),
    # internal/service/ec2/vpc_internet_gateway.go: vpc_id is updated by detach/attach; nothing forces new.
    "aws:ec2/internetGateway:InternetGateway": (),
    # internal/service/ec2/vpc_route_table.go: vpc_id ForceNew.
    "aws:ec2/routeTable:RouteTable": ("vpcId",),
    # internal/service/ec2/vpc_route.go: route_table_id and the destinations ForceNew; the target updates.
    "aws:ec2/route:Route": (
        "routeTableId",
        "destinationCidrBlock",
        "destinationIpv6CidrBlock",
        "destinationPrefixListId",
    ),
    # internal/service/ec2/vpc_subnet.go: vpc_id, cidr_block, availability_zone(_id) ForceNew.
    "aws:ec2/subnet:Subnet": ("vpcId", "cidrBlock", "availabilityZone", "availabilityZoneId", "outpostArn"),
    # internal/service/ec2/vpc_route_table_association.go: subnet_id, gateway_id ForceNew; route_table_id updates.
    "aws:ec2/routeTableAssociation:RouteTableAssociation": ("subnetId", "gatewayId"),
    # internal/service/ec2/vpc_security_group.go: name, name_prefix, description, vpc_id ForceNew.
    "aws:ec2/securityGroup:SecurityGroup": ("name", "namePrefix", "description", "vpcId"),
    # internal/service/ec2/vpc_security_group_ingress_rule.go (and egress): security_group_id
    # RequiresReplace; changing the kind of source also replaces (see _extra_replacements).
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": ("securityGroupId",),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": ("securityGroupId",),
    # internal/service/iam/role.go: name, name_prefix, path ForceNew; the policies update.
    "aws:iam/role:Role": ("name", "namePrefix", "path"),
    # internal/service/iam/role_policy.go: name, name_prefix, role ForceNew; the policy document
    # updates in place (PutRolePolicy): the servers' -secrets / -login and the VMs' -login policies.
    "aws:iam/rolePolicy:RolePolicy": ("name", "namePrefix", "role"),
    # internal/service/iam/instance_profile.go: name, name_prefix, path ForceNew; role updates.
    "aws:iam/instanceProfile:InstanceProfile": ("name", "namePrefix", "path"),
    # internal/service/ec2/ec2_instance.go: ami, availability_zone, subnet_id, key_name, private_ip,
    # associate_public_ip_address, security_groups (names), tenancy, placement, launch_template,
    # ipv6, hibernation, cpu options, network interfaces, root_block_device encrypted/kms_key_id,
    # ebs/ephemeral block devices; user_data(_base64) only with user_data_replace_on_change
    # (ForceNewIf: see force_new_paths). instance_type, vpc_security_group_ids,
    # iam_instance_profile, metadata_options and tags update in place.
    "aws:ec2/instance:Instance": (
        "ami",
        "availabilityZone",
        "subnetId",
        "keyName",
        "privateIp",
        "associatePublicIpAddress",
        "securityGroups",
        "tenancy",
        "hostId",
        "placementGroup",
        "placementPartitionNumber",
        "launchTemplate",
        "ipv6AddressCount",
        "ipv6Addresses",
        "hibernation",
        "cpuOptions",
        "cpuCoreCount",
        "cpuThreadsPerCore",
        "enclaveOptions",
        "ebsOptimized",
        "ebsBlockDevices",
        "ephemeralBlockDevices",
        "networkInterfaces",
        "primaryNetworkInterface",
        "privateDnsNameOptions",
        "rootBlockDevice.encrypted",
        "rootBlockDevice.kmsKeyId",
    ),
    # internal/service/ec2/ec2_eip.go: domain, address, pools, network_border_group ForceNew;
    # instance / network_interface associations update.
    "aws:ec2/eip:Eip": (
        "domain",
        "address",
        "customerOwnedIpv4Pool",
        "networkBorderGroup",
        "publicIpv4Pool",
        "ipamPoolId",
    ),
    # internal/service/ec2/ec2_eip_association.go: every argument ForceNew.
    "aws:ec2/eipAssociation:EipAssociation": (
        "allocationId",
        "allowReassociation",
        "instanceId",
        "networkInterfaceId",
        "privateIpAddress",
        "publicIp",
    ),
    # internal/service/ec2/vpc_network_interface.go: subnet_id, interface_type ForceNew; a new
    # primary address in private_ips / private_ip_list forces new (ForceNewIf).
    "aws:ec2/networkInterface:NetworkInterface": (
        "subnetId",
        "interfaceType",
        "privateIp",
        "privateIps",
        "privateIpList",
    ),
    # internal/service/ec2/ebs_volume.go: availability_zone, encrypted, kms_key_id, snapshot_id,
    # outpost_arn ForceNew; size grows, type/iops/throughput change in place (ModifyVolume).
    "aws:ebs/volume:Volume": ("availabilityZone", "encrypted", "kmsKeyId", "snapshotId", "outpostArn"),
    # internal/service/ec2/ebs_volume_attachment.go: device_name, instance_id, volume_id ForceNew.
    "aws:ec2/volumeAttachment:VolumeAttachment": ("deviceName", "instanceId", "volumeId"),
    # terraform-provider-tls internal/provider/resource_private_key.go: algorithm, rsa_bits,
    # ecdsa_curve RequiresReplace.
    "tls:index/privateKey:PrivateKey": ("algorithm", "rsaBits", "ecdsaCurve"),
    # internal/provider/resource_self_signed_cert.go, resource_locally_signed_cert.go,
    # resource_cert_request.go: every configured attribute RequiresReplace except
    # early_renewal_hours; a certificate "ready for renewal" is replaced by the provider's plan.
    "tls:index/selfSignedCert:SelfSignedCert": (
        "privateKeyPem",
        "subject",
        "validityPeriodHours",
        "allowedUses",
        "dnsNames",
        "ipAddresses",
        "uris",
        "isCaCertificate",
        "setSubjectKeyId",
        "setAuthorityKeyId",
    ),
    "tls:index/locallySignedCert:LocallySignedCert": (
        "certRequestPem",
        "caPrivateKeyPem",
        "caCertPem",
        "validityPeriodHours",
        "allowedUses",
        "isCaCertificate",
        "setSubjectKeyId",
    ),
    "tls:index/certRequest:CertRequest": ("privateKeyPem", "subject", "dnsNames", "ipAddresses", "uris"),
    # terraform-provider-random internal/provider/resource_uuid.go, resource_bytes.go: keepers
    # (and length) RequiresReplace.
    "random:index/randomUuid:RandomUuid": ("keepers",),
    "random:index/randomBytes:RandomBytes": ("length", "keepers"),
    # terraform-provider-consul consul/resource_consul_acl_token.go: accessor_id, local,
    # expiration_time, namespace, partition ForceNew; policies and identities update.
    "consul:index/aclToken:AclToken": ("accessorId", "local", "expirationTime", "namespace", "partition"),
    # consul/resource_consul_acl_policy.go: name, rules, description and datacenters update in place
    # (the versions with namespace and partition make those two ForceNew). Also each MeshVm's
    # `-agent` and `-agent-read` policies.
    "consul:index/aclPolicy:AclPolicy": ("namespace", "partition"),
    # consul/resource_consul_config_entry.go: kind, name, namespace, partition ForceNew; config_json updates.
    "consul:index/configEntry:ConfigEntry": ("kind", "name", "namespace", "partition"),
    # consul/resource_consul_config_entry_service_intentions.go: name, namespace, partition ForceNew.
    "consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions": ("name", "namespace", "partition"),
    # consul/resource_consul_config_entry_service_splitter.go: name, partition, namespace ForceNew.
    "consul:index/configEntryServiceSplitter:ConfigEntryServiceSplitter": ("name", "namespace", "partition"),
    # consul/resource_consul_acl_auth_method.go: name, type, namespace, partition ForceNew;
    # config_json, description, display_name, max_token_ttl, token_locality, namespace_rule update
    # (AuthMethodUpdate). One older version had `type` without ForceNew: kept as replacing.
    "consul:index/aclAuthMethod:AclAuthMethod": ("name", "type", "namespace", "partition"),
    # consul/resource_consul_acl_binding_rule.go: auth_method, bind_type, namespace, partition
    # ForceNew; bind_name, selector, description, bind_vars update (BindingRuleUpdate, same ID).
    "consul:index/aclBindingRule:AclBindingRule": ("authMethod", "bindType", "namespace", "partition"),
    # consul/resource_consul_acl_role.go: namespace, partition ForceNew; name, description, policies
    # (IDs or names), service/node identities and templated policies update (RoleUpdate, same ID).
    "consul:index/aclRole:AclRole": ("namespace", "partition"),
    # consul/resource_consul_keys.go: datacenter (Optional+Computed), namespace, partition ForceNew;
    # the `key` set (Pulumi's `keys`) updates: new paths are written, removed ones deleted if `delete`.
    "consul:index/keys:Keys": ("datacenter", "namespace", "partition"),
    # terraform-provider-aws internal/service/ssm/parameter.go: name and data_type ForceNew, and
    # tier Advanced -> Standard (customdiff.ForceNewIfChange: see _extra_replacements); type,
    # value, description, key_id, allowed_pattern and tags update in place (PutParameter Overwrite).
    "aws:ssm/parameter:Parameter": ("name", "dataType"),
    # internal/service/kms/key.go: customer_master_key_spec, key_usage, multi_region,
    # custom_key_store_id, xks_key_id ForceNew; description, policy, enable_key_rotation,
    # rotation_period_in_days, is_enabled, tags update; deletion_window_in_days is read at delete only.
    "aws:kms/key:Key": ("customerMasterKeySpec", "keyUsage", "multiRegion", "customKeyStoreId", "xksKeyId"),
    # internal/service/ec2/ec2_launch_template.go: only name and name_prefix ForceNew. Every other
    # argument updates in place: a change of the launch data (resourceLaunchTemplateUpdate's
    # updateKeys: image_id, user_data, instance_type, iam_instance_profile, metadata_options,
    # vpc_security_group_ids, key_name, tag_specifications...) creates a new version
    # (CreateLaunchTemplateVersion), and with update_default_version makes it the default; tags
    # alone update without one. See RECOMPUTED_ON_UPDATE.
    LAUNCH_TEMPLATE: ("name", "namePrefix"),
    # internal/service/autoscaling/group.go: name, name_prefix and initial_lifecycle_hook ForceNew
    # (the whole set and each of its fields: a hook is put only at CreateAutoScalingGroup, and the
    # provider's Read never reads hooks back, so any change to the declared hooks replaces the
    # group). launch_template, vpc_zone_identifier, min/max/desired, health checks, instance_refresh,
    # tags... update in place (resourceGroupUpdate: UpdateAutoScalingGroup, tags apart); see
    # refreshes_instances for the updates that start an instance refresh.
    GROUP: ("name", "namePrefix", "initialLifecycleHooks"),
    # internal/service/autoscaling/lifecycle_hook.go: name ForceNew; autoscaling_group_name, the
    # transition, timeout, default result and notification settings update (PutLifecycleHook).
    "aws:autoscaling/lifecycleHook:LifecycleHook": ("name",),
    # internal/service/autoscaling/policy.go: name and autoscaling_group_name ForceNew; the policy's
    # type and configuration (target tracking, steps...) update (PutScalingPolicy).
    "aws:autoscaling/policy:Policy": ("name", "autoscalingGroupName"),
}

# Outputs a provider recomputes when it updates a resource in place (the engine hands the program
# the provider's new outputs after an update, so they flow into other resources' inputs): per type,
# a function of (old inputs, new inputs, old outputs, preview) giving the outputs that change.
RecomputeRule = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any], bool], dict[str, Any]]

# ec2_launch_template.go: arguments whose change creates no version (they are not in
# resourceLaunchTemplateUpdate's updateKeys; tags go through UpdateTags)...
LAUNCH_TEMPLATE_UNVERSIONED = frozenset(
    {"name", "namePrefix", "defaultVersion", "updateDefaultVersion", "tags", "tagsAll"}
)
# ...and those whose change leaves latest_version known in a plan (the CustomizeDiff
# ComputedIf("latest_version") skips them; it does not skip tags, so a tag change shows the version
# unknown in preview although `up` creates none).
LAUNCH_TEMPLATE_PLAN_KEEPS_VERSION = frozenset(
    {"name", "namePrefix", "description", "defaultVersion", "updateDefaultVersion"}
)

# group.go resourceGroupUpdate: shouldRefreshInstances is set by a change of launch_configuration,
# launch_template or mixed_instances_policy, else by a change of any attribute instance_refresh's
# `triggers` names; StartInstanceRefresh is called only when the group has an instance_refresh block.
REFRESH_ALWAYS = ("launchConfiguration", "launchTemplate", "mixedInstancesPolicy")
# Terraform names a trigger may hold whose Pulumi names are not their camelCase (pluralised lists).
TRIGGER_NAMES = {
    "tag": "tags",
    "vpc_zone_identifier": "vpcZoneIdentifiers",
    "initial_lifecycle_hook": "initialLifecycleHooks",
    "traffic_source": "trafficSources",
}
# pulumi-terraform-bridge pkg/tfbridge (Diff, nameRequiresDeleteBeforeReplace): when a resource
# whose auto-named property the program set itself must be replaced, the provider answers
# DeleteBeforeReplace, since the new resource could not take a name the old one still holds; the
# engine then deletes first. Per type, that property (pulumi-aws names these resources itself when
# it is absent). A group replaced this way loses every instance before the new one launches any.
NAMED_BY_PROGRAM: dict[str, str] = {GROUP: "name", LAUNCH_TEMPLATE: "name"}
INSTANCE_REFRESH = "instance refresh"
"""Step.reason of a group update that starts an instance refresh (the provider replaces its instances)."""

# Dynamic resources are judged by their own provider's diff, called for real (it never polls).
DYNAMIC_PROVIDERS: dict[str, Callable[[], ResourceProvider]] = {
    "ConsulReady": ConsulReadyProvider,
    "ServerReady": ServerReadyProvider,
    "ImagePin": ImagePinProvider,
    "MeshReady": MeshReadyProvider,
}

SOURCE_KINDS = ("cidrIpv4", "cidrIpv6", "prefixListId", "referencedSecurityGroupId")

# Inputs the provider's schema declares as sets (schema.TypeSet): their order is no change (the
# bridge diffs through Terraform's plan, which compares sets by their elements' hashes).
UNORDERED: dict[str, tuple[str, ...]] = {
    # internal/service/autoscaling/group.go: availability_zones, enabled_metrics,
    # initial_lifecycle_hook, load_balancers, suspended_processes, tag, target_group_arns,
    # traffic_source, vpc_zone_identifier are TypeSet (termination_policies is a list).
    GROUP: (
        "availabilityZones",
        "enabledMetrics",
        "initialLifecycleHooks",
        "loadBalancers",
        "suspendedProcesses",
        "tags",
        "targetGroupArns",
        "trafficSources",
        "vpcZoneIdentifiers",
    ),
    # internal/service/ec2/ec2_launch_template.go: vpc_security_group_ids, security_group_names,
    # license_specification are TypeSet.
    LAUNCH_TEMPLATE: ("vpcSecurityGroupIds", "securityGroupNames", "licenseSpecifications"),
}


# --- the record of one run --------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The resource options the engine applies (as the RegisterResource request carries them)."""

    protect: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    additional_secret_outputs: tuple[str, ...] = ()
    deleted_with: str = ""
    replacement_trigger: Any = None


@dataclass
class Registration:
    """One resource as registered: inputs (secrets unwrapped, unknowns as UNKNOWN), options, dependencies."""

    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    provider: str
    """URN of the explicit provider ("" for the default one)."""
    inputs: dict[str, Any]
    dependencies: frozenset[str]
    property_dependencies: dict[str, frozenset[str]]
    options: Options
    secret_inputs: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()
    """URNs of the providers a component was given (`providers`): the SDK registers a component
    only once each of them exists (pulumi/runtime/resource.py prepare_resource)."""
    id: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    """Outputs as the program saw them (secret wrappers kept: they go back to the runtime)."""

    @property
    def needs(self) -> frozenset[str]:
        """Every URN this resource needs alive: dependencies, property dependencies, provider, parent."""
        urns = set(self.dependencies)
        for deps in self.property_dependencies.values():
            urns |= deps
        urns |= {u for u in (self.provider, self.parent) if u}
        urns.discard(self.urn)
        return frozenset(urns)


Record = dict[str, Registration]


@dataclass(frozen=True)
class Step:
    urn: str
    kind: str
    paths: tuple[str, ...] = ()
    """The input paths that changed (update) or forced the replacement (replace)."""
    reason: str = ""
    provider_deletes_first: bool = False
    """A replacement the provider's diff makes delete-before-replace (see NAMED_BY_PROGRAM)."""

    @property
    def label(self) -> str:
        """The step as the plan shows it: its kind, and for a group's update "(instance refresh)"."""
        return f"{self.kind} ({INSTANCE_REFRESH})" if self.reason == INSTANCE_REFRESH else self.kind


def urn_named(record: Mapping[str, Any], name: str, typ: str | None = None) -> str:
    """The URN of the one resource called `name`, of type `typ` where a name repeats across types
    (a URN holds both: a launch template and a group may share a name)."""
    urns = [u for u in record if name_of(u) == name and (typ is None or type_of(u) == typ)]
    if len(urns) != 1:
        of_type = f" of type {typ}" if typ else ""
        raise ValueError(f"{len(urns)} resources named {name!r}{of_type}: {sorted(type_of(u) for u in urns)}")
    return urns[0]


def name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def type_of(urn: str) -> str:
    return urn.split("::")[2].rsplit("$", 1)[-1]


# --- pure judgement ---------------------------------------------------------------------------


def is_unknown(value: Any) -> bool:
    return isinstance(value, Unknown) or value == UNKNOWN


def contains_unknown(value: Any) -> bool:
    if is_unknown(value):
        return True
    if isinstance(value, dict):
        return any(contains_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_unknown(v) for v in value)
    return False


def normalize(value: Any) -> Any:
    """Engine inputs as plain data: secrets unwrapped, unknowns as UNKNOWN, integers as ints."""
    value = unwrap(value)
    if isinstance(value, Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def diff_paths(old: Any, new: Any, prefix: str = "") -> set[str]:
    """Paths ("a.b.0") where `new` differs from `old`; an unknown new value differs from anything."""
    if is_unknown(new):
        return {prefix}
    if isinstance(old, dict) and isinstance(new, dict):
        paths: set[str] = set()
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                paths.add(sub)
            else:
                paths |= diff_paths(old[key], new[key], sub)
        return paths
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        paths = set()
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            paths |= diff_paths(a, b, f"{prefix}.{index}" if prefix else str(index))
        return paths
    return set() if old == new else {prefix}


def _canonical(path: str) -> str:
    """Pulumi property paths ("a[0].b", 'tags["x"]') in the dotted form diff_paths uses."""
    return path.replace('["', ".").replace('"]', "").replace("[", ".").replace("]", "")


def path_matches(path: str, pattern: str) -> bool:
    """Whether a changed `path` falls under `pattern` (equal, inside it, or a whole block around it)."""
    if pattern == "*":
        return True
    pattern = _canonical(pattern)
    return path == pattern or path.startswith(pattern + ".") or pattern.startswith(path + ".") or path == ""


def force_new_paths(typ: str, inputs: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The force-new input paths of `typ` given its inputs; None for a type the table does not know."""
    paths = FORCE_NEW.get(typ)
    if paths is None:
        return None
    if typ == "aws:ec2/instance:Instance" and inputs.get("userDataReplaceOnChange"):
        # ec2_instance.go: customdiff.ForceNewIf("user_data"/"user_data_base64", user_data_replace_on_change).
        paths = (*paths, "userData", "userDataBase64")
    return paths


def _extra_replacements(typ: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if typ.startswith("aws:vpc/securityGroup") and typ.endswith("Rule"):
        # vpc_security_group_ingress_rule.go ModifyPlan: "you cannot change the rule's source type".
        kinds = [{k for k in SOURCE_KINDS if rule.get(k) is not None} for rule in (old, new)]
        if kinds[0] != kinds[1]:
            return ["source kind"]
    if typ == "aws:ssm/parameter:Parameter" and old.get("tier") == "Advanced" and new.get("tier") == "Standard":
        # ssm/parameter.go: customdiff.ForceNewIfChange("tier", Advanced -> Standard): AWS cannot
        # downgrade a parameter's tier, so the provider deletes and recreates it.
        return ["tier"]
    return []


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def as_compared(typ: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """`inputs` as the provider compares them: the elements of its set-typed inputs in one order."""
    compared = dict(inputs)
    for key in UNORDERED.get(typ, ()):
        if isinstance(compared.get(key), list):
            compared[key] = sorted(compared[key], key=_sort_key)
    return compared


def _launch_template_versions(
    old: Mapping[str, Any], new: Mapping[str, Any], outputs: Mapping[str, Any], preview: bool
) -> dict[str, Any]:
    """A launch template's versions after an in-place update (ec2_launch_template.go).

    resourceLaunchTemplateUpdate: a change of the launch data (updateKeys) creates version
    latest + 1 (CreateLaunchTemplateVersion); with update_default_version, ModifyLaunchTemplate
    makes the latest version the default. In a plan (preview) the CustomizeDiff marks
    latest_version unknown when any argument but name, name_prefix, description, default_version
    and update_default_version changed, and default_version unknown (with update_default_version)
    when any argument but name, name_prefix and description changed.
    """
    compared = [as_compared(LAUNCH_TEMPLATE, inputs) for inputs in (old, new)]
    changed = {path.split(".", 1)[0] for path in diff_paths(*compared)}
    if preview:
        unknown: dict[str, Any] = {}
        if changed - LAUNCH_TEMPLATE_PLAN_KEEPS_VERSION:
            unknown["latestVersion"] = UNKNOWN
        if new.get("updateDefaultVersion") and changed - {"name", "namePrefix", "description"}:
            unknown["defaultVersion"] = UNKNOWN
        return unknown
    latest = outputs.get("latestVersion")
    if not isinstance(latest, int | float) or not changed - LAUNCH_TEMPLATE_UNVERSIONED:
        return {}
    versions: dict[str, Any] = {"latestVersion": int(latest) + 1}
    if new.get("updateDefaultVersion"):
        versions["defaultVersion"] = int(latest) + 1
    return versions


RECOMPUTED_ON_UPDATE: dict[str, RecomputeRule] = {LAUNCH_TEMPLATE: _launch_template_versions}

# Outputs a provider computes at create that the base mocks may not answer: CreateLaunchTemplate
# makes version 1, which is also the default (ec2_launch_template.go resourceLaunchTemplateRead
# sets latest_version and default_version from the template).
CREATED_OUTPUTS: dict[str, dict[str, Any]] = {LAUNCH_TEMPLATE: {"latestVersion": 1, "defaultVersion": 1}}


def recomputed_outputs(
    typ: str, old: Mapping[str, Any], new: Mapping[str, Any], outputs: Mapping[str, Any], preview: bool = False
) -> dict[str, Any]:
    """The outputs of `typ` an in-place update from inputs `old` to `new` changes (UNKNOWN in preview)."""
    rule = RECOMPUTED_ON_UPDATE.get(typ)
    return rule(old, new, outputs, preview) if rule else {}


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def refreshes_instances(inputs: Mapping[str, Any], changed: Iterable[str]) -> bool:
    """Whether an update of an Auto Scaling group with `inputs`, changing `changed`, starts an
    instance refresh (group.go resourceGroupUpdate: only with an instance_refresh block, on a change
    of launch_configuration, launch_template, mixed_instances_policy or of an attribute its
    `triggers` name, by their Terraform names)."""
    refresh = inputs.get("instanceRefresh")
    if not isinstance(refresh, dict):
        return False
    triggers = [TRIGGER_NAMES.get(t, _camel(t)) for t in refresh.get("triggers") or [] if isinstance(t, str)]
    return any(path_matches(path, field) for path in changed for field in (*REFRESH_ALWAYS, *triggers))


def _update(new: Registration, changed: list[str]) -> Step:
    if not changed:
        return Step(new.urn, SAME)
    refresh = new.type == GROUP and refreshes_instances(new.inputs, changed)
    return Step(new.urn, UPDATE, tuple(changed), INSTANCE_REFRESH if refresh else "")


def decide(
    old: Registration | None, new: Registration, replaced_by_provider: bool = False, provider_unknown: bool = False
) -> Step:
    """The engine's step for `new` given the state `old` (None: not in the state).

    `replaced_by_provider`: the provider's plan replaces it whatever its inputs (a certificate
    ready for renewal). `provider_unknown`: its provider's configuration is unknown (preview), so
    the engine cannot ask for a diff and shows a change.
    """
    if old is None:
        return Step(new.urn, CREATE)
    if not new.custom:
        return Step(new.urn, SAME)  # components have no provider and no diff
    if old.provider != new.provider:
        return Step(new.urn, REPLACE, ("<provider>",), "its provider reference changed")
    if replaced_by_provider:
        return Step(new.urn, REPLACE, ("<provider plan>",), "its provider plans a replacement")
    if provider_unknown:
        return Step(new.urn, UPDATE, ("<provider configuration unknown>",), "its provider is unknown in preview")
    if old.options.replacement_trigger != new.options.replacement_trigger:
        return Step(new.urn, REPLACE, ("<replacement_trigger>",), "replacement_trigger changed")
    changed = sorted(
        p
        for p in diff_paths(as_compared(new.type, old.inputs), as_compared(new.type, new.inputs))
        if p != DYNAMIC_PROVIDER_KEY and not any(path_matches(p, ig) for ig in new.options.ignore_changes)
    )
    if new.type.startswith(PROVIDER_PREFIX):
        return Step(new.urn, UPDATE if changed else SAME, tuple(changed))
    if new.type.startswith(DYNAMIC_PREFIX):
        return _decide_dynamic(old, new, changed)
    roc = [p for p in changed if any(path_matches(p, r) for r in new.options.replace_on_changes)]
    force = force_new_paths(new.type, new.inputs)
    if force is None:
        # A type the table does not know: any change might replace it (see unmodeled_types).
        forced = changed
    else:
        forced = [p for p in changed if any(path_matches(p, f) for f in force)]
    forced += _extra_replacements(new.type, old.inputs, new.inputs)
    replaces = sorted(set(roc) | set(forced))
    if replaces:
        first = new.type in NAMED_BY_PROGRAM and new.inputs.get(NAMED_BY_PROGRAM[new.type]) is not None
        return Step(new.urn, REPLACE, tuple(replaces), "force-new inputs changed", provider_deletes_first=first)
    return _update(new, changed)


def kept_ignored(
    old_inputs: Mapping[str, Any], new_inputs: Mapping[str, Any], ignore_changes: Iterable[str]
) -> dict[str, Any]:
    """The inputs the engine stores for a resource it had before: the new ones, with each ignored
    top-level input as it was (pulumi/pkg/resource/deploy/step_generator.go processIgnoreChanges:
    the old value is copied over the new one), so the next `up` compares with what was kept, not with
    what was declared. Nested paths are kept as declared (the program ignores top-level inputs only)."""
    kept = dict(new_inputs)
    for path in ignore_changes:
        if "." in path or "[" in path:
            continue
        if path in old_inputs:
            kept[path] = old_inputs[path]
        else:
            kept.pop(path, None)
    return kept


def _decide_dynamic(old: Registration, new: Registration, changed: list[str]) -> Step:
    kind = new.type.rsplit(":", 1)[-1]
    factory = DYNAMIC_PROVIDERS.get(kind)
    if factory is None:
        return Step(new.urn, UPDATE if changed else SAME, tuple(changed))
    news = {k: v for k, v in new.inputs.items() if k != DYNAMIC_PROVIDER_KEY}
    olds = {k: v for k, v in normalize(old.outputs).items() if k != DYNAMIC_PROVIDER_KEY}
    result = factory().diff(old.id or "", olds, news)
    if result.replaces:
        return Step(new.urn, REPLACE, tuple(result.replaces), "its dynamic provider's diff")
    if result.changes:
        return Step(new.urn, UPDATE, tuple(changed), "its dynamic provider's diff")
    return Step(new.urn, SAME)


def closure(record: Record, urn: str) -> frozenset[str]:
    """Every URN `urn` needs, transitively (they all outlive it on delete)."""
    seen: set[str] = set()
    todo = list(record[urn].needs)
    while todo:
        dep = todo.pop()
        if dep in seen or dep not in record:
            continue
        seen.add(dep)
        todo.extend(record[dep].needs)
    return frozenset(seen)


def delete_waves(record: Record, urns: Iterable[str] | None = None) -> list[list[str]]:
    """The order the engine may delete `urns` in (all of `record`: `pulumi destroy`), wave by wave.

    A resource is deleted only once everything among `urns` that needs it is gone: what depends on
    it, what its provider serves, its children. Each wave's URNs could go in parallel.
    """
    left = set(record if urns is None else urns)
    waves = []
    while left:
        needed = {dep for urn in left for dep in record[urn].needs}
        wave = sorted(urn for urn in left if urn not in needed)
        if not wave:
            raise ValueError(f"dependency cycle among {sorted(left)}")
        waves.append(wave)
        left -= set(wave)
    return waves


def delete_rank(waves: list[list[str]]) -> dict[str, int]:
    return {urn: index for index, wave in enumerate(waves) for urn in wave}


# --- the schedule of a first `up` ------------------------------------------------------------


def waits_for(registration: Registration) -> frozenset[str]:
    """What the SDK awaits before it sends `registration` to the engine (pulumi/runtime/resource.py
    prepare_resource): its parent's URN, the URNs of its dependencies and of the resources its
    inputs come from (their outputs, in an `up`), and the id of its provider, or for a component
    of every provider it was given (`_create_provider_ref` awaits the provider's urn and id)."""
    urns = set(registration.needs) | set(registration.providers)
    urns.discard(registration.urn)
    return frozenset(urns)


def schedule(record: Record, duration: Callable[[Registration], float]) -> dict[str, tuple[float, float]]:
    """When each resource of a first `up` starts and ends: URN -> (start, end).

    A resource starts once everything it waits for (waits_for) has ended, and ends `duration`
    later (a component, which the engine registers at once, takes 0 whatever `duration` says).
    The engine runs independent steps in parallel, so this is the earliest the graph allows.
    """
    times: dict[str, tuple[float, float]] = {}

    def timing(urn: str, seen: frozenset[str] = frozenset()) -> tuple[float, float]:
        if urn not in times:
            if urn in seen:
                raise ValueError(f"dependency cycle through {urn}")
            reg = record[urn]
            start = max((timing(u, seen | {urn})[1] for u in waits_for(reg) if u in record), default=0.0)
            times[urn] = (start, start + (duration(reg) if reg.custom else 0.0))
        return times[urn]

    for urn in sorted(record):
        timing(urn)
    return times


def critical_chain(record: Record, times: Mapping[str, tuple[float, float]], urn: str) -> list[str]:
    """The chain of resources that decides when `urn` starts, first to last, ending with `urn`:
    from each resource, what it waited for that ended last (ties broken by URN)."""
    chain = [urn]
    while True:
        waits = sorted(u for u in waits_for(record[chain[-1]]) if u in record)
        if not waits:
            return list(reversed(chain))
        chain.append(max(waits, key=lambda u: (times[u][1], u)))


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The engine's judgement of an after-run against a before-run."""

    before: Record
    after: Record
    steps: dict[str, Step]
    """Every URN of either run: its step."""

    def urns(self, kind: str) -> list[str]:
        return sorted(urn for urn, step in self.steps.items() if step.kind == kind)

    def names(self, kind: str, custom_only: bool = True) -> list[str]:
        """Names of the resources with step `kind` (components left out unless custom_only is False)."""
        record = {**self.before, **self.after}
        return sorted(name_of(u) for u in self.urns(kind) if record[u].custom or not custom_only)

    @property
    def replaced(self) -> list[str]:
        return self.names(REPLACE)

    @property
    def updated(self) -> list[str]:
        return self.names(UPDATE)

    @property
    def created(self) -> list[str]:
        return self.names(CREATE)

    @property
    def deleted(self) -> list[str]:
        return self.names(DELETE)

    @property
    def refreshed(self) -> list[str]:
        """Updated Auto Scaling groups whose update starts an instance refresh (their instances are replaced)."""
        return sorted(name_of(u) for u in self.urns(UPDATE) if self.steps[u].reason == INSTANCE_REFRESH)

    def changed(self) -> dict[str, list[str]]:
        return {"replaced": self.replaced, "updated": self.updated, "created": self.created, "deleted": self.deleted}

    def step(self, name: str, typ: str | None = None) -> Step:
        return self.steps[urn_named(self.steps, name, typ)]

    def deletes_first(self, urn: str) -> bool:
        """Whether replacing `urn` deletes the old resource before creating the new one: its own
        deleteBeforeReplace option, or its provider's diff (Step.provider_deletes_first)."""
        return self.after[urn].options.delete_before_replace or self.steps[urn].provider_deletes_first

    def how(self, urn: str) -> str:
        """How `urn`'s step goes, for the plan text beside the resource: a replacement's order
        ("delete-before-replace" or "create-before-delete"), INSTANCE_REFRESH for a group's update
        that replaces its instances, "" for any other step."""
        step = self.steps[urn]
        if step.kind == REPLACE:
            return "delete-before-replace" if self.deletes_first(urn) else "create-before-delete"
        return step.reason if step.reason == INSTANCE_REFRESH else ""

    def delete_waves(self) -> list[list[str]]:
        """The order of this plan's deletes (resources gone from the program), from the before-run's graph."""
        return delete_waves(self.before, self.urns(DELETE))

    def order(self) -> dict[str, int]:
        """The wave of each change (1 first): what `pulumi up` may do once the waves before are done.

        A change waits for the changes it depends on (waits_for, through unchanged resources too),
        as the engine's step generator does; a delete comes after every other step (the engine
        deletes last), in delete_waves' order. Resources of one wave may go in parallel.
        """
        changes = {urn for urn, step in self.steps.items() if step.kind != SAME}
        times = schedule(self.after, lambda reg: 1.0 if reg.urn in changes else 0.0)
        waves = {urn: int(times[urn][0]) + 1 for urn in changes if urn in self.after}
        last = max(waves.values(), default=0)
        for rank, wave in enumerate(self.delete_waves()):
            waves.update({urn: last + 1 + rank for urn in wave})
        return waves

    def blocked(self) -> list[str]:
        """Protected resources this plan would delete or replace: the engine refuses the update."""
        return sorted(
            name_of(u)
            for u in [*self.urns(DELETE), *self.urns(REPLACE)]
            if u in self.before and self.before[u].options.protect
        )

    def retained(self) -> list[str]:
        """Resources this plan drops from the state but leaves in the cloud (retain_on_delete)."""
        return sorted(
            name_of(u)
            for u in [*self.urns(DELETE), *self.urns(REPLACE)]
            if u in self.before and self.before[u].options.retain_on_delete
        )

    def unmodeled_types(self) -> list[str]:
        """Custom resource types the force-new table does not know (judged pessimistically)."""
        return sorted(
            {
                r.type
                for r in self.after.values()
                if r.custom and not r.type.startswith((PROVIDER_PREFIX, DYNAMIC_PREFIX)) and r.type not in FORCE_NEW
            }
        )

    def summary(self) -> str:
        lines = []
        for kind in (REPLACE, UPDATE, CREATE, DELETE):
            for urn in self.urns(kind):
                step = self.steps[urn]
                why = f" ({', '.join(step.paths)})" if step.paths else ""
                lines.append(f"{step.label:8s} {type_of(urn)} {name_of(urn)}{why}")
        return "\n".join(lines) or "no changes"


def plan_of(before: Record, after: Record, steps: Mapping[str, Step]) -> Plan:
    all_steps = dict(steps)
    for urn in before:
        if urn not in after:
            all_steps[urn] = Step(urn, DELETE)
    return Plan(before=before, after=after, steps=all_steps)


def depends_transitively(record: Record, urn: str, on: str) -> bool:
    return on in closure(record, urn)


# --- the mock engine ---------------------------------------------------------------------------


_local = threading.local()


def _replaced(value: Any) -> Any:
    """A value as a new resource would have it: different from the old one wherever it is a string."""
    if isinstance(value, str):
        return value + REPLACED_MARK
    if isinstance(value, dict):
        return {k: (v if k == rpc._special_sig_key else _replaced(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v) for v in value]
    return value


def _unknowns_as_marker(value: Any) -> Any:
    if isinstance(value, Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {k: _unknowns_as_marker(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unknowns_as_marker(v) for v in value]
    return value


def _computed_keys(state: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[str]:
    """Outputs the provider computes (not an echo of the same input)."""
    return [k for k, v in state.items() if k not in inputs or normalize(inputs[k]) != normalize(v)]


class EngineMocks(pulumi.runtime.Mocks):
    """Mocks that answer as the engine would on an `up` over the state `before` (None: a first `up`).

    `base` is the fake cloud: it answers what a provider would return for a new resource. Each
    registration is judged (decide) and answered with the outputs the engine would hand the
    program: the old ones for "same", new ones (changed, or unknown in preview) for a replacement.
    """

    def __init__(
        self,
        base: PlanMocks,
        before: Record | None = None,
        preview: bool = False,
        latest_image: str | None = None,
        renewed: Iterable[str] = (),
    ) -> None:
        self.base = base
        self.before = before or {}
        self.preview = preview
        self.latest_image = latest_image
        """The answer of the newest-image lookup (a newer Ubuntu release); None: the base's."""
        self.renewed = set(renewed)
        """Names of resources whose provider plans a replacement (certificates ready for renewal)."""
        self.record: Record = {}
        self.steps: dict[str, Step] = {}
        self._lock = threading.Lock()

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == AMI_INVOKE and self.latest_image is not None:
            self.base.calls.append(args)
            return {"id": self.latest_image, "name": "ubuntu-noble-24.04 (newer)"}
        return self.base.call(args)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        registration: Registration = _local.registration
        fresh_id, fresh = self.base.new_resource(args)
        fresh = {**CREATED_OUTPUTS.get(args.typ, {}), **fresh}
        old = self.before.get(registration.urn)
        with self._lock:
            provider = self.record.get(registration.provider)
        provider_unknown = provider is not None and contains_unknown(provider.inputs)
        step = decide(old, registration, registration.name in self.renewed, provider_unknown)
        if old is not None and registration.options.ignore_changes:
            registration.inputs = kept_ignored(old.inputs, registration.inputs, registration.options.ignore_changes)
        rid, outputs = self._answer(step, old, registration, args.inputs, fresh_id, fresh)
        registration.id, registration.outputs = rid, outputs
        with self._lock:
            self.record[registration.urn] = registration
            self.steps[registration.urn] = step
        return rid, outputs

    def _answer(
        self,
        step: Step,
        old: Registration | None,
        new: Registration,
        inputs: Mapping[str, Any],
        fresh_id: str,
        fresh: dict[str, Any],
    ) -> tuple[str | None, dict[str, Any]]:
        fresh = _unknowns_as_marker(fresh)
        if step.kind == SAME and old is not None:
            # The engine keeps the old outputs; it never asks the provider.
            return old.id, dict(old.outputs)
        if step.kind == UPDATE and old is not None:
            # What the provider recomputes on update (a launch template's new version) replaces
            # the old value, or is unknown in preview.
            recomputed = recomputed_outputs(new.type, old.inputs, new.inputs, old.outputs, self.preview)
            if self.preview:
                # Known before the update: the old outputs, with the new inputs' values.
                return old.id, {**old.outputs, **_unknowns_as_marker(dict(inputs)), **recomputed}
            return old.id, {**fresh, **recomputed}
        computed = _computed_keys(fresh, inputs)
        if self.preview:
            return None, {k: (UNKNOWN if k in computed else v) for k, v in fresh.items()}
        if step.kind == REPLACE:
            return f"{fresh_id}{REPLACED_MARK}", {k: (_replaced(v) if k in computed else v) for k, v in fresh.items()}
        return fresh_id, fresh


class LifecycleMonitor(MockMonitor):
    """The mock monitor, recording every RegisterResource request for the EngineMocks to judge."""

    def __init__(self, engine: EngineMocks) -> None:
        super().__init__(engine)
        self.engine = engine

    def RegisterResource(self, request: Any) -> Any:
        if request.type == "pulumi:pulumi:Stack":
            return super().RegisterResource(request)
        self.engine.base.parents[request.name] = request.parent
        _local.registration = self._registration(request)
        try:
            return super().RegisterResource(request)
        finally:
            _local.registration = None

    def _registration(self, request: Any) -> Registration:
        raw = rpc.deserialize_properties(request.object, keep_unknowns=True)
        trigger = None
        if request.HasField("replacement_trigger"):
            trigger = normalize(rpc.deserialize_property(request.replacement_trigger))
        return Registration(
            urn=self.make_urn(request.parent, request.type, request.name),
            type=request.type,
            name=request.name,
            parent=request.parent,
            custom=bool(request.custom),
            provider=request.provider.rsplit("::", 1)[0] if request.provider else "",
            inputs=normalize(raw),
            dependencies=frozenset(request.dependencies),
            property_dependencies={k: frozenset(v.urns) for k, v in request.propertyDependencies.items()},
            options=Options(
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                delete_before_replace=bool(request.deleteBeforeReplace),
                ignore_changes=tuple(request.ignoreChanges),
                replace_on_changes=tuple(request.replaceOnChanges),
                additional_secret_outputs=tuple(request.additionalSecretOutputs),
                deleted_with=request.deletedWith,
                replacement_trigger=trigger,
            ),
            secret_inputs=frozenset(k for k, v in raw.items() if rpc.is_rpc_secret(v)),
            providers=frozenset(ref.rsplit("::", 1)[0] for ref in request.providers.values()),
        )


@dataclass
class Run:
    record: Record
    steps: dict[str, Step]
    outputs: Any
    mocks: PlanMocks


def run(
    program: Callable[[], Any],
    base: PlanMocks,
    before: Record | None = None,
    preview: bool = False,
    latest_image: str | None = None,
    renewed: Iterable[str] = (),
    stack: str = "test",
) -> Run:
    """Run `program` (which sets its config and declares the stack) as an `up` over `before`."""
    engine = EngineMocks(base, before, preview, latest_image, renewed)

    async def go() -> Any:
        # Forget RPCs of an earlier run (as pulumi.runtime.test does): they belong to a closed loop.
        settings.SETTINGS.rpc_manager.clear()
        settings.SETTINGS.outputs.clear()
        pulumi.runtime.set_mocks(
            engine, project=PROJECT, stack=stack, preview=preview, monitor=LifecycleMonitor(engine)
        )
        return await settle(program())

    outputs = asyncio.run(go())
    return Run(record=engine.record, steps=engine.steps, outputs=outputs, mocks=base)


def plan_after(
    first: Run,
    after: Callable[[], Any],
    base: PlanMocks,
    preview: bool = False,
    latest_image: str | None = None,
    renewed: Iterable[str] = (),
    stack: str = "test",
) -> Plan:
    """The engine's plan for an `up` (or a preview) of `after` over the state `first` left."""
    second = run(after, base, first.record, preview, latest_image, renewed, stack)
    return plan_of(first.record, second.record, second.steps)


def simulate(
    before: Callable[[], Any],
    after: Callable[[], Any],
    base: Callable[[], PlanMocks],
    preview: bool = False,
    latest_image: str | None = None,
    renewed: Iterable[str] = (),
    stack: str = "test",
) -> Plan:
    """A first `up` of `before`, then the engine's plan for an `up` (or a preview) of `after`."""
    first = run(before, base(), stack=stack)
    return plan_after(first, after, base(), preview, latest_image, renewed, stack)
