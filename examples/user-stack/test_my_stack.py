"""Tests of my own stack config, under Pulumi's mocks: offline, no AWS account, no Consul."""

from pathlib import Path

import pytest
from consul_tproxy_vms.testing import (
    INTENTIONS,
    MESH_VM,
    SECRET_PLACEHOLDER,
    MeshSpecError,
    StackResult,
    run_stack,
)

STACK_FILE = Path(__file__).parent / "Pulumi.mystack.yaml"


@pytest.fixture(scope="module")
def result() -> StackResult:
    """One run of the whole program for my stack file, every registration settled."""
    return run_stack(STACK_FILE, stack="mystack")


def test_every_service_gets_a_vm(result: StackResult) -> None:
    assert [vm.name for vm in result.of_type(MESH_VM)] == ["frontend", "orders", "payments"]
    assert set(result.outputs["services"]) == {"frontend", "orders", "payments"}
    assert result.outputs["services"]["orders"]["virtualHostname"] == "orders.virtual.consul"


def test_intentions_allow_what_i_expect(result: StackResult) -> None:
    rules = {
        (source["name"], entry.inputs["name"]): source["action"]
        for entry in result.of_type(INTENTIONS)
        for source in entry.inputs["sources"]
    }
    assert rules == {
        ("frontend", "orders"): "allow",
        ("orders", "payments"): "allow",
        ("frontend", "payments"): "deny",
    }


def test_no_user_data_holds_a_secret(result: StackResult) -> None:
    for vm in result.vms():
        assert SECRET_PLACEHOLDER not in result.user_data(vm), vm


def test_a_vm_gets_its_service_registration(result: StackResult) -> None:
    registration = result.files("orders")["/etc/consul.d/service-orders.hcl"]
    assert 'name  = "orders"' in registration
    assert "port  = 8081" in registration
    assert 'mode = "transparent"' in registration


def test_admin_cidrs_resolve_deployer_offline(result: StackResult) -> None:
    assert result.spec.admin_cidrs == ("192.0.2.1/32", "203.0.113.0/28")


def test_a_bad_config_is_refused_naming_the_key() -> None:
    with pytest.raises(MeshSpecError, match=r"services\.orders\.port"):
        run_stack({"services": {"orders": {"port": 0}}})
