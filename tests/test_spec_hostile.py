"""One regression test per class of hostile input (the fuzzing in test_fuzz_config.py covers them too)."""

from __future__ import annotations

import base64
import random
import re
import textwrap
from typing import Any

import pytest

from components.program import preflight
from components.spec import MeshSpecError, envoy_supported, load_spec
from components.userdata import user_data_problems
from tests.helpers import LOGIN

GOOD = {"services": {"web": {"port": 9090}, "api": {"port": 9091}}, "adminCidrs": ["203.0.113.0/24"]}


def problems(**overrides: Any) -> list[str]:
    with pytest.raises(MeshSpecError) as caught:
        load_spec({**GOOD, **overrides})
    return caught.value.problems


@pytest.mark.parametrize(
    "overrides",
    [
        {"services": {"web\n": {"port": 9090}}},
        {"services": {"web": {"port": 9090, "nodeName": "web\n"}}},
        {"datacenter": "dc1\n"},
        {"consulVersion": "1.22.1\n"},
        {"instanceType": "t3.small\n"},
        {"amiId": "ami-0123456789abcdef0\n"},
        {"sshKeyName": "key\n"},
    ],
)
def test_a_trailing_newline_is_refused(overrides: dict[str, Any]) -> None:
    assert problems(**overrides)


@pytest.mark.parametrize("tail", ["\r", "\v", "\u2028", "\x85", " \\", "\x00"])
def test_a_command_that_would_break_its_unit_line_is_refused(tail: str) -> None:
    command = f"/opt/app{tail}" + ("" if tail.endswith("\\") else "ExecStartPre=+/bin/id")
    (problem,) = problems(services={"web": {"port": 9090, "command": command}})
    assert problem.startswith("services.web.command:")


@pytest.mark.parametrize("path", ["/a\\b", "/${x}", "/%{x}", '/a"b', "/a b"])
def test_a_health_path_hcl_cannot_carry_is_refused(path: str) -> None:
    found = problems(services={"web": {"port": 9090, "healthCheckPath": path}})
    assert all(p.startswith("services.web.healthCheckPath:") for p in found)


def test_an_app_package_cannot_override_the_mesh_pins() -> None:
    (problem,) = problems(services={"web": {"port": 9090, "packages": ["consul=1.10.0-1"]}})
    assert "pinned by the mesh" in problem


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"adminCidrs": ["2001:db8::/32"]}, "adminCidrs[0]"),
        ({"services": {"web": {"port": 9090, "excludeOutboundCidrs": ["fd00::/8"]}}}, "services.web"),
        (
            {"consulHttpAddr": "https://10.0.0.1:8501", "consulRetryJoin": ["fd00::1"], "consulToken": "t"},
            "consulRetryJoin",
        ),
        (
            {"consulHttpAddr": "https://10.0.0.1:99999", "consulRetryJoin": ["10.0.0.1"], "consulToken": "t"},
            "consulHttpAddr",
        ),
    ],
)
def test_what_the_vm_cannot_use_is_refused(overrides: dict[str, Any], key: str) -> None:
    assert any(p.startswith(key) for p in problems(**overrides))


@pytest.mark.parametrize("name", ["consul", "consul-server-0", "network", "consul-ready"])
def test_names_the_stack_uses_itself_are_refused(name: str) -> None:
    assert any(p.startswith(f"services.{name}") for p in problems(services={name: {"port": 9090}}))


@pytest.mark.parametrize("source", [["web"], {"name": "web"}, 7])
def test_an_intention_end_of_the_wrong_type_is_a_message(source: Any) -> None:
    found = problems(intentions=[{"source": source, "destination": "api", "action": "allow"}])
    assert "intentions[0].source" in found[0] and "must be a service name" in found[0]


def test_service_keys_of_mixed_types_are_a_message() -> None:
    assert problems(services={"web": {"port": 9090}, 7: {"port": 1}})


@pytest.mark.parametrize("key", ["consul_token", "ConsulToken", "gossipKey"])
def test_a_mistyped_secret_key_is_named_but_its_value_never_shown(key: str) -> None:
    found = problems(**{key: "hunter2-secret"})
    assert any(p.startswith(key) and "<secret>" in p for p in found)
    assert not any("hunter2" in p for p in found)


