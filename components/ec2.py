"""The EC2 parts every VM of the stack is made of, declared the same way for servers and mesh VMs.

Not a component: functions that declare resources under the component that calls them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from . import groups
from .image import ImagePin
from .spec import PROJECT

UBUNTU_OWNER = "099720109477"  # Canonical
UBUNTU_IMAGE = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"

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


def is_cloud_auto_join(retry_join: Sequence[str]) -> bool:
    return any(target.startswith("provider=aws") for target in retry_join)


@dataclass(frozen=True)
class Ingress:
    """One inbound rule: a port from a security group (peers) or from a network (admins)."""

    rule: str
    """Suffix of the rule's resource name."""
    protocol: str
    port: int
    description: str
    source_group_id: pulumi.Input[str] | None = None
    """Admit members of this group; SELF for the group the rule belongs to."""
    cidr: str | None = None


SELF = "self"


# IAM: "The name can be up to 64 characters" (role), 128 (instance profile, inline policy): AWS IAM
# User Guide, "IAM object quotas". Pulumi's auto-naming appends "-" and 7 random characters; the
# provider's name_prefix appends 26 (terraform-provider-aws internal/create/naming.go).
IAM_ROLE_NAME_LIMIT = 64
AUTO_NAME_SUFFIX = 8
NAME_PREFIX_SUFFIX = 26


def fitting_name(resource_name: str, limit: int) -> dict[str, str]:
    """Resource arguments that keep the physical name within `limit`: none (auto-naming) when
    `resource_name` plus its random suffix fits, else a name_prefix cut to fit. Only names that
    could never have been created before get the prefix, so existing resources keep their names."""
    if len(resource_name) + AUTO_NAME_SUFFIX <= limit:
        return {}
    return {"name_prefix": resource_name[: limit - NAME_PREFIX_SUFFIX - 1] + "-"}


def instance_profile(
    name: str,
    description: str,
    cloud_auto_join: bool,
    tags: Mapping[str, str],
    parent: pulumi.Resource,
    *,
    path: str = "/",
    login: bool = False,
    statements: pulumi.Input[list[dict[str, object]]] | None = None,
    statements_name: str = "secrets",
) -> aws.iam.InstanceProfile:
    """The VM's IAM role and profile, with only what the VM calls: DescribeInstances for cloud
    auto-join; iam:GetRole on the role itself when the VM logs in to Consul with it (`consul login
    -aws-include-entity` signs that call for the servers to replay; Consul docs, aws-iam auth
    method); and `statements` (a server's own SSM parameters, a group's VMs' lifecycle hooks) as the
    role policy `<name>-<statements_name>`. Roles that log in live under `path`,
    which the auth methods bind, and carry `tags` the binding rules read."""
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(
        f"{name}-role",
        **fitting_name(f"{name}-role", IAM_ROLE_NAME_LIMIT),
        path=path,
        assume_role_policy=ASSUME_ROLE_EC2,
        description=f"{PROJECT}: {description}",
        tags=tags,
        opts=child,
    )
    policies = []
    if cloud_auto_join:
        policies.append(aws.iam.RolePolicy(f"{name}-auto-join", role=role.id, policy=AUTO_JOIN_POLICY, opts=child))
    if login:
        policies.append(
            aws.iam.RolePolicy(
                f"{name}-login",
                role=role.id,
                policy=role.arn.apply(lambda arn: policy_document([allow(["iam:GetRole"], [arn])])),
                opts=child,
            )
        )
    if statements is not None:
        policies.append(
            aws.iam.RolePolicy(
                f"{name}-{statements_name}",
                role=role.id,
                policy=pulumi.Output.from_input(statements).apply(policy_document),
                opts=child,
            )
        )
    # The profile after its role's policies: an instance that boots with it (and logs in, reads
    # its secrets, joins at boot) finds them in place. Its URN and inputs stay as they were.
    return aws.iam.InstanceProfile(
        f"{name}-profile", role=role.name, tags=tags, opts=pulumi.ResourceOptions(parent=parent, depends_on=policies)
    )


