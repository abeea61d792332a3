"""A service of many VMs (config `services.<name>.instances`): what its EC2 Auto Scaling group is.

Pure data and names, no resources: components/ec2.py declares the launch template and the group,
components/mesh_vm.py decides when. Every VM of a group completes the group's lifecycle hooks
itself (scripts/mesh-lifecycle.sh), so the group counts a VM as launched only once its service and
sidecar pass in Consul, and lets one go only once it has left the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

# The hooks' names, as the VMs' lifecycle.env names them (components/templates/lifecycle.env.j2).
LAUNCH_HOOK = "mesh-ready"
TERMINATE_HOOK = "mesh-drain"
# The launching hook waits for the first boot: packages, the login (which waits for the servers
# and the roles on a first `up`), the agent and Envoy. When it runs out, ABANDON terminates the VM
# and the group launches another: a VM that never joins never counts. (Amazon EC2 Auto Scaling user
# guide, "Amazon EC2 Auto Scaling lifecycle hooks": heartbeat 30-7200 s, default result.)
LAUNCH_HEARTBEAT_SECONDS = 1800
# The terminating hook leaves the time to drain Envoy, leave Consul and log out; CONTINUE lets the
# VM go when it cannot complete the hook itself (it is gone from the mesh's point of view anyway).
TERMINATE_HEARTBEAT_SECONDS = 300
# An instance refresh replaces a group's VMs a batch at a time, launching the new ones before it
# terminates the old ones (MaxHealthyPercentage 200) and never going under the full count
# (MinHealthyPercentage 100): a group of one keeps its VM until the new one is in the mesh.
# (EC2 Auto Scaling API reference, RefreshPreferences.)
MIN_HEALTHY_PERCENTAGE = 100
MAX_HEALTHY_PERCENTAGE = 200
# Seconds after a new VM completes its launching hook before the refresh counts it: it is in the
# mesh already (the hook waits for that), so only the time for other Envoys to learn of it.
INSTANCE_WARMUP_SECONDS = 30
# The random suffix of a group's name (mesh_vm.declare_group_name), in bytes; twice as many hex digits.
GROUP_SUFFIX_BYTES = 4
# EC2 Auto Scaling: a group's name is 1-255 characters (CreateAutoScalingGroup, AutoScalingGroupName).
GROUP_NAME_LIMIT = 255


@dataclass(frozen=True)
class Hook:
    """One lifecycle hook of every group."""

    name: str
    transition: str
    heartbeat_seconds: int
    default_result: str


HOOKS = (
    Hook(LAUNCH_HOOK, "autoscaling:EC2_INSTANCE_LAUNCHING", LAUNCH_HEARTBEAT_SECONDS, "ABANDON"),
    Hook(TERMINATE_HOOK, "autoscaling:EC2_INSTANCE_TERMINATING", TERMINATE_HEARTBEAT_SECONDS, "CONTINUE"),
)


def group_name(prefix: str, service: str, suffix: str) -> str:
    """The group's name: the stack's login prefix (identity.login_prefix), the service and a random
    suffix chosen once. Explicit rather than Pulumi's auto-name because the VMs must know it before
    the group exists (their launch template names it), and random because two stacks of the same
    name in one account (two Pulumi backends or organisations) must not share a group."""
    name = f"{prefix}-{service}-{suffix}"
    if len(name) > GROUP_NAME_LIMIT:
        raise ValueError(f"group name {name!r} is longer than {GROUP_NAME_LIMIT} characters")
    return name


def group_arn_pattern(partition: str, region: str, account: str, name: str) -> str:
    """The ARN of the group named `name`, whatever its id: the only group whose hooks the VMs' role
    may complete (Service Authorization Reference, Amazon EC2 Auto Scaling: autoScalingGroup is
    arn:${Partition}:autoscaling:${Region}:${Account}:autoScalingGroup:${GroupId}:autoScalingGroupName/${GroupFriendlyName})."""
    return f"arn:{partition}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{name}"


# The group's metrics it reports: its size, and its VMs by lifecycle state (a VM stays Pending until
# it completes the launching hook, Terminating until it has left the mesh).
GROUP_METRICS = (
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
)
# What a group's VM calls on its own group (scripts/mesh-lifecycle.sh): completing its lifecycle
# actions, nothing else (it never extends a heartbeat: the hooks' timeouts cover a boot and a leave).
HOOK_ACTIONS = ["autoscaling:CompleteLifecycleAction"]


def subnet_share(instances: int, subnets: int) -> int:
    """The most VMs of a group one subnet holds: the group balances its VMs across its zones."""
    return -(-instances // subnets)