def test_a_ca_pem_with_a_private_key_is_refused_without_echo() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n-----BEGIN EC PRIVATE KEY-----\nsecretkey\n"
    found = problems(
        consulHttpAddr="https://10.0.0.1:8501", consulRetryJoin=["10.0.0.1"], consulToken="t", consulCaPem=pem
    )
    assert any("contains a private key" in p for p in found)
    assert not any("secretkey" in p for p in found)


def test_a_list_for_services_gets_one_message() -> None:
    assert problems(services=["web"]) == ['services: ["web"] must be a map of service name to {port: ...}']


@pytest.mark.parametrize(
    ("consul", "envoy", "ok"),
    [
        ("1.22.1", "1.35.3", True),
        ("1.22.1", "1.34.99", True),  # Consul compares major.minor only
        ("1.22.4", "1.33.0", True),
        # Accepted by early 1.22 patches, refused by later ones (lowest line 1.33 since 2026-03).
        ("1.22.1", "1.32.12", False),
        ("1.22.1", "1.31.0", False),
        ("1.22.1", "1.36.0", False),
        ("1.22.1", "1.38.0", False),  # the docs table's 1.38.x is consul-dataplane's Envoy
        ("1.21.4", "1.35.0", False),
        ("1.21.0", "1.31.10", True),
        ("1.20.6", "1.30.0", True),
        ("1.20.6", "1.33.0", False),
        ("1.19.0", "1.30.0", None),
        ("1.23.0", "1.35.3", None),
    ],
)
def test_envoy_ranges_follow_consuls_own_check(consul: str, envoy: str, ok: bool | None) -> None:
    assert envoy_supported(consul, envoy) is ok


def test_footguns_are_warnings_not_errors() -> None:
    spec = load_spec(
        {
            "services": {
                "web": {"port": 9090, "upstreams": ["api"], "excludeOutboundCidrs": ["240.0.0.0/5"]},
                "api": {"port": 9091},
            },
            "adminCidrs": ["0.0.0.0/0"],
        }
    )
    text = "\n".join(spec.warnings)
    assert "adminCidrs: 0.0.0.0/0" in text
    assert "services.web.excludeOutboundCidrs: 240.0.0.0/5 overlaps 240.0.0.0/4" in text
    assert "services.web.upstreams: api is listed but no allow intention" in text


def test_user_data_over_the_limit_is_named_before_anything_is_declared() -> None:
    spec = load_spec({**GOOD, "services": {"web": {"port": 9090, "excludeOutboundPorts": list(range(1, 6000))}}})
    (problem,) = user_data_problems(spec.services.values(), "dc1", "1.22.1", "1.35.3", ("10.0.0.1",), None, LOGIN)
    assert problem.startswith("services.web: its user data would be")
    good = load_spec(GOOD).services.values()
    assert user_data_problems(good, "dc1", "1.22.1", "1.35.3", ("10.0.0.1",), None, LOGIN) == []


def _random_text(count: int, seed: int) -> str:
    """Text that does not compress (gzip gains little on random base64)."""
    return base64.b64encode(random.Random(seed).randbytes(count)).decode()


def _existing_cluster(**overrides: Any) -> dict[str, Any]:
    return {
        **GOOD,
        "consulHttpAddr": "https://10.0.1.10:8501",
        "consulRetryJoin": ["10.0.1.10"],
        "consulToken": "token",
        **overrides,
    }