def allow(
    actions: list[str], resources: list[str], condition: Mapping[str, Mapping[str, object]] | None = None
) -> dict[str, object]:
    """One IAM policy statement allowing `actions` on exactly `resources` (when `condition` holds)."""
    statement: dict[str, object] = {"Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = {op: dict(keys) for op, keys in condition.items()}
    return statement


def policy_document(statements: list[dict[str, object]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def security_group(
    name: str,
    vpc_id: pulumi.Input[str],
    description: str,
    ingress: Sequence[Ingress],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
) -> aws.ec2.SecurityGroup:
    """A group admitting exactly `ingress`, with all outbound traffic allowed (see security_group_with_rules)."""
    return security_group_with_rules(name, vpc_id, description, ingress, tags, parent)[0]


def security_group_with_rules(
    name: str,
    vpc_id: pulumi.Input[str],
    description: str,
    ingress: Sequence[Ingress],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
) -> tuple[aws.ec2.SecurityGroup, dict[str, aws.vpc.SecurityGroupIngressRule]]:
    """A group admitting exactly `ingress`, with all outbound traffic allowed, and its ingress rules by name.

    Outbound is open: packages at boot, and the mesh (not the network) decides what a service may
    call. Rules are separate resources, never inline, so adding one never replaces the group; a
    rule's CIDR or port changes in place (only `security_group_id` and the kind of source force a
    new rule: terraform-provider-aws internal/service/ec2/vpc_security_group_ingress_rule.go).
    """
    child = pulumi.ResourceOptions(parent=parent)
    group = aws.ec2.SecurityGroup(
        f"{name}-sg", vpc_id=vpc_id, description=description, tags={**tags, "Name": f"{name}-sg"}, opts=child
    )
    rules = {rule.rule: ingress_rule(name, group.id, rule, parent) for rule in ingress}
    aws.vpc.SecurityGroupEgressRule(
        f"{name}-egress",
        security_group_id=group.id,
        cidr_ipv4="0.0.0.0/0",
        ip_protocol="-1",
        description="All outbound traffic",
        opts=child,
    )
    return group, rules


def ingress_rule(
    name: str,
    group_id: pulumi.Input[str],
    rule: Ingress,
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
) -> aws.vpc.SecurityGroupIngressRule:
    """The rule `<name>-<rule.rule>` of the group `group_id`: declared on its own when it must wait
    for something (a rule that opens an API only once it is safe to)."""
    return aws.vpc.SecurityGroupIngressRule(
        f"{name}-{rule.rule}",
        security_group_id=group_id,
        referenced_security_group_id=group_id if rule.source_group_id == SELF else rule.source_group_id,
        cidr_ipv4=rule.cidr,
        ip_protocol=rule.protocol,
        from_port=rule.port,
        to_port=rule.port,
        description=rule.description,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )


SERF_LAN_PORT = 8301


def gossip_ingress(members: pulumi.Input[str]) -> list[Ingress]:
    """LAN gossip (TCP and UDP) from the mesh's members: every agent and server speaks it."""
    return [
        Ingress(f"gossip-{protocol}", protocol, SERF_LAN_PORT, "Consul LAN gossip from mesh members", members)
        for protocol in ("tcp", "udp")
    ]


def admin_ingress(rule: str, port: int, what: str, admin_cidrs: Sequence[str]) -> list[Ingress]:
    """`port` from each admin network; nothing when there are none."""
    return [
        Ingress(f"{rule}-{i}", "tcp", port, f"{what} from an admin network", cidr=c) for i, c in enumerate(admin_cidrs)
    ]


def ubuntu_image_output(parent: pulumi.Resource | None) -> pulumi.Output[str]:
    """The newest Ubuntu 24.04 LTS image from Canonical as of this run: only ever a pin's candidate."""
    return aws.ec2.get_ami_output(
        most_recent=True,
        owners=[UBUNTU_OWNER],
        filters=[{"name": "name", "values": [UBUNTU_IMAGE]}],
        opts=pulumi.InvokeOutputOptions(parent=parent),
    ).id


def pinned_image(name: str, parent: pulumi.Resource | None, ami_id: str | None = None, generation: int = 0) -> ImagePin:
    """The image a set of VMs boots, chosen once (see components/image.py).

    `ami_id` (config amiId) names the image outright, and changing it moves the VMs; otherwise the
    newest Ubuntu LTS of the first run is kept until `generation` (config imageGeneration) changes.
    """
    candidate: pulumi.Input[str] = ami_id if ami_id else ubuntu_image_output(parent)
    return ImagePin(
        name,
        candidate=candidate,
        explicit=bool(ami_id),
        generation=generation,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def instance(
    name: str,
    *,
    ami_id: pulumi.Input[str] | None,
    instance_type: str,
    profile: aws.iam.InstanceProfile,
    key_name: str | None,
    user_data_base64: pulumi.Output[str],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
    subnet_id: pulumi.Input[str] | None = None,
    security_group_ids: Sequence[pulumi.Input[str]] = (),
    network_interface_id: pulumi.Input[str] | None = None,
    depends_on: Sequence[pulumi.Resource] = (),
) -> aws.ec2.Instance:
    """An Ubuntu 24.04 VM with IMDSv2 required and an encrypted root volume.

    Cloud-init runs once per instance, so new user data means a new instance
    (user_data_replace_on_change), never a VM whose files and state disagree. User data holds no
    secret (the VMs log in at boot), so it is not marked secret: `pulumi preview --diff` shows it.

    `ami_id` None pins an image for this VM alone (`<name>-image`); a stack passes its own pin's
    image_id. Placement is either a subnet and security groups (a new network interface comes and
    goes with the instance) or `network_interface_id`, an interface that outlives the instance:
    its address and security groups stay when the instance is replaced. An interface can be the
    primary of one instance only, so such an instance is deleted before its replacement is created
    (delete_before_replace).
    """
    ami = ami_id if ami_id is not None else pinned_image(f"{name}-image", parent).image_id
    if (network_interface_id is None) == (subnet_id is None):
        raise ValueError(f"{name}: give either subnet_id (and security groups) or network_interface_id")
    placement: dict[str, object] = (
        {
            "primary_network_interface": aws.ec2.InstancePrimaryNetworkInterfaceArgs(
                network_interface_id=network_interface_id, delete_on_termination=False
            )
        }
        if network_interface_id is not None
        else {"subnet_id": subnet_id, "vpc_security_group_ids": list(security_group_ids)}
    )
    return aws.ec2.Instance(
        f"{name}-instance",
        ami=ami,
        instance_type=instance_type,
        iam_instance_profile=profile.name,
        key_name=key_name,
        user_data_base64=user_data_base64,
        user_data_replace_on_change=True,
        metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
            http_tokens="required", http_endpoint="enabled", http_put_response_hop_limit=1
        ),
        root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(encrypted=True, volume_type="gp3"),
        tags={**tags, "Name": name},
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on),
            delete_before_replace=network_interface_id is not None,
        ),
        **placement,  # type: ignore[arg-type]
    )


# The root device of Canonical's Ubuntu images (ec2.UBUNTU_IMAGE), which a launch template must name
# to set its volume's encryption (ec2.instance sets it through root_block_device instead).
ROOT_DEVICE = "/dev/sda1"
METADATA_OPTIONS = {"http_tokens": "required", "http_endpoint": "enabled", "http_put_response_hop_limit": 1}


def launch_template(
    name: str,
    *,
    ami_id: pulumi.Input[str],
    instance_type: str,
    profile: aws.iam.InstanceProfile,
    key_name: str | None,
    user_data_base64: pulumi.Output[str],
    security_group_ids: Sequence[pulumi.Input[str]],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
) -> aws.ec2.LaunchTemplate:
    """What every VM of a group boots from: the VM `instance` makes, as a template (IMDSv2 required,
    an encrypted root volume, the user data every VM of the service shares).

    A change makes a new version of the same template (no input of a template forces a new one but
    its name), which the group picks up by an instance refresh (auto_scaling_group)."""
    return aws.ec2.LaunchTemplate(
        f"{name}-template",
        image_id=ami_id,
        instance_type=instance_type,
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
        key_name=key_name,
        user_data=user_data_base64,
        vpc_security_group_ids=list(security_group_ids),
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(**METADATA_OPTIONS),  # type: ignore[arg-type]
        block_device_mappings=[
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=ROOT_DEVICE,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    encrypted="true", volume_type="gp3", delete_on_termination="true"
                ),
            )
        ],
        tag_specifications=[
            aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags={**tags, "Name": name})
            for kind in ("instance", "volume")
        ],
        tags={**tags, "Name": name},
        update_default_version=True,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )


