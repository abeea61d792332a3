"""The lifecycle simulator itself (components/lifecycle.py): its rules, on plain data and on small programs.

The whole stack's scenarios are in tests/test_day_two.py; here each engine rule the simulator
follows is shown on its own, so a scenario that passes does so for the right reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_consul as consul
import pytest

from components import ec2, lifecycle
from components.lifecycle import CREATE, REPLACE, SAME, UNKNOWN, UPDATE, Options, Registration
from components.render import PlanMocks

SUBNET = "subnet-0aaaaaaaaaaaaaaaa"


def registration(name: str, typ: str, inputs: dict[str, Any], **kwargs: Any) -> Registration:
    defaults: dict[str, Any] = {
        "urn": f"urn:pulumi:test::p::{typ}::{name}",
        "type": typ,
        "name": name,
        "parent": "",
        "custom": True,
        "provider": "",
        "inputs": inputs,
        "dependencies": frozenset(),
        "property_dependencies": {},
        "options": Options(),
    }
    return Registration(**{**defaults, **kwargs})


INSTANCE = "aws:ec2/instance:Instance"


def step_kind(old: Registration, **changes: Any) -> str:
    """The step of `old`'s instance after `changes` to its inputs (options=... sets its options)."""
    options = changes.pop("options", Options())
    return lifecycle.decide(old, registration(old.name, old.type, {**old.inputs, **changes}, options=options)).kind


def test_diff_paths_finds_nested_changes_and_treats_unknown_as_changed() -> None:
    old = {"ami": "ami-1", "tags": {"Name": "a", "x": "1"}, "sgs": ["sg-1", "sg-2"], "root": {"encrypted": True}}
    new = {"ami": "ami-1", "tags": {"Name": "b", "x": "1"}, "sgs": ["sg-1", "sg-3"], "root": {"encrypted": True}}
    assert lifecycle.diff_paths(old, new) == {"tags.Name", "sgs.1"}
    assert lifecycle.diff_paths(old, {**old, "ami": UNKNOWN}) == {"ami"}
    assert lifecycle.diff_paths(old, {**old, "sgs": ["sg-1"]}) == {"sgs"}
    assert lifecycle.diff_paths(old, {k: v for k, v in old.items() if k != "tags"}) == {"tags"}


def test_paths_match_as_pulumi_writes_them() -> None:
    assert lifecycle.path_matches("tags.Name", "tags")
    assert lifecycle.path_matches("tags.Name", 'tags["Name"]')
    assert lifecycle.path_matches("rootBlockDevice", "rootBlockDevice.encrypted")  # the whole block changed
    assert lifecycle.path_matches("sources.0.action", "sources[0]")
    assert not lifecycle.path_matches("tags.Name", "tagsAll")
    assert lifecycle.path_matches("anything", "*")


def test_instance_user_data_forces_replacement_only_with_replace_on_change() -> None:
    old = registration("vm", INSTANCE, {"ami": "ami-1", "userDataBase64": "a", "userDataReplaceOnChange": True})
    new = registration("vm", INSTANCE, {**old.inputs, "userDataBase64": "b"})
    assert lifecycle.decide(old, new).kind == REPLACE
    quiet = {**old.inputs, "userDataReplaceOnChange": False}
    assert (
        lifecycle.decide(
            registration("vm", INSTANCE, quiet), registration("vm", INSTANCE, {**quiet, "userDataBase64": "b"})
        ).kind
        == UPDATE
    )
    # instance_type and vpc_security_group_ids change in place; subnet_id does not.
    assert (
        lifecycle.decide(old, registration("vm", INSTANCE, {**old.inputs, "instanceType": "t3.large"})).kind == UPDATE
    )
    assert lifecycle.decide(old, registration("vm", INSTANCE, {**old.inputs, "subnetId": SUBNET})).kind == REPLACE


def test_options_are_honoured() -> None:
    old = registration("vm", INSTANCE, {"ami": "ami-1", "tags": {"a": "1"}})
    ignoring = Options(ignore_changes=("ami",))
    assert (
        lifecycle.decide(old, registration("vm", INSTANCE, {**old.inputs, "ami": "ami-2"}, options=ignoring)).kind
        == SAME
    )
    on_tags = Options(replace_on_changes=("tags",))
    step = lifecycle.decide(old, registration("vm", INSTANCE, {**old.inputs, "tags": {"a": "2"}}, options=on_tags))
    assert (step.kind, step.paths) == (REPLACE, ("tags.a",))
    moved = registration("vm", INSTANCE, old.inputs, provider="urn:pulumi:test::p::pulumi:providers:aws::other")
    assert lifecycle.decide(old, moved).kind == REPLACE
    assert lifecycle.decide(old, old, replaced_by_provider=True).kind == REPLACE
    assert lifecycle.decide(None, old).kind == CREATE


