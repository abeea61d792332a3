"""The lifecycle simulator on launch templates and Auto Scaling groups (components/lifecycle.py).

Each rule is shown on plain data (Registration records, as the engine records them) and then
through the simulator's mock engine on a small program, so a day-two scenario of a service's group
passes for the provider's reasons: terraform-provider-aws internal/service/ec2/ec2_launch_template.go
(a changed recipe is a new version of the same template) and internal/service/autoscaling/group.go
(a new version is an update of the group that starts an instance refresh; a new count is a plain
update; only the name and the initial lifecycle hooks replace it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pytest

from components import lifecycle
from components.lifecycle import (
    GROUP,
    INSTANCE_REFRESH,
    LAUNCH_TEMPLATE,
    REPLACE,
    SAME,
    UNKNOWN,
    UPDATE,
    Options,
    Registration,
)
from components.render import PlanMocks

SUBNETS = ("subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb")
LAUNCHING = {
    "name": "launching",
    "lifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
    "heartbeatTimeout": 600,
    "defaultResult": "ABANDON",
}
TERMINATING = {
    "name": "terminating",
    "lifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
    "heartbeatTimeout": 300,
    "defaultResult": "CONTINUE",
}
REFRESH = {"strategy": "Rolling", "preferences": {"minHealthyPercentage": 100, "maxHealthyPercentage": 200}}


def registration(name: str, typ: str, inputs: dict[str, Any]) -> Registration:
    return Registration(
        urn=f"urn:pulumi:test::p::{typ}::{name}",
        type=typ,
        name=name,
        parent="",
        custom=True,
        provider="",
        inputs=inputs,
        dependencies=frozenset(),
        property_dependencies={},
        options=Options(),
    )


TEMPLATE = registration(
    "api",
    LAUNCH_TEMPLATE,
    {
        "imageId": "ami-0123456789abcdef0",
        "instanceType": "t3.small",
        "userData": "I2Nsb3VkLWNvbmZpZw==",
        "iamInstanceProfile": {"arn": "arn:aws:iam::123456789012:instance-profile/api"},
        "vpcSecurityGroupIds": ["sg-1"],
        "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1, "httpEndpoint": "enabled"},
        "tags": {"Name": "api"},
        "updateDefaultVersion": True,
    },
)
GROUP_INPUTS: dict[str, Any] = {
    "name": "p-dev-api",
    "minSize": 3,
    "maxSize": 3,
    "desiredCapacity": 3,
    "vpcZoneIdentifiers": list(SUBNETS),
    "launchTemplate": {"id": "lt-0123", "version": 1},
    "instanceRefresh": REFRESH,
    "initialLifecycleHooks": [LAUNCHING, TERMINATING],
    "healthCheckType": "EC2",
    "waitForCapacityTimeout": "0",
    "tags": [{"key": "Name", "value": "api", "propagateAtLaunch": True}],
}
GROUP_RECORD = registration("api", GROUP, GROUP_INPUTS)


def step_of(old: Registration, **changes: Any) -> lifecycle.Step:
    return lifecycle.decide(old, registration(old.name, old.type, {**old.inputs, **changes}))


# --- plain data ------------------------------------------------------------------------------------


def test_a_new_recipe_is_a_new_template_version_and_an_instance_refresh_of_the_group() -> None:
    template = step_of(TEMPLATE, userData="I2Nsb3VkLWNvbmZpZyAjIG5ldw==", imageId="ami-0fedcba9876543210")
    assert (template.kind, template.paths) == (UPDATE, ("imageId", "userData"))
    # ec2_launch_template.go: CreateLaunchTemplateVersion makes version 2, update_default_version
    # makes it the default.
    new_inputs = {**TEMPLATE.inputs, "userData": "I2Nsb3VkLWNvbmZpZyAjIG5ldw=="}
    versions = lifecycle.recomputed_outputs(
        LAUNCH_TEMPLATE, TEMPLATE.inputs, new_inputs, {"latestVersion": 1, "defaultVersion": 1}
    )
    assert versions == {"latestVersion": 2, "defaultVersion": 2}
    # The group's launch_template.version follows: an update (not ForceNew) that refreshes.
    group = step_of(GROUP_RECORD, launchTemplate={"id": "lt-0123", "version": 2})
    assert (group.kind, group.paths, group.reason) == (UPDATE, ("launchTemplate.version",), INSTANCE_REFRESH)
    assert group.label == "update (instance refresh)"


def test_a_new_count_is_a_plain_update_of_the_group() -> None:
    step = step_of(GROUP_RECORD, minSize=5, maxSize=5, desiredCapacity=5)
    assert (step.kind, step.paths, step.reason) == (UPDATE, ("desiredCapacity", "maxSize", "minSize"), "")
    assert step.label == UPDATE


def test_other_zones_are_an_update_of_the_group_without_a_refresh() -> None:
    # group.go: vpc_zone_identifier is Optional+Computed, not ForceNew (UpdateAutoScalingGroup).
    step = step_of(GROUP_RECORD, vpcZoneIdentifiers=[*SUBNETS, "subnet-0ccccccccccccccccc"])
    assert (step.kind, step.paths, step.reason) == (UPDATE, ("vpcZoneIdentifiers",), "")


def test_a_new_group_name_or_new_initial_hooks_replace_the_group() -> None:
    renamed = step_of(GROUP_RECORD, name="p-dev-api2")
    assert (renamed.kind, renamed.paths) == (REPLACE, ("name",))
    # group.go: initial_lifecycle_hook is ForceNew (the set and each field): a longer heartbeat
    # on the launching hook replaces the group, with every instance in it.
    longer = step_of(GROUP_RECORD, initialLifecycleHooks=[{**LAUNCHING, "heartbeatTimeout": 900}, TERMINATING])
    assert (longer.kind, longer.paths) == (REPLACE, ("initialLifecycleHooks.0.heartbeatTimeout",))
    fewer = step_of(GROUP_RECORD, initialLifecycleHooks=[LAUNCHING])
    assert (fewer.kind, fewer.paths) == (REPLACE, ("initialLifecycleHooks",))


def test_instance_refresh_triggers_and_its_absence() -> None:
    retagged = [{"key": "Name", "value": "api-2", "propagateAtLaunch": True}]
    assert step_of(GROUP_RECORD, tags=retagged).reason == ""
    # A trigger names a Terraform attribute ("tag" is Pulumi's `tags`).
    triggered = registration("api", GROUP, {**GROUP_INPUTS, "instanceRefresh": {**REFRESH, "triggers": ["tag"]}})
    assert step_of(triggered, tags=retagged).reason == INSTANCE_REFRESH
    assert step_of(triggered, desiredCapacity=4).reason == ""
    # Without an instance_refresh block the provider starts none: a new version reaches new instances only.
    bare = registration("api", GROUP, {k: v for k, v in GROUP_INPUTS.items() if k != "instanceRefresh"})
    step = step_of(bare, launchTemplate={"id": "lt-0123", "version": 2})
    assert (step.kind, step.reason) == (UPDATE, "")
    # Changing the refresh preferences changes no instance.
    calmer = {**REFRESH, "preferences": {"minHealthyPercentage": 90, "maxHealthyPercentage": 200}}
    assert step_of(GROUP_RECORD, instanceRefresh=calmer).reason == ""


def test_template_versions_on_plain_data() -> None:
    outputs = {"latestVersion": 4, "defaultVersion": 4}

    def recomputed(preview: bool = False, **changes: Any) -> dict[str, Any]:
        new = {**TEMPLATE.inputs, **changes}
        return lifecycle.recomputed_outputs(LAUNCH_TEMPLATE, TEMPLATE.inputs, new, outputs, preview)

    assert recomputed(instanceType="t3.medium") == {"latestVersion": 5, "defaultVersion": 5}
    # Tags go through UpdateTags: no version, but the plan shows the version unknown
    # (CustomizeDiff ComputedIf("latest_version") does not skip tags).
    assert recomputed(tags={"Name": "api", "team": "x"}) == {}
    assert recomputed(True, tags={"Name": "api", "team": "x"}) == {"latestVersion": UNKNOWN, "defaultVersion": UNKNOWN}
    assert recomputed(True, instanceType="t3.medium") == {"latestVersion": UNKNOWN, "defaultVersion": UNKNOWN}
    # Without update_default_version the default stays where it was.
    assert lifecycle.recomputed_outputs(
        LAUNCH_TEMPLATE,
        {**TEMPLATE.inputs, "updateDefaultVersion": False},
        {**TEMPLATE.inputs, "updateDefaultVersion": False, "keyName": "ops"},
        outputs,
    ) == {"latestVersion": 5}
    assert step_of(TEMPLATE, name="other").kind == REPLACE
    assert step_of(TEMPLATE, tags={"Name": "api", "team": "x"}).kind == UPDATE


@pytest.mark.parametrize(
    ("typ", "inputs", "updates", "replaces"),
    [
        (
            "aws:autoscaling/lifecycleHook:LifecycleHook",
            {
                "name": "draining",
                "autoscalingGroupName": "g",
                "lifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
            },
            {"heartbeatTimeout": 900, "defaultResult": "ABANDON", "autoscalingGroupName": "g2"},
            {"name": "draining2"},
        ),
        (
            "aws:autoscaling/policy:Policy",
            {"name": "cpu", "autoscalingGroupName": "g", "policyType": "TargetTrackingScaling"},
            {"targetTrackingConfiguration": {"targetValue": 60}, "estimatedInstanceWarmup": 120},
            {"name": "cpu2", "autoscalingGroupName": "g2"},
        ),
    ],
    ids=["lifecycle-hook", "policy"],
)
def test_hooks_and_policies_replace_only_on_their_force_new_inputs(
    typ: str, inputs: dict[str, Any], updates: dict[str, Any], replaces: dict[str, Any]
) -> None:
    old = registration("r", typ, inputs)
    for key, value in updates.items():
        assert step_of(old, **{key: value}).kind == UPDATE, key
    for key, value in replaces.items():
        assert step_of(old, **{key: value}).kind == REPLACE, key


def test_a_name_shared_by_a_template_and_a_group_is_told_apart_by_type() -> None:
    record = {r.urn: r for r in (TEMPLATE, GROUP_RECORD)}
    assert lifecycle.urn_named(record, "api", GROUP) == GROUP_RECORD.urn
    with pytest.raises(ValueError, match="2 resources named 'api'"):
        lifecycle.urn_named(record, "api")


# --- through the mock engine -----------------------------------------------------------------------


def service_program(
    user_data: str = "I2Nsb3VkLWNvbmZpZw==",
    instances: int = 3,
    subnets: Sequence[str] = SUBNETS,
    group_name: str = "p-dev-api",
    template_tags: dict[str, str] | None = None,
) -> Callable[[], Any]:
    """A service's template and group, wired as components/mesh_vm.py wires them."""

    def run() -> Any:
        template = aws.ec2.LaunchTemplate(
            "api-template",
            image_id="ami-0123456789abcdef0",
            instance_type="t3.small",
            user_data=user_data,
            metadata_options={"http_tokens": "required", "http_put_response_hop_limit": 1, "http_endpoint": "enabled"},
            tags=template_tags or {"Name": "api"},
            update_default_version=True,
        )
        group = aws.autoscaling.Group(
            "api-group",
            name=group_name,
            min_size=instances,
            max_size=instances,
            desired_capacity=instances,
            vpc_zone_identifiers=list(subnets),
            launch_template={"id": template.id, "version": template.latest_version},
            instance_refresh={"strategy": "Rolling", "preferences": {"min_healthy_percentage": 100}},
            initial_lifecycle_hooks=[
                {"name": h["name"], "lifecycle_transition": h["lifecycleTransition"]} for h in (LAUNCHING, TERMINATING)
            ],
            wait_for_capacity_timeout="0",
            opts=pulumi.ResourceOptions(depends_on=[template]),
        )
        return {"version": template.latest_version, "group": group.name}

    return run


