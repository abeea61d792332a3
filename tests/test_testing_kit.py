"""The public test kit (consul_tproxy_vms.testing): offline, settled, validated like `pulumi up`."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import consul_tproxy_vms.program
import pytest
import yaml
from consul_tproxy_vms.testing import (
    GROUP,
    INSTANCE,
    INTENTIONS,
    LAUNCH_TEMPLATE,
    MESH_VM,
    SECRET_PLACEHOLDER,
    MeshSpecError,
    StackMocks,
    UnansweredInvoke,
    answer_offerings,
    graviton,
    run_stack,
)

from tests.mocks import CONSUL_TOKEN, GOSSIP_KEY, demo_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "user-stack" / "test_my_stack.py"
EXISTING = {
    **demo_config(),
    "adminCidrs": [],
    "consulHttpAddr": "https://10.0.1.10:8501",
    "consulRetryJoin": ["10.0.1.10"],
    "consulToken": CONSUL_TOKEN,
    "consulGossipKey": GOSSIP_KEY,
    "vpcId": "vpc-0aaaaaaaaaaaaaaaa",
    "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"],
}


def test_demo_config_runs_to_completion():
    result = run_stack(demo_config())
    vms = result.of_type(MESH_VM)
    assert [vm.name for vm in vms] == ["api", "web"]
    # Settled: each MeshVm's own instance is there, and the outputs are plain values.
    for vm in vms:
        instance = result.named(f"{vm.name}-instance")
        assert (instance.type, instance.parent, instance.parent_type) == (INSTANCE, vm.name, MESH_VM)
        assert instance in result.children(vm.name)
    api = result.outputs["services"]["api"]
    assert api["instanceId"] == "api-instance-id"
    assert api["virtualHostname"] == "api.virtual.consul"
    assert api["port"] == 9091
    assert api["privateIp"].startswith("10.42.")
    assert result.outputs["intentions"] == [{"source": "web", "destination": "api", "action": "allow"}]
    assert result.outputs["consulManagementToken"].startswith(SECRET_PLACEHOLDER)
    assert [r.inputs["name"] for r in result.of_type(INTENTIONS)] == ["api"]
    assert set(result.vms()) == {"api", "web", "consul-server-0"}
    assert result.spec.admin_cidrs == ("192.0.2.1/32",)
    assert result.warnings == ()
    assert "/etc/consul.d/service-web.hcl" in result.files("web")
    assert result.user_data("web").startswith("#cloud-config")
    assert isinstance(result.outputs["services"]["web"]["port"], int)


def test_nothing_goes_online(monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError(f"went online: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(http.client.HTTPConnection, "connect", offline)
    monkeypatch.setattr(consul_tproxy_vms.program, "deployer_cidr", offline)
    result = run_stack(demo_config())
    assert len(result.of_type(MESH_VM)) == 2
    assert "192.0.2.1/32" in result.spec.admin_cidrs


def test_existing_cluster_secrets_are_placeholders():
    result = run_stack(EXISTING)
    assert result.of_type("consul-tproxy-vms:index:ConsulServer") == []
    assert result.outputs["consulManagementToken"] == "secret-not-rendered:consulToken"
    assert result.outputs["consulGossipKey"] == "secret-not-rendered:consulGossipKey"
    everything = repr([r.inputs for r in result.resources]) + repr(result.outputs)
    assert CONSUL_TOKEN not in everything
    assert GOSSIP_KEY not in everything
    for vm in result.vms():
        assert SECRET_PLACEHOLDER not in result.user_data(vm), vm


def test_bad_config_raises_naming_the_key_and_leaks_nothing():
    mocks = StackMocks()
    bad = {**demo_config(), "services": {"web": {"port": 99999}}}
    with pytest.raises(MeshSpecError, match=r"services\.web\.port"):
        run_stack(bad, mocks=mocks)
    assert mocks.resources == []
    first = run_stack({**demo_config(), "services": {"solo": {"port": 8000}}, "intentions": []})
    second = run_stack(demo_config())
    assert [vm.name for vm in first.of_type(MESH_VM)] == ["solo"]
    assert [vm.name for vm in second.of_type(MESH_VM)] == ["api", "web"]
    assert not [r for r in second.resources if r.name.startswith("solo")]
    assert len(second.resources) == len(run_stack(demo_config()).resources)


def test_zone_count_checked_against_the_mocks_zones():
    with pytest.raises(MeshSpecError, match="zoneCount: 3 is more than the 2 availability zones"):
        run_stack({**demo_config(), "zoneCount": 3}, mocks=StackMocks(zones=("eu-west-1a", "eu-west-1b")))
    assert len(run_stack({**demo_config(), "zoneCount": 3}).of_type("aws:ec2/subnet:Subnet")) == 3


def test_zones_and_architectures_come_from_the_mocks_answers_as_from_aws():
    # One zone offers no t3 (as in us-east-1): the subnets skip it, and three zones are too many.
    mocks = StackMocks(offered_in={"t3.small": ["us-east-1a", "us-east-1c"]})
    result = run_stack({**demo_config(), "zoneCount": 2}, mocks=mocks)
    zones = [s.inputs["availabilityZone"] for s in result.of_type("aws:ec2/subnet:Subnet")]
    assert zones == ["us-east-1a", "us-east-1c"]
    with pytest.raises(MeshSpecError, match=r"offering every instance type of the stack \(t3.small\)"):
        run_stack({**demo_config(), "zoneCount": 3}, mocks=StackMocks(offered_in={"t3.small": ["us-east-1a"]}))
    # An arm64 type, as AWS reports it (a Graviton name, or what the mocks are told), is refused.
    with pytest.raises(
        MeshSpecError, match=re.escape("serverInstanceType: 't4g.medium' is not an x86_64 instance type")
    ):
        run_stack({**demo_config(), "serverInstanceType": "t4g.medium"})
    with pytest.raises(MeshSpecError, match=re.escape("serverInstanceType: 'x9.large' is not an x86_64")):
        run_stack(
            {**demo_config(), "serverInstanceType": "x9.large"}, mocks=StackMocks(architectures={"x9.large": ["arm64"]})
        )


def test_the_offerings_stand_in_refuses_a_query_aws_would_answer_with_regions():
    # DescribeInstanceTypeOfferings answers per region unless LocationType is availability-zone.
    with pytest.raises(UnansweredInvoke, match="locationType None"):
        answer_offerings({"filters": [{"name": "instance-type", "values": ["t3.small"]}]}, ("us-east-1a",), {})
    assert graviton("t4g.small") and graviton("m7gd.large") and graviton("a1.medium") and graviton("g5g.xlarge")
    assert not graviton("t3.small") and not graviton("g5.xlarge") and not graviton("m7i.large")


def test_stack_file_path(tmp_path):
    doc = {
        "config": {
            "aws:region": "us-east-1",
            **{f"consul-tproxy-vms:{k}": v for k, v in EXISTING.items() if k != "consulToken"},
            "consul-tproxy-vms:consulToken": {"secure": "v1:ciphertext-never-read"},
            "other-project:services": {"ignored": {"port": 1}},
        }
    }
    path = tmp_path / "Pulumi.mine.yaml"
    path.write_text(yaml.safe_dump(doc))
    for given in (path, str(path)):
        result = run_stack(given, stack="mine")
        assert [vm.name for vm in result.of_type(MESH_VM)] == ["api", "web"]
        assert result.outputs["consulManagementToken"] == "secret-not-rendered:consulToken"
        assert result.named("api-instance").inputs["tags"]["consul-tproxy-vms:stack"] == "mine"


def test_unanswered_invoke_is_named():
    class Fewer(StackMocks):
        KNOWN_INVOKES = StackMocks.KNOWN_INVOKES - {"aws:ec2/getAmi:getAmi"}

    with pytest.raises(UnansweredInvoke, match="aws:ec2/getAmi:getAmi"):
        run_stack(demo_config(), mocks=Fewer())


def test_refuses_a_running_event_loop():
    async def inside():
        run_stack(demo_config())

    with pytest.raises(RuntimeError, match="plain"):
        asyncio.run(inside())


def test_the_testing_doc_shows_the_example_test_file():
    readme = (ROOT / "docs" / "testing.md").read_text()
    heading = "## Test your own stack"
    if heading not in readme:
        pytest.fail(f'docs/testing.md has no "{heading}" section')
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert EXAMPLE.read_text() in blocks, f"the section's python block differs from {EXAMPLE.relative_to(ROOT)}"


def test_one_stackmocks_serves_several_runs_each_recorded_alone():
    mocks = StackMocks(zones=("us-east-1a", "us-east-1b"))
    first = run_stack(demo_config(), mocks=mocks)
    second = run_stack({**demo_config(), "services": {"solo": {"port": 8000}}, "intentions": []}, mocks=mocks)
    third = run_stack(demo_config(), mocks=mocks)
    # Reused mocks once recorded every run: the third run then held the demo's resources twice.
    assert [r.name for r in third.resources] == [r.name for r in first.resources]
    assert [vm.name for vm in second.of_type(MESH_VM)] == ["solo"]
    assert sorted(r.name for r in mocks.resources) == sorted(r.name for r in third.resources)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("- a\n- b\n", "is not a stack file: it holds a list"),
        ("config: 3\n", "config: is a int, not a map"),
        ("config: [\n", "is not YAML"),
        ("a: &a [*a]\n", "line 1: uses the YAML alias *a"),
    ],
)
def test_a_stack_file_that_is_not_one_raises_meshspecerror_naming_it(tmp_path, content, why):
    path = tmp_path / "Pulumi.mine.yaml"
    path.write_text(content)
    with pytest.raises(MeshSpecError, match=re.escape(f"{path}: {why}")):
        run_stack(path, stack="mine")


@pytest.mark.parametrize("stack", ["my stack", "dév", "org/proj/dev", ""])
def test_a_stack_name_pulumi_refuses_raises_meshspecerror(stack):
    mocks = StackMocks()
    with pytest.raises(MeshSpecError, match="is not a Pulumi stack name"):
        run_stack(demo_config(), stack=stack, mocks=mocks)
    assert mocks.resources == []


def test_a_config_that_is_neither_a_mapping_nor_a_path_raises_meshspecerror():
    with pytest.raises(MeshSpecError, match="list is not a mapping of key to value"):
        run_stack([("services", {})])


KIT_UNDER_ERROR = """
import sys, warnings
from pathlib import Path