def test_a_type_the_table_does_not_know_is_judged_pessimistically() -> None:
    typ = "aws:s3/bucket:Bucket"
    assert typ not in lifecycle.FORCE_NEW
    old = registration("b", typ, {"tags": {"a": "1"}})
    assert lifecycle.decide(old, registration("b", typ, {"tags": {"a": "2"}})).kind == REPLACE


@pytest.mark.parametrize(
    ("typ", "inputs", "updates", "replaces"),
    [
        # Issue 12's types (components/identity.py, mesh_vm.py, consul_server.py), as their providers say.
        (
            "consul:index/aclAuthMethod:AclAuthMethod",
            {"name": "p-agent", "type": "aws-iam", "configJson": "{}", "description": "d"},
            {"configJson": '{"BoundIAMPrincipalARNs": []}', "description": "e"},
            {"name": "p-agent2", "type": "jwt"},
        ),
        (
            "consul:index/aclBindingRule:AclBindingRule",
            {"authMethod": "p-agent", "bindType": "role", "bindName": "r", "description": "d"},
            {"bindName": "r2", "description": "e", "selector": "x"},
            {"authMethod": "p-service", "bindType": "service"},
        ),
        (
            "consul:index/aclRole:AclRole",
            {"name": "p-api-agent", "policies": ["p-api-agent"], "description": "d"},
            {"name": "p-api-agent2", "policies": ["p-api-agent", "other"], "description": "e"},
            {"namespace": "ns", "partition": "pt"},
        ),
        (
            "consul:index/keys:Keys",
            {"keys": [{"path": "consul-tproxy-vms/p/gossip-key", "value": "k"}]},
            {"keys": [{"path": "consul-tproxy-vms/p2/gossip-key", "value": "k2"}]},
            {"datacenter": "dc2", "namespace": "ns", "partition": "pt"},
        ),
        (
            "aws:ssm/parameter:Parameter",
            {"name": "/p/gossip-key", "type": "SecureString", "value": "v", "description": "d"},
            {"value": "v2", "type": "String", "description": "e", "keyId": "arn:aws:kms:k", "tier": "Advanced"},
            {"name": "/p/other", "dataType": "aws:ec2:image"},
        ),
        (
            "aws:kms/key:Key",
            {"description": "d", "enableKeyRotation": True, "deletionWindowInDays": 7},
            {"description": "e", "enableKeyRotation": False, "deletionWindowInDays": 30, "policy": "{}"},
            {"keyUsage": "SIGN_VERIFY", "customerMasterKeySpec": "RSA_2048", "multiRegion": True},
        ),
    ],
    ids=["auth-method", "binding-rule", "role", "keys", "ssm-parameter", "kms-key"],
)
def test_the_new_types_replace_only_on_their_force_new_inputs(
    typ: str, inputs: dict[str, Any], updates: dict[str, Any], replaces: dict[str, Any]
) -> None:
    old = registration("r", typ, inputs)
    for key, value in updates.items():
        assert step_kind(old, **{key: value}) == UPDATE, key
    for key, value in replaces.items():
        assert step_kind(old, **{key: value}) == REPLACE, key


def test_an_ssm_parameter_is_replaced_when_its_tier_goes_down_only() -> None:
    # ssm/parameter.go: customdiff.ForceNewIfChange("tier", Advanced -> Standard).
    typ = "aws:ssm/parameter:Parameter"
    standard = registration("p", typ, {"name": "/p", "type": "SecureString", "tier": "Standard"})
    advanced = registration("p", typ, {**standard.inputs, "tier": "Advanced"})
    assert step_kind(standard, tier="Advanced") == UPDATE
    step = lifecycle.decide(advanced, registration("p", typ, standard.inputs))
    assert (step.kind, step.paths) == (REPLACE, ("tier",))


