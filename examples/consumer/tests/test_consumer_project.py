"""The consumer project under Pulumi mocks, on top of the outputs the mesh program itself exports.

Run from this folder's venv (`venv/bin/python -m pytest`) or from the consul-tproxy-vms checkout.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
import pytest
from consul_tproxy_vms.identity import agent_role_name, iam_path, login_prefix
from consul_tproxy_vms.render import SECRET_MARKER, unwrap, user_data_by_vm
from consul_tproxy_vms.userdata import decode_user_data, unpack_cloud_config
from consumer import check_against_mesh, load_consumer_spec
from consumer_harness import MESH_STACK, Run, dev_stack_config, run_consumer

DEV = dev_stack_config()
PREFIX = login_prefix("dev")


def fails(config: dict[str, Any], outputs: dict[str, Any]) -> tuple[str, Run]:
    """The message a run with `config` fails with, and what it had declared."""
    with pytest.raises(pulumi.RunError) as caught:
        run_consumer(config, outputs)
    return str(caught.value), caught.value.run  # type: ignore[attr-defined]


def files_of(run: Run) -> dict[str, str]:
    return unpack_cloud_config(decode_user_data(user_data_by_vm(run.mocks)["reports"]))


def test_the_dev_stack_adds_one_mesh_vm_that_web_may_call(demo_outputs: dict[str, Any]) -> None:
    run = run_consumer(DEV, demo_outputs)
    assert run.mocks.references == [MESH_STACK]
    assert run.outputs["service"]["virtualHostname"] == "reports.virtual.consul"
    assert run.outputs["service"]["port"] == 9400
    assert run.outputs["intentions"] == [{"source": "web", "destination": "reports", "action": "allow"}]
    (instance,) = run.mocks.of_type("aws:ec2/instance:Instance")
    assert instance.inputs["subnetId"] == demo_outputs["subnetIds"][0]
    assert demo_outputs["meshSecurityGroupId"] in instance.inputs["vpcSecurityGroupIds"]
    # Its roles carry the mesh stack's login prefix, its IAM role lives under the mesh's IAM path.
    roles = {r.inputs["name"] for r in run.mocks.of_type("consul:index/aclRole:AclRole")}
    assert agent_role_name(PREFIX, "reports") in roles
    (role,) = run.mocks.of_type("aws:iam/role:Role")
    assert role.inputs["path"] == iam_path("dev") == demo_outputs["consulLogin"]["iamPath"]
    # Every Consul object goes through the provider built from the reference.
    for resource in run.mocks.declared():
        if resource.typ.startswith("consul:index/"):
            assert (resource.provider or "").endswith("$pulumi:providers:consul::consul::consul-id"), resource.name


def test_a_mesh_that_created_its_servers_means_cloud_auto_join(demo_outputs: dict[str, Any]) -> None:
    run = run_consumer(DEV, demo_outputs)
    names = {p.name for p in run.mocks.of_type("aws:iam/rolePolicy:RolePolicy")}
    assert "reports-auto-join" in names
    hcl = files_of(run)["/etc/consul.d/consul.hcl"]
    assert f'retry_join  = ["{demo_outputs["consulRetryJoin"][0]}"]' in hcl
    assert demo_outputs["consulRetryJoin"][0].startswith("provider=aws")


def test_a_mesh_on_an_existing_cluster_joins_by_address_without_auto_join(existing_outputs: dict[str, Any]) -> None:
    assert "consulServers" not in existing_outputs
    run = run_consumer({**DEV, "meshCreatesServers": "false"}, existing_outputs)
    names = {p.name for p in run.mocks.of_type("aws:iam/rolePolicy:RolePolicy")}
    assert "reports-auto-join" not in names
    assert 'retry_join  = ["10.0.1.10"]' in files_of(run)["/etc/consul.d/consul.hcl"]


@pytest.mark.parametrize(
    ("creates", "outputs_fixture", "expected"),
    [
        (
            "false",
            "demo_outputs",
            "meshCreatesServers: false disagrees with mesh stack .* set meshCreatesServers to true",
        ),
        (
            "true",
            "existing_outputs",
            "meshCreatesServers: true disagrees with mesh stack .* set meshCreatesServers to false",
        ),
    ],
)
def test_mesh_creates_servers_must_agree_with_the_mesh_stack(
    creates: str, outputs_fixture: str, expected: str, request: pytest.FixtureRequest
) -> None:
    message, run = fails({**DEV, "meshCreatesServers": creates}, request.getfixturevalue(outputs_fixture))
    assert re.search(expected, message), message
    # The check runs on the reference's outputs, and every resource waits for it.
    assert run.mocks.references == [MESH_STACK] and run.mocks.declared() == []


def test_allow_from_must_name_services_of_the_mesh_stack(demo_outputs: dict[str, Any]) -> None:
    message, run = fails({**DEV, "allowFrom": ["web", "wbe", "billing"]}, demo_outputs)
    assert "allowFrom[1]: 'wbe' is not a service of mesh stack" in message and "did you mean 'web'?" in message
    assert "allowFrom[2]: 'billing' is not a service of mesh stack" in message and "its services: api, web" in message
    assert "allowFrom[0]" not in message
    assert run.mocks.declared() == []


def test_the_new_service_must_not_be_one_of_the_mesh_stacks(demo_outputs: dict[str, Any]) -> None:
    message, run = fails({**DEV, "service": "api", "allowFrom": ["web"]}, demo_outputs)
    assert "service: 'api' is already a service of mesh stack" in message
    assert run.mocks.declared() == []


def test_a_mesh_stack_name_that_does_not_match_its_login_output_is_refused(demo_outputs: dict[str, Any]) -> None:
    message, run = fails({**DEV, "meshStack": "organization/consul-tproxy-vms/prod"}, demo_outputs)
    assert "its consulLogin output has prefix 'consul-tproxy-vms-dev'" in message
    assert run.mocks.declared() == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"port": "0"}, "port: 0 is out of range: a TCP port is 1-65535"),
        ({"port": None}, "port: is missing"),
        ({"port": "http"}, 'port: "http" must be an integer'),
        ({"port": "8500"}, "port: 8500 is reserved on mesh VMs"),
        ({"service": "Reports!"}, 'service: "Reports!" is not a valid service name'),
        ({"command": "python3 app.py"}, 'command: "python3 app.py" must be a one-line command'),
        ({"allowFrom": ["Web!"]}, 'allowFrom[0]: "Web!" is not a service name'),
        ({"allowFrom": ["reports"]}, 'allowFrom[0]: "reports" is the new service itself'),
        ({"allowFrom": "web"}, 'allowFrom: "web" must be a list'),
        ({"adminCidrs": ["10.0.0.1/8"]}, 'adminCidrs[0]: "10.0.0.1/8" is not a CIDR'),
        ({"adminCidrs": ["2001:db8::/32"]}, 'adminCidrs[0]: "2001:db8::/32" is an IPv6 network'),
        ({"adminCidrs": ["deployer"]}, 'adminCidrs[0]: "deployer" is not a CIDR'),
        ({"meshCreatesServers": "yes"}, 'meshCreatesServers: "yes" must be true or false'),
        ({"meshStack": "consul-tproxy-vms/dev"}, 'meshStack: "consul-tproxy-vms/dev" is not <organization>'),
    ],
)
def test_bad_config_fails_before_any_resource(
    change: dict[str, Any], expected: str, demo_outputs: dict[str, Any]
) -> None:
    config = {k: v for k, v in {**DEV, **change}.items() if v is not None}
    message, run = fails(config, demo_outputs)
    assert message.startswith("invalid stack config for consul-tproxy-vms-consumer:\n")
    assert expected in message, message
    assert len(message.splitlines()) == 2, message  # one message for one mistake
    assert run.mocks.resources == []  # not even the stack reference


def test_a_service_of_many_instances_is_a_group_over_the_mesh_stacks_subnets(demo_outputs: dict[str, Any]) -> None:
    run = run_consumer({**DEV, "instances": "3"}, demo_outputs)
    assert run.outputs["service"]["instances"] == 3 and "groupName" in run.outputs["service"]
    assert run.mocks.of_type("aws:ec2/instance:Instance") == []
    (group,) = run.mocks.of_type("aws:autoscaling/group:Group")
    assert unwrap(group.inputs["vpcZoneIdentifiers"]) == demo_outputs["subnetIds"]
    assert "/etc/consul.d/lifecycle.env" in files_of(run)
    message, _ = fails({**DEV, "instances": 0}, demo_outputs)
    assert "instances: 0 is out of range" in message, message


def test_good_settings_pass(demo_outputs: dict[str, Any]) -> None:
    run = run_consumer(
        {**DEV, "port": 9500, "command": "/usr/bin/python3 -m http.server 9500", "adminCidrs": ["198.51.100.7/32"]},
        demo_outputs,
    )
    assert run.outputs["service"]["port"] == 9500
    assert "ExecStart=/usr/bin/python3 -m http.server 9500" in "\n".join(files_of(run).values())
    ssh = [r for r in run.mocks.declared() if r.name == "reports-ssh-0"]
    assert [r.inputs["cidrIpv4"] for r in ssh] == ["198.51.100.7/32"]


def test_secrets_from_the_reference_stay_secret_and_out_of_the_user_data(demo_outputs: dict[str, Any]) -> None:
    run = run_consumer(DEV, demo_outputs)
    (provider,) = run.mocks.of_type("pulumi:providers:consul")
    assert SECRET_MARKER in json.dumps(provider.inputs["token"])
    assert unwrap(provider.inputs["token"]) == demo_outputs["consulManagementToken"]
    (instance,) = run.mocks.of_type("aws:ec2/instance:Instance")
    assert SECRET_MARKER not in json.dumps(instance.inputs["userDataBase64"])
    user_data = decode_user_data(user_data_by_vm(run.mocks)["reports"])
    for secret in (demo_outputs["consulManagementToken"], demo_outputs["consulGossipKey"], "PRIVATE KEY"):
        assert secret not in user_data
    assert not re.search(r"^\s*(encrypt|node_name)\s*=", files_of(run)["/etc/consul.d/consul.hcl"], re.M)
    assert "secret-not-rendered" not in json.dumps(run.outputs)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("allowfrom", 'allowfrom: "[\\"web\\"]" is not a known key (did you mean \'allowFrom\'?)'),
        ("meshstack", "is not a known key (did you mean 'meshStack'?)"),
        ("consulToken", 'consulToken: "<secret>" is not a known key'),
    ],
)
def test_an_unknown_key_is_refused_by_name_before_any_resource(
    key: str, expected: str, demo_outputs: dict[str, Any]
) -> None:
    # Read by name alone, a misspelled key was ignored: allowfrom left web's default in place.
    message, run = fails({**DEV, key: ["web"]}, demo_outputs)
    assert message.startswith("invalid stack config for consul-tproxy-vms-consumer:\n")
    assert f"  - {key}: " in message and expected in message, message
    assert run.mocks.resources == []


def test_a_service_under_a_mesh_services_node_prefix_is_refused(demo_outputs: dict[str, Any]) -> None:
    message, run = fails({**DEV, "service": "web-reports"}, demo_outputs)
    assert (
        "service: 'web-reports' starts with the name of service web and '-': its nodes "
        "(web-reports-<instance id>) would fall under web's node prefix (web-)"
    ) in message, message
    assert run.mocks.declared() == []


def test_a_mesh_service_under_the_new_services_node_prefix_is_refused() -> None:
    spec = load_consumer_spec({**DEV, "service": "api"})
    outputs = {"services": {"api-reports": {}, "web": {}}, "consulLogin": {}}
    found = [p for p in check_against_mesh(spec, outputs) if p.startswith("service:")]
    assert found == [
        "service: 'api': mesh stack 'organization/consul-tproxy-vms/dev' has service 'api-reports', which starts "
        "with the name of service api and '-': its nodes (api-reports-<instance id>) would fall under api's node "
        "prefix (api-), which api's VMs may write"
    ]
