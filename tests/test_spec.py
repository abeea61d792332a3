"""The mesh spec: defaults, and a clear error naming key and value for each kind of bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.spec import (
    DEFAULTS,
    DEPLOYER,
    IntentionSpec,
    MeshSpecError,
    NetworkSpec,
    ServersSpec,
    load_spec,
)
from tests.mocks import GOSSIP_KEY, demo_config

EXISTING = {
    "consulHttpAddr": "https://10.0.1.10:8501",
    "consulRetryJoin": ["10.0.1.10"],
    "consulToken": "token",
}


def config(**overrides: Any) -> dict[str, Any]:
    """The demo stack (which creates its servers), with overrides; None removes a key."""
    base = {**demo_config(), **overrides}
    return {k: v for k, v in base.items() if v is not None}


def existing(**overrides: Any) -> dict[str, Any]:
    """The demo stack pointed at an existing cluster."""
    return config(**{**EXISTING, **overrides})


def problems(**overrides: Any) -> list[str]:
    return problems_of(config(**overrides))


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(MeshSpecError) as caught:
        load_spec(raw)
    return caught.value.problems


def test_demo_stack_spec() -> None:
    spec = load_spec(config())
    assert sorted(spec.services) == ["api", "web"]
    web = spec.services["web"]
    assert (web.port, web.upstreams, web.protocol) == (9090, ("api",), "http")
    assert web.virtual_hostname == "web.virtual.consul"
    assert web.proxy_id == "web-sidecar-proxy"
    assert web.app.is_demo and web.app.health_check_path == "/health"
    assert spec.intentions == (IntentionSpec("web", "api", "allow", "web calls api"),)
    assert spec.datacenter == DEFAULTS["datacenter"] == "dc1"
    # No existing cluster given: the stack creates one server, in a VPC of its own.
    assert spec.consul is None and spec.creates_servers
    assert spec.servers == ServersSpec(count=1, instance_type="t3.small")
    assert spec.network == NetworkSpec(vpc_id=None, subnet_ids=(), vpc_cidr="10.42.0.0/16", zone_count=2)
    assert spec.network.creates_vpc and spec.network.subnet_cidrs() == ("10.42.0.0/20", "10.42.16.0/20")
    assert spec.admin_cidrs == (DEPLOYER,)
    assert spec.ready_timeout_seconds == 600
    assert spec.mesh_destinations_only is False
    assert spec.ami_id is None


def test_existing_cluster_mode() -> None:
    spec = load_spec(existing(consulGossipKey=GOSSIP_KEY, subnetIds=["subnet-0aaaaaaaaaaaaaaaa"]))
    assert spec.servers is None and spec.consul is not None
    assert (spec.consul.scheme, spec.consul.address) == ("https", "10.0.1.10:8501")
    assert spec.consul.retry_join == ("10.0.1.10",)
    assert not spec.network.creates_vpc and spec.network.subnet_ids == ("subnet-0aaaaaaaaaaaaaaaa",)


def test_cluster_keys_without_consul_http_addr_are_refused_not_ignored() -> None:
    found = problems(consulToken="t0ken-value", consulGossipKey=GOSSIP_KEY, consulRetryJoin=["10.0.1.10"])
    for key in ("consulToken", "consulGossipKey", "consulRetryJoin"):
        assert any(p.startswith(f"{key}: ") and "is set but consulHttpAddr is not" in p for p in found), found
    # Secrets are named, never shown.
    assert not any("t0ken-value" in p or GOSSIP_KEY in p for p in found)


def test_created_servers_need_an_admin_network_for_pulumi_to_reach_them() -> None:
    found = problems(adminCidrs=[])
    assert any(p.startswith("adminCidrs: [] is empty, but the stack creates its Consul servers") for p in found)
    assert load_spec(existing(adminCidrs=[])).admin_cidrs == ()


def test_integer_keys_arrive_as_text_from_pulumi_config() -> None:
    spec = load_spec(config(serverCount="3", zoneCount="3", consulReadyTimeoutSeconds="900"))
    assert (spec.servers.count if spec.servers else 0, spec.network.zone_count, spec.ready_timeout_seconds) == (
        3,
        3,
        900,
    )


def test_json_text_as_pulumi_gives_it_is_decoded() -> None:
    raw = config()
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    raw["meshDestinationsOnly"] = "true"
    spec = load_spec(raw)
    assert spec.services["api"].port == 9091
    assert spec.mesh_destinations_only is True


def test_engine_floats_are_accepted_as_ports() -> None:
    spec = load_spec(config(services={"api": {"port": 9091.0}}, intentions=[]))
    assert spec.services["api"].port == 9091


def test_custom_app_options() -> None:
    spec = load_spec(
        config(
            services={
                "api": {
                    "port": 8080,
                    "command": "/usr/bin/myapi --port 8080",
                    "packages": ["nginx", "libfoo=1.2*"],
                    "protocol": "grpc",
                    "instanceType": "m7i.large",
                    "excludeOutboundCidrs": ["10.9.0.0/16", "10.8.0.0/16"],
                    "excludeInboundPorts": [9100, 9100],
                    "excludeUids": [1001],
                }
            },
            intentions=[],
        )
    )
    api = spec.services["api"]
    assert api.app.command == "/usr/bin/myapi --port 8080" and not api.app.is_demo
    assert api.app.health_check_path is None  # a TCP check for an app we know nothing about
    assert api.app.packages == ("nginx", "libfoo=1.2*")
    assert (api.protocol, api.instance_type) == ("grpc", "m7i.large")
    assert api.exclusions.outbound_cidrs == ("10.8.0.0/16", "10.9.0.0/16")  # sorted: stable rendering
    assert api.exclusions.inbound_ports == (9100,)
    assert api.exclusions.uids == (1001,)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("Web", 'services.Web: "Web" is not a valid service name'),
        ("web_1", 'services.web_1: "web_1" is not a valid service name'),
        ("1web", 'services.1web: "1web" is not a valid service name'),
        ("web-", 'services.web-: "web-" is not a valid service name'),
        ("a" * 64, f'services.{"a" * 64}: "{"a" * 64}" is not a valid service name'),
    ],
)
def test_service_names_must_be_dns_labels(name: str, fragment: str) -> None:
    found = problems(services={name: {"port": 80}}, intentions=[])
    assert any(fragment in p for p in found), found


def test_longest_dns_label_is_fine() -> None:
    name = "a" * 63
    assert name in load_spec(config(services={name: {"port": 80}}, intentions=[])).services


@pytest.mark.parametrize(
    ("port", "fragment"),
    [
        (None, "services.api.port: is missing"),
        ("8080", 'services.api.port: "8080" must be an integer'),
        (8080.5, "services.api.port: 8080.5 must be an integer"),
        (True, "services.api.port: true must be an integer"),
        (0, "services.api.port: 0 is out of range"),
        (70000, "services.api.port: 70000 is out of range"),
        (22, "services.api.port: 22 is reserved on mesh VMs for SSH"),
        (21000, "services.api.port: 21000 is reserved on mesh VMs for Envoy public listener"),
        (8500, "services.api.port: 8500 is reserved on mesh VMs for Consul HTTP API"),
    ],
)
def test_bad_ports(port: Any, fragment: str) -> None:
    svc = {} if port is None else {"port": port}
    found = problems(services={"api": svc}, intentions=[])
    assert any(fragment in p for p in found), found


def test_no_services() -> None:
    assert any("services: {} is empty" in p for p in problems(services={}, intentions=[]))
    assert any("services: is missing" in p for p in problems(services=None, intentions=[]))
    assert any("services: [] must be a map" in p for p in problems(services=[], intentions=[]))


def test_unknown_keys_in_a_service_and_an_intention_and_top_level() -> None:
    found = problems(
        services={"web": {"port": 9090, "prot": 1}, "api": {"port": 9091}},
        intentions=[{"source": "web", "destination": "api", "action": "allow", "acton": "x"}],
        datacentre="dc2",
    )
    assert any(p.startswith("services.web.prot: 1 is not a known key") for p in found), found
    assert any(p.startswith('intentions[0].acton: "x" is not a known key') for p in found), found
    assert "datacentre: \"dc2\" is not a known key (did you mean 'datacenter'?)" in found, found
    assert "services.web.prot: 1 is not a known key (did you mean 'port'?)" in found, found


def test_intention_problems_are_all_reported_at_once() -> None:
    found = problems(
        intentions=[
            {"source": "web", "destination": "db", "action": "allow"},
            {"source": "web", "destination": "api", "action": "permit"},
            {"source": "api", "destination": "api", "action": "allow"},
            {"source": "web", "destination": "api", "action": "allow"},
            {"source": "web", "destination": "api", "action": "deny"},
            {"destination": "api", "action": "deny"},
            "web->api",
        ]
    )
    expected = [
        'intentions[0].destination: "db" is not a service of this stack (services: api, web)',
        'intentions[1].action: "permit" must be allow or deny',
        "intentions[2]: {",  # the whole intention is named
        "names the same service as source and destination",
        "repeats the source/destination pair of intentions[3]",
        "intentions[5].source: is missing",
        'intentions[6]: "web->api" must be an object',
    ]
    for fragment in expected:
        assert any(fragment in p for p in found), (fragment, found)
    assert len(found) == 6


def test_upstreams_must_name_services_of_the_stack() -> None:
    found = problems(services={"web": {"port": 9090, "upstreams": ["api", "web"]}}, intentions=[])
    assert 'services.web.upstreams: "api" is not a service of this stack' in "\n".join(found)
    assert 'services.web.upstreams: "web" is the service itself' in "\n".join(found)


def test_node_names_are_no_longer_set() -> None:
    found = problems(services={"web": {"port": 9090}, "api": {"port": 9091, "nodeName": "web"}}, intentions=[])
    assert found == [
        'services.api.nodeName: "web" is no longer set: a service\'s nodes are named <service>-<instance id> '
        "when each VM boots"
    ]


def test_a_service_cannot_fall_under_another_services_node_prefix() -> None:
    found = problems(services={"web": {"port": 9090}, "web-api": {"port": 9091}}, intentions=[])
    assert any(p.startswith('services.web-api: "web-api" starts with the name of service web') for p in found), found


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"datacenter": "DC 1"}, 'datacenter: "DC 1" is not a datacenter name'),
        ({"consulVersion": "1.22"}, 'consulVersion: "1.22" is not a version'),
        ({"envoyVersion": "1.29.0"}, 'envoyVersion: "1.29.0" is not supported by Consul 1.22'),
        ({"meshDestinationsOnly": "yes"}, 'meshDestinationsOnly: "yes" must be true or false'),
        ({"adminCidrs": ["10.0.0.1/8"]}, 'adminCidrs[0]: "10.0.0.1/8" is not a CIDR'),
        ({"adminCidrs": "0.0.0.0/0"}, 'adminCidrs: "0.0.0.0/0" must be a list'),
        ({"amiId": "ubuntu"}, 'amiId: "ubuntu" is not an AMI id'),
        ({"instanceType": "t3 small"}, 'instanceType: "t3 small" is not an EC2 instance type'),
        ({"vpcId": "vpc-0123456789abcdef0"}, "subnetIds: [] is empty: with vpcId set"),
        ({"subnetIds": ["subnet-1"]}, 'subnetIds[0]: "subnet-1" is not a subnet id'),
        ({"subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"] * 2}, "subnetIds: "),
        ({"vpcCidr": "10.0.0.0/8"}, 'vpcCidr: "10.0.0.0/8" must be a /16 to /24 network'),
        ({"vpcCidr": "fd00::/56"}, 'vpcCidr: "fd00::/56" is an IPv6 network'),
        ({"zoneCount": 0}, "zoneCount: 0 is out of range"),
        ({"serverCount": 2}, "serverCount: 2 is not 1, 3 or 5"),
        ({"serverCount": "three"}, 'serverCount: "three" must be an integer'),
        ({"serverInstanceType": "big"}, 'serverInstanceType: "big" is not an EC2 instance type'),
        ({"consulReadyTimeoutSeconds": 5}, "consulReadyTimeoutSeconds: 5 is out of range"),
        ({"adminCidrs": ["deployers"]}, 'adminCidrs[0]: "deployers" is not a CIDR'),
        ({"services": "{not json"}, 'services: "{not json" is not valid JSON'),
    ],
)
def test_bad_top_level_values(overrides: dict[str, Any], fragment: str) -> None:
    found = problems(**overrides)
    assert any(fragment in p for p in found), found


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"consulHttpAddr": "10.0.1.10:8501"}, 'consulHttpAddr: "10.0.1.10:8501" is not an address'),
        ({"consulRetryJoin": []}, "consulRetryJoin: is missing: an existing cluster"),
        ({"consulRetryJoin": ['a b"c']}, "consulRetryJoin[0]: "),
        ({"consulToken": None}, "consulToken: is missing: an existing cluster"),
        ({"consulCaPem": "not a cert"}, 'consulCaPem: "<text>" is not a PEM certificate'),
    ],
)
def test_bad_existing_cluster_values(overrides: dict[str, Any], fragment: str) -> None:
    found = problems_of(existing(**overrides))
    assert any(fragment in p for p in found), found


def test_gossip_key_is_checked_but_never_echoed() -> None:
    assert load_spec(existing(consulGossipKey=GOSSIP_KEY))
    bad = "not-a-key-but-still-secret"
    with pytest.raises(MeshSpecError) as caught:
        load_spec(existing(consulGossipKey=bad))
    assert "consulGossipKey" in str(caught.value)
    assert bad not in str(caught.value)


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(MeshSpecError) as caught:
        load_spec(config(services={"Web": {"port": 0}, "api": {"port": "x"}}, intentions=[], datacenter="A B"))
    message = str(caught.value)
    assert message.startswith("invalid stack config for consul-tproxy-vms (3 problems):")
    assert message.count("\n  - ") == 3


def test_one_problem_is_one_problem() -> None:
    with pytest.raises(MeshSpecError) as caught:
        load_spec({"services": {"web": {"port": 9090, "prot": 1}}, "adminCidrs": ["203.0.113.0/24"]})
    assert "(1 problem):" in str(caught.value)


def test_instances_make_a_group_and_are_bounded() -> None:
    services = demo_config()["services"]
    grouped = load_spec(config(services={**services, "api": {**services["api"], "instances": 3}}))
    assert (grouped.services["api"].instances, grouped.services["api"].grouped) == (3, True)
    # Without the key a service keeps its one VM of its own (no group): existing stacks replace nothing.
    assert (grouped.services["web"].instances, grouped.services["web"].grouped) == (None, False)
    for bad, fragment in [(0, "out of range"), (101, "out of range"), (True, "must be an integer"), (2.5, "integer")]:
        found = problems(services={**services, "api": {**services["api"], "instances": bad}})
        assert any(p.startswith("services.api.instances:") and fragment in p for p in found), (bad, found)