def test_delete_waves_delete_dependents_children_and_users_of_a_provider_first() -> None:
    vpc = registration("vpc", "aws:ec2/vpc:Vpc", {})
    subnet = registration("subnet", "aws:ec2/subnet:Subnet", {}, property_dependencies={"vpcId": frozenset({vpc.urn})})
    provider = registration("consul", "pulumi:providers:consul", {}, dependencies=frozenset({subnet.urn}))
    token = registration("token", "consul:index/aclToken:AclToken", {}, provider=provider.urn)
    component = registration("vm", "p:index:MeshVm", {}, custom=False)
    child = registration("vm-sg", "aws:ec2/securityGroup:SecurityGroup", {}, parent=component.urn)
    record = {r.urn: r for r in (vpc, subnet, provider, token, component, child)}
    rank = lifecycle.delete_rank(lifecycle.delete_waves(record))
    assert rank[token.urn] < rank[provider.urn] < rank[subnet.urn] < rank[vpc.urn]
    assert rank[child.urn] < rank[component.urn]
    assert lifecycle.depends_transitively(record, token.urn, vpc.urn)


# --- small programs under the simulator ------------------------------------------------------------


def vm_program(
    ami: str = "ami-0000000000000001",
    user_data: str = "Zm9v",
    ignore_ami: bool = False,
    data: bool = True,
    protect_data: bool = False,
) -> Callable[[], Any]:
    """An instance with a data volume attached: the pattern the servers use."""

    def run() -> Any:
        instance = aws.ec2.Instance(
            "vm-instance",
            ami=ami,
            instance_type="t3.small",
            subnet_id=SUBNET,
            user_data_base64=user_data,
            user_data_replace_on_change=True,
            opts=pulumi.ResourceOptions(ignore_changes=["ami"] if ignore_ami else None),
        )
        if data:
            volume = aws.ebs.Volume(
                "vm-data",
                availability_zone="us-east-1a",
                size=10,
                encrypted=True,
                opts=pulumi.ResourceOptions(protect=protect_data, retain_on_delete=True),
            )
            aws.ec2.VolumeAttachment("vm-attach", device_name="/dev/sdf", volume_id=volume.id, instance_id=instance.id)
        return {"id": instance.id}

    return run


def test_a_replaced_instance_cascades_through_its_new_id() -> None:
    plan = lifecycle.simulate(vm_program(), vm_program(ami="ami-0000000000000002"), PlanMocks)
    assert plan.replaced == ["vm-attach", "vm-instance"]
    assert plan.step("vm-instance").paths == ("ami",)
    assert plan.step("vm-attach").paths == ("instanceId",)  # only because the instance's id is new
    assert plan.step("vm-data").kind == SAME
    preview = lifecycle.simulate(vm_program(), vm_program(ami="ami-0000000000000002"), PlanMocks, preview=True)
    assert preview.changed() == plan.changed()


def test_ignore_changes_keeps_the_instance_and_so_its_attachment() -> None:
    plan = lifecycle.simulate(
        vm_program(ignore_ami=True), vm_program(ami="ami-0000000000000002", ignore_ami=True), PlanMocks
    )
    assert plan.changed() == {"replaced": [], "updated": [], "created": [], "deleted": []}


def test_protected_and_retained_resources_are_reported() -> None:
    plan = lifecycle.simulate(vm_program(protect_data=True), vm_program(data=False), PlanMocks)
    assert plan.deleted == ["vm-attach", "vm-data"]
    assert plan.blocked() == ["vm-data"]  # the engine refuses to delete a protected resource
    assert plan.retained() == ["vm-data"]
    rank = lifecycle.delete_rank(plan.delete_waves())
    # The attachment goes first: it needs the volume (and the instance, which stays).
    assert rank[lifecycle.urn_named(plan.before, "vm-attach")] < rank[lifecycle.urn_named(plan.before, "vm-data")]


def pinned_program(generation: int = 0, ami_id: str | None = None) -> Callable[[], Any]:
    def run() -> Any:
        image = ec2.pinned_image("image", None, ami_id=ami_id, generation=generation)
        instance = aws.ec2.Instance("vm-instance", ami=image.image_id, instance_type="t3.small", subnet_id=SUBNET)
        return {"ami": instance.ami}

    return run


NEWER = "ami-0ffffffffffffff01"