before = list(warnings.filters)
from consul_tproxy_vms.testing import StackResult, run_stack

result = run_stack(Path(sys.argv[1]), stack="dev")
assert isinstance(result, StackResult) and result.of_type("consul-tproxy-vms:index:MeshVm"), result.resources
# The kit's filter was scoped: the user's filters are as they were, and their own deprecations still raise.
assert list(warnings.filters) == before, (warnings.filters, before)
try:
    warnings.warn("the user's own deprecation", DeprecationWarning)
except DeprecationWarning:
    print("raised")
"""


def test_the_providers_deprecation_warnings_never_reach_a_kit_user(tmp_path: Path) -> None:
    """A user's tests run with DeprecationWarnings as errors (`-W error::DeprecationWarning`, or
    pytest's filterwarnings = error): the provider SDKs warn on import (pulumi_consul's getCatalog*,
    pulumi_aws.ec2.EncryptionControl), which the kit keeps to itself. A fresh interpreter, as the
    kit's first import: in this one the providers are imported already."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", KIT_UNDER_ERROR, ROOT / "Pulumi.dev.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout == "raised\n"
    assert "DeprecationWarning" not in done.stderr


def test_a_service_of_many_instances_is_a_vm_of_the_kit_with_its_groups_user_data():
    config = demo_config()
    config["services"]["api"]["instances"] = 3
    result = run_stack(config)
    assert result.vms() == ["api", "consul-server-0", "web"]
    assert "/etc/consul.d/lifecycle.env" in result.files("api")
    (group,) = result.of_type(GROUP)
    (template,) = result.of_type(LAUNCH_TEMPLATE)
    assert (group.name, template.name, group.inputs["desiredCapacity"]) == ("api-group", "api-template", 3)
    assert result.outputs["services"]["api"]["instances"] == 3