def auto_scaling_group(
    name: str,
    *,
    group_name: pulumi.Input[str],
    template: aws.ec2.LaunchTemplate,
    size: int,
    subnet_ids: pulumi.Input[Sequence[pulumi.Input[str]]],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
) -> aws.autoscaling.Group:
    """`size` VMs from `template`, spread over `subnet_ids`, with the mesh's lifecycle hooks (groups.py).

    The group names its template's latest version, so a new recipe changes the group's
    launch_template and the provider starts an instance refresh (rolling, launch before terminate);
    a new size changes only the capacity. It is created without waiting for capacity: its VMs wait
    for the servers and their logins, and the mesh gate (MeshReady) waits for them in the mesh."""
    return aws.autoscaling.Group(
        f"{name}-group",
        name=group_name,
        min_size=size,
        max_size=size,
        desired_capacity=size,
        vpc_zone_identifiers=subnet_ids,
        launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
            id=template.id, version=template.latest_version.apply(str)
        ),
        instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
            strategy="Rolling",
            preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                min_healthy_percentage=groups.MIN_HEALTHY_PERCENTAGE,
                max_healthy_percentage=groups.MAX_HEALTHY_PERCENTAGE,
                instance_warmup=str(groups.INSTANCE_WARMUP_SECONDS),
            ),
        ),
        initial_lifecycle_hooks=[
            aws.autoscaling.GroupInitialLifecycleHookArgs(
                name=hook.name,
                lifecycle_transition=hook.transition,
                heartbeat_timeout=hook.heartbeat_seconds,
                default_result=hook.default_result,
            )
            for hook in groups.HOOKS
        ],
        health_check_type="EC2",
        wait_for_capacity_timeout="0",
        # How many VMs are in service, launching (waiting for the mesh) and leaving, in CloudWatch at
        # one-minute granularity, at no charge (EC2 Auto Scaling user guide, "Amazon CloudWatch
        # metrics for Amazon EC2 Auto Scaling": group metrics).
        enabled_metrics=list(groups.GROUP_METRICS),
        metrics_granularity="1Minute",
        tags=[
            aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=False)
            for key, value in sorted({**tags, "Name": name}.items())
        ],
        # The hooks are declared with the group so that its first VMs launch with them, and the
        # provider takes them at creation only: any change to them forces a new group
        # (terraform-provider-aws internal/service/autoscaling/group.go, initial_lifecycle_hook
        # ForceNew), deleted before its replacement because the program names it (the bridge's
        # nameRequiresDeleteBeforeReplace): every VM of the service gone at once. So a later
        # release's change to them is ignored on an existing group instead of replacing it.
        opts=pulumi.ResourceOptions(
            parent=parent, depends_on=list(depends_on), ignore_changes=["initialLifecycleHooks"]
        ),
    )