def test_the_image_pin_ignores_a_newer_release_until_the_generation_moves() -> None:
    newer_release = lifecycle.simulate(pinned_program(), pinned_program(), PlanMocks, latest_image=NEWER)
    assert newer_release.changed() == {"replaced": [], "updated": [], "created": [], "deleted": []}
    assert newer_release.after[lifecycle.urn_named(newer_release.after, "vm-instance")].inputs["ami"] != NEWER

    next_generation = lifecycle.simulate(pinned_program(), pinned_program(generation=1), PlanMocks, latest_image=NEWER)
    assert next_generation.updated == ["image"] and next_generation.replaced == ["vm-instance"]
    assert next_generation.after[lifecycle.urn_named(next_generation.after, "vm-instance")].inputs["ami"] == NEWER


def test_an_explicit_image_moves_the_pin_when_it_changes() -> None:
    first, second = "ami-0aaaaaaaaaaaaaaa1", "ami-0aaaaaaaaaaaaaaa2"
    same = lifecycle.simulate(pinned_program(ami_id=first), pinned_program(ami_id=first), PlanMocks, latest_image=NEWER)
    assert same.replaced == []
    moved = lifecycle.simulate(pinned_program(ami_id=first), pinned_program(ami_id=second), PlanMocks)
    assert moved.replaced == ["vm-instance"] and moved.updated == ["image"]


def provider_program(ami: str) -> Callable[[], Any]:
    """A consul provider configured from an instance's address: unknown in preview once it is replaced."""

    def run() -> Any:
        instance = aws.ec2.Instance("server-instance", ami=ami, instance_type="t3.small", subnet_id=SUBNET)
        provider = consul.Provider("consul", address=instance.private_ip.apply(lambda ip: f"{ip}:8501"), token="t")
        consul.AclPolicy(
            "policy",
            name="p",
            rules='node_prefix "" { policy = "read" }',
            opts=pulumi.ResourceOptions(provider=provider),
        )
        return {}

    return run


def test_a_provider_configured_from_a_replaced_resource_makes_preview_disagree_with_the_update() -> None:
    before, after = provider_program("ami-0000000000000001"), provider_program("ami-0000000000000002")
    update = lifecycle.simulate(before, after, PlanMocks)
    preview = lifecycle.simulate(before, after, PlanMocks, preview=True)
    assert update.changed() == {"replaced": ["server-instance"], "updated": ["consul"], "created": [], "deleted": []}
    # In preview the provider's address is unknown: every resource it serves shows a change.
    assert preview.updated == ["consul", "policy"]
    assert preview.step("policy").paths == ("<provider configuration unknown>",)


class Holder(pulumi.ComponentResource):
    """A component with an AWS child and a Consul child (like a MeshVm)."""

    def __init__(
        self, name: str, consul_provider: pulumi.ProviderResource | None, opts: pulumi.ResourceOptions
    ) -> None:
        super().__init__("test:index:Holder", name, None, opts)
        aws.ec2.Vpc(f"{name}-vpc", cidr_block="10.0.0.0/16", opts=pulumi.ResourceOptions(parent=self))
        consul.AclPolicy(f"{name}-policy", rules="", opts=pulumi.ResourceOptions(parent=self, provider=consul_provider))
        self.register_outputs({})


def test_a_provider_given_to_a_component_holds_back_every_child_until_it_exists() -> None:
    """The Python SDK registers a component once each provider in its `providers` has an id
    (pulumi/runtime/resource.py prepare_resource, _create_provider_ref), and a child waits for its
    parent's URN: the schedule built from the recorded requests shows it."""

    def program() -> None:
        gate = aws.ec2.Vpc("gate", cidr_block="10.1.0.0/16")
        provider = consul.Provider("consul", address="10.0.0.1:8501", opts=pulumi.ResourceOptions(depends_on=[gate]))
        Holder("whole", None, pulumi.ResourceOptions(providers=[provider]))
        Holder("children", provider, pulumi.ResourceOptions())

    record = lifecycle.run(program, PlanMocks()).record
    times = lifecycle.schedule(record, lambda reg: 100.0 if reg.name == "gate" else 1.0)

    def start(name: str) -> float:
        return times[lifecycle.urn_named(record, name)][0]

    assert start("whole-vpc") >= 100 and start("whole-policy") >= 100
    assert start("children-vpc") == 0 and start("children-policy") >= 100
    chain = lifecycle.critical_chain(record, times, lifecycle.urn_named(record, "whole-vpc"))
    assert [lifecycle.name_of(u) for u in chain] == ["gate", "consul", "whole", "whole-vpc"]