BIG_CA = "-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap(_random_text(30_000, 1), 64))
BIG_CA += "\n-----END CERTIFICATE-----\n"
MANY_SERVERS = [f"h{_random_text(12, i).lower().replace('+', '').replace('/', '')[:14]}.example" for i in range(2500)]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"consulCaPem": BIG_CA}, "consulCaPem"), ({"consulRetryJoin": MANY_SERVERS}, "consulRetryJoin")],
)
def test_user_data_over_the_limit_is_blamed_on_the_cluster_key_that_made_it_big(
    overrides: dict[str, Any], key: str
) -> None:
    spec = load_spec(_existing_cluster(**overrides))
    advice = {
        "consulCaPem": "give the CA certificate alone, not a bundle or a chain",
        "consulRetryJoin": "list fewer servers, or join by one cloud auto-join string",
    }[key]
    (found,) = preflight(spec, "dev", zones=None)
    sizes = re.fullmatch(
        rf"{key}: makes the user data of api \((\d+) bytes\), web \((\d+) bytes\) gzipped, over EC2's limit of "
        rf"16384: {advice} \(every VM's user data carries it\)",
        found,
    )
    assert sizes, found
    assert all(int(size) > 16384 for size in sizes.groups())


def test_user_data_over_the_limit_by_a_service_and_a_cluster_key_names_each() -> None:
    spec = load_spec(
        _existing_cluster(
            consulCaPem=BIG_CA,
            services={"web": {"port": 9090, "excludeOutboundPorts": list(range(1, 6000))}, "api": {"port": 9091}},
        )
    )
    found = preflight(spec, "dev", zones=None)
    assert [p.split(":")[0] for p in found] == ["services.web", "consulCaPem"]
    assert found[1].startswith("consulCaPem: makes the user data of api (")


def _services(count: int) -> dict[str, Any]:
    return {f"svc{i}": {"port": 9000 + i} for i in range(count)}


def test_a_vpc_too_small_for_its_vms_is_refused_before_anything_is_declared() -> None:
    # A /24 VPC in one zone: one /28 subnet, 16 addresses of which AWS keeps 5.
    small = {**GOOD, "vpcCidr": "10.42.0.0/24", "zoneCount": 1}
    assert preflight(load_spec({**small, "services": _services(5)}), "dev", zones=None) == []  # 1 + 2 * 5 = 11
    found = preflight(load_spec({**small, "services": _services(6)}), "dev", zones=None)
    assert found == [
        "vpcCidr: subnet 0 (10.42.0.0/28, a sixteenth of vpcCidr) has 11 usable addresses (AWS keeps 5 of its 16), "
        "but 13 are needed: 1 for Consul servers and 2 for each of its 6 mesh VMs (svc0, svc1, svc2, svc3, svc4, "
        "svc5), one to spare for each VM while `pulumi up` replaces it: a larger vpcCidr (a lower /prefix) or more "
        "zones"
    ]
    # A group of 4 over the one subnet: 4 VMs, and 4 more while an instance refresh launches before it terminates.
    grouped = {**_services(1), "many": {"port": 9100, "instances": 4}}
    assert preflight(load_spec({**small, "services": grouped}), "dev", zones=None) == []  # 1 + 2 + 8 = 11
    grouped["many"]["instances"] = 5
    (found,) = preflight(load_spec({**small, "services": grouped}), "dev", zones=None)
    assert "13 are needed" in found and "10 for the VMs of groups (many)" in found
    # Over three zones a group of 5 puts at most 2 in a subnet (the group balances its zones).
    three_zones = {**GOOD, "vpcCidr": "10.42.0.0/24", "zoneCount": 3, "services": grouped}
    assert preflight(load_spec(three_zones), "dev", zones=None) == []
    # Servers count where ConsulServer puts them (in turn); an existing cluster's are not in the VPC.
    three = load_spec({**small, "services": _services(5), "serverCount": 3})
    assert [p.split(" are needed")[0][-2:] for p in preflight(three, "dev", zones=None)] == ["13"]
    existing = {
        **small,
        "services": _services(5),
        "adminCidrs": [],
        "consulHttpAddr": "https://10.0.1.10:8501",
        "consulRetryJoin": ["10.0.1.10"],
        "consulToken": "token",
    }
    assert preflight(load_spec({**existing, "services": _services(5)}), "dev", zones=None) == []


def test_existing_subnets_are_not_counted_offline() -> None:
    given = {**GOOD, "services": _services(30), "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"]}
    assert not [p for p in preflight(load_spec(given), "dev", zones=None) if p.startswith("vpcCidr")]
