"""Services of many instances (config `instances`): an Auto Scaling group from a launch template,
under Pulumi's mocks; the pure parts (names, ARNs, subnet shares) without them."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest

from components import groups, lifecycle
from components.identity import login_prefix
from components.render import READY, unwrap, user_data_by_vm
from components.userdata import decode_user_data, unpack_cloud_config
from tests.lifecycle import first_up, named, plan, stack_program
from tests.mocks import STACK, MeshMocks, MockedTestCase, demo_config, value
from tests.test_program import ADMIN, run_main

GROUP = "aws:autoscaling/group:Group"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
SERVER_READY = "pulumi-python:dynamic/consul-tproxy-vms:ServerReady"
MESH_READY = "pulumi-python:dynamic/consul-tproxy-vms:MeshReady"


def grouped_config(instances: int = 3) -> dict[str, Any]:
    """The demo stack with api run as a group of `instances` VMs; web stays one VM of its own."""
    config = demo_config()
    services = config["services"]
    return {**config, "services": {**services, "api": {**services["api"], "instances": instances}}}


def files_of(user_data_base64: str) -> dict[str, str]:
    return unpack_cloud_config(decode_user_data(user_data_base64))


class AGroupOfThree(MockedTestCase):
    config = grouped_config(3)

    async def test_the_service_is_a_group_from_a_launch_template_over_every_subnet(self) -> None:
        outputs = await value(run_main())
        (template,) = self.mocks.of_type(TEMPLATE)
        (group,) = self.mocks.of_type(GROUP)
        assert (template.name, group.name) == ("api-template", "api-group")
        # No instance of its own for api; web keeps its one VM.
        assert [r.name for r in self.mocks.of_type(INSTANCE) if not r.name.startswith("consul-server")] == [
            "web-instance"
        ]
        inputs = unwrap(group.inputs)
        assert (inputs["minSize"], inputs["maxSize"], inputs["desiredCapacity"]) == (3, 3, 3)
        assert inputs["vpcZoneIdentifiers"] == outputs["subnetIds"] and len(inputs["vpcZoneIdentifiers"]) == 2
        # The group names the template's latest version: a new version is a change of the group's
        # launch_template, which starts an instance refresh (rolling, launch before terminate).
        assert inputs["launchTemplate"] == {"id": "api-template-id", "version": "1"}
        assert inputs["instanceRefresh"] == {
            "strategy": "Rolling",
            "preferences": {"minHealthyPercentage": 100, "maxHealthyPercentage": 200, "instanceWarmup": "30"},
        }
        hooks = {h["name"]: h for h in inputs["initialLifecycleHooks"]}
        assert hooks["mesh-ready"]["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
        assert hooks["mesh-ready"]["defaultResult"] == "ABANDON"
        assert hooks["mesh-drain"]["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
        assert hooks["mesh-drain"]["defaultResult"] == "CONTINUE"
        assert inputs["waitForCapacityTimeout"] == "0"
        assert "GroupPendingInstances" in inputs["enabledMetrics"] and inputs["metricsGranularity"] == "1Minute"

    async def test_the_launch_template_boots_like_a_lone_vm(self) -> None:
        await value(run_main())
        (template,) = self.mocks.of_type(TEMPLATE)
        inputs = unwrap(template.inputs)
        assert inputs["metadataOptions"] == {
            "httpTokens": "required",
            "httpEndpoint": "enabled",
            "httpPutResponseHopLimit": 1,
        }
        (root,) = inputs["blockDeviceMappings"]
        assert root == {
            "deviceName": "/dev/sda1",
            "ebs": {"encrypted": "true", "volumeType": "gp3", "deleteOnTermination": "true"},
        }
        assert inputs["updateDefaultVersion"] is True
        assert {spec["resourceType"] for spec in inputs["tagSpecifications"]} == {"instance", "volume"}
        assert len(inputs["vpcSecurityGroupIds"]) == 2

    async def test_its_vms_may_complete_the_hooks_of_their_own_group_only(self) -> None:
        outputs = await value(run_main())
        group_name = outputs["services"]["api"]["groupName"]
        assert group_name.startswith(f"{login_prefix(STACK)}-api-") and len(group_name.rsplit("-", 1)[1]) == 8
        (policy,) = [r for r in self.mocks.of_type(ROLE_POLICY) if r.name == "api-lifecycle"]
        document = json.loads(unwrap(policy.inputs["policy"]))
        assert document["Statement"] == [
            {
                "Effect": "Allow",
                "Action": ["autoscaling:CompleteLifecycleAction"],
                "Resource": [
                    f"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/{group_name}"
                ],
            }
        ]
        (group,) = self.mocks.of_type(GROUP)
        assert unwrap(group.inputs["name"]) == group_name
        # A lone VM's role has no such right.
        assert not [r for r in self.mocks.of_type(ROLE_POLICY) if r.name == "web-lifecycle"]

    async def test_its_user_data_names_the_group_and_runs_the_hooks(self) -> None:
        outputs = await value(run_main())
        files = files_of(user_data_by_vm(self.mocks)["api"])
        settings = files["/etc/consul.d/lifecycle.env"]
        assert f'LIFECYCLE_GROUP="{outputs["services"]["api"]["groupName"]}"\n' in settings
        assert 'LAUNCH_HOOK="mesh-ready"\n' in settings and 'TERMINATE_HOOK="mesh-drain"\n' in settings
        for path in (
            "/usr/local/sbin/mesh-lifecycle",
            "/etc/systemd/system/mesh-lifecycle-ready.service",
            "/etc/systemd/system/mesh-lifecycle-watch.service",
        ):
            assert path in files, path
        assert "leave_on_terminate = true" in files["/etc/consul.d/consul.hcl"]
        # A lone VM gets none of it: its user data (and so its instance) is as before groups existed.
        web = files_of(user_data_by_vm(self.mocks)["web"])
        assert not [p for p in web if "lifecycle" in p]
        assert "leave_on_terminate" not in web["/etc/consul.d/consul.hcl"]

    async def test_outputs_and_the_mesh_gate_count_the_groups_vms(self) -> None:
        outputs = await value(run_main())
        api = outputs["services"]["api"]
        assert set(api) == {"instances", "groupName", "virtualHostname", "port"}
        assert api["instances"] == 3
        assert outputs["services"]["web"]["instances"] == 1 and "instanceId" in outputs["services"]["web"]
        (gate,) = self.mocks.of_type(MESH_READY)
        inputs = unwrap(gate.inputs)
        # Any three passing api nodes will do (the group's VMs are not known to the stack); web's own.
        assert inputs["expected"] == {"api": 3, "web": 1}
        assert inputs["instances"]["api"] == [] and inputs["instances"]["web"] == ["web-instance-id"]
        assert self.mocks.of_type(READY)
        # Only the group's VMs of the current recipe count: the node metadata they register with.
        (meta,) = inputs["node_meta"].values()
        assert list(inputs["node_meta"]) == ["api"]
        assert meta["tproxy-vms-group"] == outputs["services"]["api"]["groupName"]
        hcl = files_of(user_data_by_vm(self.mocks)["api"])["/etc/consul.d/consul.hcl"]
        assert f'tproxy-vms-recipe = "{meta["tproxy-vms-recipe"]}"' in hcl


@pytest.mark.parametrize("count", [1, 2, 7])
def test_the_count_never_reaches_the_user_data(count: int) -> None:
    """A new count changes the group's capacity alone: the launch template (its user data) is the same."""
    from components.spec import load_spec
    from components.userdata import Login, VmRecipe, render_cloud_config

    spec = load_spec({**grouped_config(count), "adminCidrs": [ADMIN]})
    baseline = load_spec({**grouped_config(3), "adminCidrs": [ADMIN]})
    login = Login("p", "p", ("https://10.0.0.1:8501",))

    def rendered(service: Any) -> str:
        recipe = VmRecipe(service, "dc1", "1.22.1", "1.35.3", ("10.0.0.1",), login, group_name="p-api-00000000")
        return render_cloud_config(recipe)

    assert rendered(spec.services["api"]) == rendered(baseline.services["api"])