def test_a_new_recipe_updates_the_template_and_refreshes_the_group_replacing_nothing() -> None:
    plan = lifecycle.simulate(service_program(), service_program(user_data="I2Nsb3VkLWNvbmZpZyAjMg=="), PlanMocks)
    assert plan.changed() == {"replaced": [], "updated": ["api-group", "api-template"], "created": [], "deleted": []}
    assert plan.step("api-template").paths == ("userData",)
    assert plan.step("api-group").paths == ("launchTemplate.version",)  # only because version 2 exists now
    assert plan.refreshed == ["api-group"]
    group = plan.after[lifecycle.urn_named(plan.after, "api-group")]
    assert group.inputs["launchTemplate"]["version"] == 2
    assert "update (instance refresh) aws:autoscaling/group:Group api-group" in plan.summary()
    # The template goes first: the group's new input is its output.
    waves = plan.order()
    assert waves[lifecycle.urn_named(plan.after, "api-template")] < waves[group.urn]
    # Preview cannot know the new version, and says so the same way.
    preview = lifecycle.simulate(
        service_program(), service_program(user_data="I2Nsb3VkLWNvbmZpZyAjMg=="), PlanMocks, preview=True
    )
    assert preview.changed() == plan.changed() and preview.refreshed == ["api-group"]


def test_a_first_up_gives_the_group_version_one() -> None:
    record = lifecycle.run(service_program(), PlanMocks()).record
    assert record[lifecycle.urn_named(record, "api-group")].inputs["launchTemplate"]["version"] == 1


def test_a_new_count_or_new_zones_update_the_group_alone_without_a_refresh() -> None:
    more = lifecycle.simulate(service_program(), service_program(instances=5), PlanMocks)
    assert more.changed() == {"replaced": [], "updated": ["api-group"], "created": [], "deleted": []}
    assert more.refreshed == [] and more.step("api-group").paths == ("desiredCapacity", "maxSize", "minSize")
    zones = lifecycle.simulate(service_program(), service_program(subnets=SUBNETS[:1]), PlanMocks)
    assert zones.changed() == {"replaced": [], "updated": ["api-group"], "created": [], "deleted": []}
    assert zones.refreshed == []


def test_a_new_group_name_replaces_the_group_and_keeps_the_template() -> None:
    plan = lifecycle.simulate(service_program(), service_program(group_name="p-dev-api-2"), PlanMocks)
    assert plan.changed() == {"replaced": ["api-group"], "updated": [], "created": [], "deleted": []}
    assert plan.step("api-group").paths == ("name",)


def test_new_template_tags_make_preview_show_a_refresh_that_up_does_not_do() -> None:
    """ec2_launch_template.go: tags alone create no version, but the plan marks latest_version
    unknown on any change but the name, description and default-version settings: preview shows
    the group refreshing, `up` leaves it alone."""
    before, after = service_program(), service_program(template_tags={"Name": "api", "team": "payments"})
    up = lifecycle.simulate(before, after, PlanMocks)
    assert up.changed() == {"replaced": [], "updated": ["api-template"], "created": [], "deleted": []}
    assert up.step("api-group").kind == SAME
    preview = lifecycle.simulate(before, after, PlanMocks, preview=True)
    assert preview.updated == ["api-group", "api-template"] and preview.refreshed == ["api-group"]