def test_group_names_and_arns() -> None:
    assert groups.group_name("consul-tproxy-vms-dev", "api", "0a1b2c3d") == "consul-tproxy-vms-dev-api-0a1b2c3d"
    with pytest.raises(ValueError, match="longer than 255"):
        groups.group_name("p" * 250, "api", "0a1b2c3d")
    assert (
        groups.group_arn_pattern("aws", "eu-west-1", "123456789012", "g")
        == "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:autoScalingGroupName/g"
    )


@pytest.mark.parametrize(("instances", "subnets", "share"), [(1, 2, 1), (2, 2, 1), (3, 2, 2), (5, 3, 2), (100, 3, 34)])
def test_a_subnet_holds_its_share_of_a_group(instances: int, subnets: int, share: int) -> None:
    assert groups.subnet_share(instances, subnets) == share


def test_a_group_boots_in_parallel_with_the_servers_and_after_them_on_an_upgrade() -> None:
    """As a lone VM (tests/test_program.py): the template and the group need nothing from Consul and
    wait for the last server's own gate alone, so servers go first on an upgrade."""
    record = first_up(grouped_config(3)).record
    for name in ("api-template", "api-group"):
        resource = named(record, name)
        needed = lifecycle.closure(record, resource.urn)
        consul_side = [u for u in needed if lifecycle.type_of(u).startswith(("consul:", "pulumi:providers:consul"))]
        assert consul_side == [] and lifecycle.type_of(resource.urn) in (TEMPLATE, GROUP), name
        gates = sorted(lifecycle.name_of(u) for u in needed if lifecycle.type_of(u) == SERVER_READY)
        assert gates == ["consul-server-0-ready"], name