def test_the_order_of_a_set_is_no_change() -> None:
    # group.go: vpc_zone_identifier, initial_lifecycle_hook and tag are TypeSet; so are the
    # template's vpc_security_group_ids (ec2_launch_template.go).
    reordered = step_of(
        GROUP_RECORD, vpcZoneIdentifiers=list(reversed(SUBNETS)), initialLifecycleHooks=[TERMINATING, LAUNCHING]
    )
    assert reordered.kind == SAME
    template = registration("api", LAUNCH_TEMPLATE, {**TEMPLATE.inputs, "vpcSecurityGroupIds": ["sg-1", "sg-2"]})
    assert step_of(template, vpcSecurityGroupIds=["sg-2", "sg-1"]).kind == SAME
    new = {**template.inputs, "vpcSecurityGroupIds": ["sg-2", "sg-1"]}
    assert lifecycle.recomputed_outputs(LAUNCH_TEMPLATE, template.inputs, new, {"latestVersion": 1}) == {}
    # A list stays a list: termination_policies' order is the policy.
    ordered = registration("api", GROUP, {**GROUP_INPUTS, "terminationPolicies": ["OldestInstance", "Default"]})
    assert step_of(ordered, terminationPolicies=["Default", "OldestInstance"]).kind == UPDATE


def test_a_group_named_by_the_program_is_deleted_before_its_replacement() -> None:
    """pulumi-terraform-bridge nameRequiresDeleteBeforeReplace: with `name` set by the program, a
    replacement is delete-before-replace, renamed or not: every instance goes before new ones come."""
    assert step_of(GROUP_RECORD, name="p-dev-api2").provider_deletes_first
    assert step_of(GROUP_RECORD, initialLifecycleHooks=[LAUNCHING]).provider_deletes_first
    autonamed = registration("api", GROUP, {k: v for k, v in GROUP_INPUTS.items() if k != "name"})
    step = step_of(autonamed, initialLifecycleHooks=[LAUNCHING])
    assert step.kind == REPLACE and not step.provider_deletes_first
    plan = lifecycle.simulate(service_program(), service_program(group_name="p-dev-api-2"), PlanMocks)
    assert plan.deletes_first(lifecycle.urn_named(plan.after, "api-group"))


def test_how_each_step_goes_for_the_plan_text() -> None:
    recipe = lifecycle.simulate(service_program(), service_program(user_data="I2Nsb3VkLWNvbmZpZyAjMg=="), PlanMocks)
    after = recipe.after
    assert recipe.how(lifecycle.urn_named(after, "api-group")) == "instance refresh"
    assert recipe.how(lifecycle.urn_named(after, "api-template")) == ""
    renamed = lifecycle.simulate(service_program(), service_program(group_name="p-dev-api-2"), PlanMocks)
    assert renamed.how(lifecycle.urn_named(renamed.after, "api-group")) == "delete-before-replace"