def test_the_diagram_says_how_many_vms_share_a_services_address() -> None:
    from components.render import mermaid
    from components.spec import load_spec

    mmd = mermaid(load_spec({**grouped_config(3), "adminCidrs": [ADMIN]}), "dev")
    assert 'api["api<br/>http://api.virtual.consul (3 VMs, Auto Scaling group)"]' in mmd
    assert 'web["web<br/>http://web.virtual.consul"]' in mmd


# --- day two: what the engine would do (the lifecycle simulator, tests/lifecycle.py) ----------------


def test_a_new_count_changes_the_groups_capacity_alone() -> None:
    result = plan(grouped_config(3), grouped_config(5))
    assert result.replaced == [] and result.created == [] and result.deleted == []
    assert sorted(result.updated) == ["api-group", "mesh-ready"]  # the gate waits for 5 now
    assert result.step("api-group").paths == ("desiredCapacity", "maxSize", "minSize")
    assert result.refreshed == []


def test_a_new_recipe_refreshes_the_group_after_the_servers_replacing_no_group() -> None:
    after = {**grouped_config(3), "consulVersion": "1.22.2"}
    result = plan(grouped_config(3), after)
    assert "api-group" not in result.replaced and "api-template" not in result.replaced
    assert {"api-template", "api-group"} <= set(result.updated) and result.refreshed == ["api-group"]
    # The gate waits again, for the refresh's VMs: the recipe in its node metadata is new.
    assert "node_meta.api.tproxy-vms-recipe" in result.step("mesh-ready").paths
    assert result.step("api-group").paths == ("launchTemplate.version",)
    # Servers first: the template's new version waits for the replaced server's gate.
    waves = result.order()
    server = lifecycle.urn_named(result.after, "consul-server-0-instance")
    assert waves[server] < waves[lifecycle.urn_named(result.after, "api-template")]


def test_a_release_that_changes_the_hooks_replaces_no_group() -> None:
    """The hooks force a new group (delete-first: every VM at once); an existing group keeps its own."""
    longer = (replace(groups.HOOKS[0], heartbeat_seconds=3600), groups.HOOKS[1])
    before = first_up(grouped_config(3))
    with mock.patch.object(groups, "HOOKS", longer):
        result = lifecycle.plan_after(before, stack_program(grouped_config(3)), MeshMocks())
    assert result.replaced == [] and result.updated == []


def test_a_lone_vm_becomes_a_group_created_before_the_vm_goes() -> None:
    result = plan(demo_config(), grouped_config(2))
    assert {"api-template", "api-group", "api-group-id", "api-lifecycle"} <= set(result.created)
    assert "api-instance" in result.deleted and "web-instance" not in result.deleted + result.replaced
    # Deletes come after every create and update: the group is there before the VM leaves.
    waves = result.order()
    assert (
        waves[lifecycle.urn_named(result.after, "api-group")]
        < waves[lifecycle.urn_named(result.before, "api-instance")]
    )


def test_no_metadata_key_of_ours_is_one_consul_reserves() -> None:
    """Consul reserves meta keys starting with "consul-" (agent/structs/structs.go
    MetaKeyReservedPrefix): an agent with such a node_meta key refuses to start, a config entry with
    such a Meta is refused."""
    from components.intentions import GENERIC_ENTRY_META
    from components.userdata import GROUP_META_KEY, RECIPE_META_KEY

    for key in (GROUP_META_KEY, RECIPE_META_KEY, *GENERIC_ENTRY_META):
        assert not key.startswith("consul-") and re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", key), key
