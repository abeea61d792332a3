"""L7 intentions, traffic splits, access logs and Envoy metrics (issue 19, items 2-4).

The spec's rules are Consul's own, each cited where it is checked (components/spec.py); here they
are shown refusing what Consul refuses, with the key named, and the declared config entries are
shown under Pulumi's mocks. What a day-two `up` of these settings replaces is in test_day_two.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components import lifecycle, program
from components.intentions import ServiceIntentions, ServiceIntentionsArgs
from components.mesh_defaults import PROMETHEUS_BIND_ADDR, MeshDefaults, MeshDefaultsArgs, proxy_defaults_config
from components.mesh_ready import intention_keys, probed_services
from components.spec import (
    ENVOY_METRICS_PORT,
    HTTP_METHODS,
    RESERVED_PORTS,
    HeaderSpec,
    IntentionSpec,
    MeshSpecError,
    PermissionSpec,
    SplitSpec,
    load_service,
    load_spec,
    probe_admitted,
)
from components.splits import TrafficSplits, TrafficSplitsArgs
from components.userdata import redirect_exclusions, render_cloud_config
from tests.helpers import recipe
from tests.lifecycle import first_up, plan, stack_program
from tests.mocks import MeshMocks, MockedTestCase, demo_config, value
from tests.test_iptables import REDIRECT, Netns, netns  # noqa: F401 (netns is a fixture)
from tests.test_userdata import files_of

ADMIN = "198.51.100.7/32"
DEMO = demo_config()
INTENTIONS = "consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions"
SPLITTER = "consul:index/configEntryServiceSplitter:ConfigEntryServiceSplitter"
CONFIG_ENTRY = "consul:index/configEntry:ConfigEntry"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"

SERVICES = {
    "web": {"port": 9090, "upstreams": ["api"]},
    "api": {"port": 9091},
    "canary": {"port": 9092},
    "db": {"port": 5432, "protocol": "tcp"},
    "grpc": {"port": 7000, "protocol": "grpc"},
}
HEALTH_ONLY = [{"action": "allow", "http": {"pathExact": "/health", "methods": ["GET"]}}]


def config(**overrides: Any) -> dict[str, Any]:
    return {"services": SERVICES, "adminCidrs": [ADMIN], "intentions": [], **overrides}


def l7(destination: str, permissions: Any, source: str = "web") -> dict[str, Any]:
    return {"source": source, "destination": destination, "permissions": permissions}


def problems(**overrides: Any) -> list[str]:
    with pytest.raises(MeshSpecError) as err:
        load_spec(config(**overrides))
    return err.value.problems


def one_problem(**overrides: Any) -> str:
    (found,) = problems(**overrides)
    return found


# --- L7 intentions: the spec ----------------------------------------------------------------------


def test_an_l7_intention_carries_its_permissions_in_order_and_no_action() -> None:
    rules = [
        {"action": "deny", "http": {"pathExact": "/admin"}},
        {"action": "allow", "http": {"methods": ["GET", "HEAD"]}},
    ]
    (intention,) = load_spec(config(intentions=[l7("api", rules)])).intentions
    assert intention.action is None and intention.is_l7
    assert intention.permissions == (
        PermissionSpec("deny", path_exact="/admin"),
        PermissionSpec("allow", methods=("GET", "HEAD")),
    )
    assert [p.as_config() for p in intention.permissions] == rules


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"source": "web", "destination": "api", "action": "allow", "permissions": HEALTH_ONLY},
            "intentions[0]: {",  # names the whole intention ...
        ),
        ({"source": "web", "destination": "api"}, "needs exactly one of action (allow|deny) and permissions"),
        (l7("api", []), "intentions[0].permissions: [] is empty"),
        (l7("api", [{"action": "permit", "http": {"pathExact": "/"}}]), 'permissions[0].action: "permit" must be'),
        (l7("api", [{"action": "allow"}]), "intentions[0].permissions[0].http: null must be an object"),
        (l7("api", [{"action": "allow", "http": {}}]), "intentions[0].permissions[0].http: {} matches nothing"),
        (
            l7("api", [{"action": "allow", "http": {"pathExact": "/a", "pathPrefix": "/"}}]),
            "has pathExact and pathPrefix: give at most one path match",
        ),
        (l7("api", [{"action": "allow", "http": {"pathPrefix": "api"}}]), 'http.pathPrefix: "api" must be a path'),
        (l7("api", [{"action": "allow", "http": {"pathExact": "api"}}]), 'http.pathExact: "api" must be a path'),
        (l7("api", [{"action": "allow", "http": {"pathExact": "/a\nb"}}]), "http.pathExact:"),
        (l7("api", [{"action": "allow", "http": {"methods": ["get"]}}]), 'http.methods[0]: "get" is not one of GET'),
        (l7("api", [{"action": "allow", "http": {"methods": ["FETCH"]}}]), 'http.methods[0]: "FETCH" is not one'),
        (
            l7("api", [{"action": "allow", "http": {"methods": ["GET", "GET"]}}]),
            'http.methods[1]: "GET" is listed twice',
        ),
        (l7("api", [{"action": "allow", "http": {"pathRegex": "/v(?=1)"}}]), 'http.pathRegex: "/v(?=1)" is not an RE2'),
        (l7("api", [{"action": "allow", "http": {"pathRegex": "(" * 60 + ")" * 60}}]), "over the 100 Envoy accepts"),
        (l7("api", [{"action": "allow", "http": {"header": [{"name": "x-a"}]}}]), "http.header[0]: {"),
        (l7("api", [{"action": "allow", "http": {"header": [{"name": "X-A", "present": True}]}}]), "header[0].name:"),
        (l7("api", [{"action": "allow", "http": {"header": [{"name": "x", "present": False}]}}]), "present: false"),
        (l7("api", [{"action": "allow", "http": {"path": "/"}}]), 'http.path: "/" is not a known key'),
        (l7("db", HEALTH_ONLY), 'intentions[0].permissions: "db" needs an HTTP destination'),
        (
            {"source": "web", "destination": "api", "action": "allow", "description": "x" * 513},
            "intentions[0].description:",
        ),
    ],
)
def test_what_consul_refuses_in_an_intention_is_refused_naming_its_key(item: dict[str, Any], expected: str) -> None:
    found = problems(intentions=[item])
    assert any(expected in p for p in found), found


def test_a_path_prefix_is_kept_as_written() -> None:
    (intention,) = load_spec(
        config(intentions=[l7("api", [{"action": "allow", "http": {"pathPrefix": "/v1"}}])])
    ).intentions
    assert intention.permissions == (PermissionSpec("allow", path_prefix="/v1"),)


def test_regex_and_header_matches_are_kept_as_written() -> None:
    rules = [
        {"action": "deny", "http": {"pathRegex": "/admin(/.*)?", "header": [{"name": "x-canary", "present": True}]}},
        {"action": "allow", "http": {"header": [{"name": "x-tenant", "exact": "acme", "invert": True}]}},
    ]
    (intention,) = load_spec(config(intentions=[l7("api", rules)])).intentions
    assert intention.permissions == (
        PermissionSpec("deny", path_regex="/admin(/.*)?", headers=(HeaderSpec("x-canary", "present"),)),
        PermissionSpec("allow", headers=(HeaderSpec("x-tenant", "exact", "acme", invert=True),)),
    )
    assert [p.as_config() for p in intention.permissions] == rules


def test_a_grpc_or_http2_destination_takes_l7_rules() -> None:
    assert load_spec(config(intentions=[l7("grpc", HEALTH_ONLY)])).intentions[0].is_l7


def test_the_description_limit_is_consuls() -> None:
    fits = {"source": "web", "destination": "api", "action": "allow", "description": "x" * 512}
    assert load_spec(config(intentions=[fits])).intentions[0].description == "x" * 512


# Valid permissions as a user would write them, and the same after the spec (as_config).
PATHS = st.from_regex(r"/[a-z0-9/_.-]{0,20}", fullmatch=True)
PERMISSIONS = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["allow", "deny"]),
        "http": st.one_of(
            st.fixed_dictionaries({"pathExact": PATHS}, optional={"methods": st.just(["GET"])}),
            st.fixed_dictionaries(
                {"pathExact": PATHS},
                optional={"methods": st.lists(st.sampled_from(HTTP_METHODS), min_size=1, max_size=4, unique=True)},
            ),
            st.fixed_dictionaries(
                {"methods": st.lists(st.sampled_from(HTTP_METHODS), min_size=1, max_size=9, unique=True)}
            ),
        ),
    }
)


@given(st.lists(PERMISSIONS, min_size=1, max_size=6))
def test_every_valid_permission_list_is_kept_as_written(rules: list[dict[str, Any]]) -> None:
    (intention,) = load_spec(config(intentions=[l7("api", rules)])).intentions
    assert [p.as_config() for p in intention.permissions] == rules


@given(
    st.lists(PERMISSIONS, min_size=1, max_size=4),
    st.integers(min_value=0, max_value=3),
    st.sampled_from(["get", "Post", "PURGE", "", "GET "]),
)
def test_a_method_consul_does_not_store_as_given_is_refused_at_its_index(
    rules: list[dict[str, Any]], where: int, method: str
) -> None:
    where = min(where, len(rules) - 1)
    rules[where] = {"action": "allow", "http": {"pathExact": "/", "methods": [method]}}
    found = problems(intentions=[l7("api", rules)])
    assert found == [
        f"intentions[0].permissions[{where}].http.methods[0]: {json.dumps(method)} is not one of "
        + ", ".join(HTTP_METHODS)
    ]


# --- what an L7 intention admits: the probe, the warning, the gate ----------------------------------


def intention(*rules: PermissionSpec, source: str = "web", destination: str = "api") -> IntentionSpec:
    return IntentionSpec(source, destination, None, permissions=rules)


@pytest.mark.parametrize(
    ("rules", "admitted"),
    [
        ((PermissionSpec("allow", path_exact="/health", methods=("GET",)),), True),
        ((PermissionSpec("allow", path_prefix="/"),), True),
        ((PermissionSpec("allow", path_prefix="/he"),), True),  # Envoy's prefix is a string prefix
        ((PermissionSpec("deny", path_prefix="/admin"), PermissionSpec("allow", path_prefix="/")), True),
        # The first rule matching decides: a deny before the allow wins, an allow before a deny wins.
        ((PermissionSpec("deny", methods=("GET",)), PermissionSpec("allow", path_prefix="/")), False),
        ((PermissionSpec("allow", path_exact="/health"), PermissionSpec("deny", methods=("GET",))), True),
        ((PermissionSpec("allow", methods=("POST",)),), False),
        ((PermissionSpec("allow", path_exact="/healthz"),), False),
        ((PermissionSpec("deny", path_prefix="/"),), False),  # only denies: nothing gets through
        # A regex matches the whole path (Envoy's RE2 safe_regex), not a part of it.
        ((PermissionSpec("allow", path_regex="/he.*"),), True),
        ((PermissionSpec("allow", path_regex="/h"),), False),
        # Header-dependent rules are not certain (the proxies add headers): an allow that may not
        # match leaves it to the rules after it, a deny that may match leaves nothing certain.
        ((PermissionSpec("allow", headers=(HeaderSpec("x-a", "present"),)),), False),
        (
            (
                PermissionSpec("allow", headers=(HeaderSpec("x-a", "present"),)),
                PermissionSpec("allow", path_prefix="/"),
            ),
            True,
        ),
        (
            (PermissionSpec("deny", headers=(HeaderSpec("x-a", "present"),)), PermissionSpec("allow", path_prefix="/")),
            False,
        ),
        (
            (
                PermissionSpec("deny", path_exact="/x", headers=(HeaderSpec("x-a", "present"),)),
                PermissionSpec("allow", path_prefix="/"),
            ),
            True,
        ),
    ],
)
def test_the_first_matching_rule_decides_whether_the_probe_gets_through(
    rules: tuple[PermissionSpec, ...], admitted: bool
) -> None:
    assert intention(*rules).admits("GET", "/health") is admitted
    assert probe_admitted([intention(*rules)], "web", "api") is admitted
    assert probe_admitted([intention(*rules)], "api", "web") is False  # another pair's rules say nothing


def spec_with(intentions: list[dict[str, Any]], **services: Any) -> Any:
    return load_spec(config(services={**SERVICES, **services}, intentions=intentions))


def test_the_gate_waits_for_a_probe_an_l7_intention_admits_and_not_for_one_it_refuses() -> None:
    admitted = spec_with([l7("api", HEALTH_ONLY)])
    refused = spec_with([l7("api", [{"action": "allow", "http": {"pathExact": "/v1"}}])])
    assert probed_services(admitted.services, admitted.intentions) == ["web"]
    assert admitted.warnings == ()
    assert probed_services(refused.services, refused.intentions) == []
    (warning,) = refused.warnings
    assert warning.startswith("services.web.upstreams: the L7 intention web->api does not admit the demo app's probe")


def test_an_l7_intention_of_denies_only_is_no_allow() -> None:
    spec = spec_with([l7("api", [{"action": "deny", "http": {"pathExact": "/health"}}])])
    (warning,) = spec.warnings
    assert "no allow intention lets web reach api" in warning
    assert probed_services(spec.services, spec.intentions) == []


def test_the_gate_sees_a_changed_rule_as_a_changed_intention() -> None:
    allow = IntentionSpec("web", "api", "allow")
    assert intention_keys([allow]) == ["web->api:allow"]  # as before L7: existing stacks see no diff
    one = intention_keys([intention(PermissionSpec("allow", path_prefix="/"))])
    other = intention_keys([intention(PermissionSpec("allow", path_prefix="/v2"))])
    assert one == ["web->api:l7[allow * /*]"] and one != other


# --- splits: the spec -----------------------------------------------------------------------------

CANARY = [{"weight": 90, "service": "api"}, {"weight": 10, "service": "canary"}]


def with_splits(splits: Any, on: str = "api", **extra: Any) -> dict[str, Any]:
    return {**SERVICES, on: {**SERVICES.get(on, {"port": 9999}), "splits": splits}, **extra}


def test_a_canary_split_is_the_mesh_s_and_never_a_vm_s() -> None:
    spec = load_spec(config(services=with_splits(CANARY)))
    assert spec.splits == {"api": (SplitSpec(90.0, "api"), SplitSpec(10.0, "canary"))}
    # What the VM's user data is made of holds no split (a split changes no VM).
    assert "splits" not in {f for f in type(spec.services["api"]).__dataclass_fields__}
    with pytest.raises(MeshSpecError, match=r"services.api.splits: .* is the mesh stack's to declare"):
        load_service("api", {"port": 9091, "splits": CANARY})


@pytest.mark.parametrize(
    ("splits", "expected"),
    [
        ([{"weight": 90, "service": "api"}, {"weight": 20, "service": "canary"}], "adding up to 110, not 100"),
        ([{"weight": 33.333, "service": "api"}, {"weight": 66.667, "service": "canary"}], "more than two decimals"),
        ([{"weight": 101, "service": "api"}], "weight: 101 must be a number from 0 to 100"),
        ([{"weight": -10, "service": "api"}, {"weight": 110, "service": "canary"}], "weight: -10 must be"),
        ([{"weight": True, "service": "api"}], "weight: true must be a number"),
        ([{"weight": "90", "service": "api"}], 'weight: "90" must be a number'),
        ([{"weight": 100, "service": "nosuch"}], 'splits[0].service: "nosuch" is not a service of this stack'),
        ([{"weight": 100, "service": "Api"}], 'splits[0].service: "Api" is not a service name'),
        ([{"weight": 50, "service": "api"}, {"weight": 50, "service": "api"}], "is split to twice"),
        ([], "services.api.splits: [] is empty"),
        ([{"weight": 100, "service": "db"}], 'splits[0].service: "db" has protocol tcp, not http like api'),
        ([{"weight": 100, "service": "grpc"}], 'splits[0].service: "grpc" has protocol grpc, not http'),
        ([{"weight": 100, "service": "api", "subset": "v2"}], "splits[0].subset:"),
        ({"weight": 100}, "services.api.splits:"),
    ],
)
def test_what_consul_refuses_in_a_splitter_is_refused_naming_its_key(splits: Any, expected: str) -> None:
    found = problems(services=with_splits(splits))
    assert any(expected in p for p in found), found


def test_a_tcp_service_cannot_be_split() -> None:
    found = problems(services=with_splits([{"weight": 100, "service": "db"}], on="db"))
    assert found == [
        'services.db.protocol: "tcp" cannot be split (services.db.splits): splitting needs http, http2, grpc'
    ]


def test_a_split_to_a_split_service_is_refused_so_no_chain_loops() -> None:
    services = with_splits(CANARY)
    services["canary"] = {**SERVICES["canary"], "splits": [{"weight": 100, "service": "api"}]}
    found = problems(services=services)
    assert 'services.api.splits[1].service: "canary" has splits of its own' in " ".join(found), found


# Two decimals, adding up to 100: Consul's 0.01 % steps.
@given(st.lists(st.integers(min_value=0, max_value=10000), min_size=1, max_size=3))
def test_weights_in_hundredths_adding_up_to_100_are_accepted_and_any_other_sum_is_not(cuts: list[int]) -> None:
    bounds = sorted(cuts)
    steps = [b - a for a, b in zip([0, *bounds], [*bounds, 10000], strict=True)]
    names = ["api", "canary", "web", "grpc"][: len(steps)]
    names = [n for n in names if n != "grpc"] + (["aux"] if len(steps) == 4 else [])
    services = {**SERVICES, "aux": {"port": 9093}}
    splits = [{"weight": s / 100, "service": n} for s, n in zip(steps, names, strict=True)]
    services["api"] = {**SERVICES["api"], "splits": splits}
    spec = load_spec(config(services=services))
    assert [s.weight for s in spec.splits["api"]] == [s / 100 for s in steps]
    off = [{**splits[0], "weight": round(splits[0]["weight"] + 0.01, 2)}, *splits[1:]]
    if off[0]["weight"] <= 100:
        services["api"] = {**SERVICES["api"], "splits": off}
        found = problems(services=services)
        assert any(p.startswith("services.api.splits: [") and "adding up to 100.01" in p for p in found), found


def test_a_split_target_without_an_intention_is_warned_and_not_awaited() -> None:
    allow = {"source": "web", "destination": "api", "action": "allow"}
    spec = load_spec(config(services=with_splits(CANARY), intentions=[allow]))
    (warning,) = spec.warnings
    assert warning == (
        "services.web.upstreams: api is listed but no allow intention lets web reach canary "
        "(services.api.splits sends calls to canary) (default deny refuses the calls)"
    )
    assert probed_services(spec.services, spec.intentions, spec.splits) == []
    both = load_spec(config(services=with_splits(CANARY), intentions=[allow, {**allow, "destination": "canary"}]))
    assert both.warnings == () and probed_services(both.services, both.intentions, both.splits) == ["web"]


def test_a_split_service_without_weight_receives_nothing_and_needs_no_intention() -> None:
    allow = {"source": "web", "destination": "api", "action": "allow"}
    zero = [{"weight": 100, "service": "api"}, {"weight": 0, "service": "canary"}]
    spec = load_spec(config(services=with_splits(zero), intentions=[allow]))
    assert spec.warnings == () and probed_services(spec.services, spec.intentions, spec.splits) == ["web"]


# --- access logs and metrics: the spec ------------------------------------------------------------


def test_access_logs_and_metrics_are_off_unless_asked_and_take_booleans_only() -> None:
    spec = load_spec(config())
    assert (spec.access_logs, spec.envoy_metrics) == (False, False)
    on = load_spec(config(accessLogs="true", envoyMetrics=True))
    assert (on.access_logs, on.envoy_metrics) == (True, True)
    assert problems(accessLogs="yes", envoyMetrics=1) == [
        'accessLogs: "yes" must be true or false',
        "envoyMetrics: 1 must be true or false",
    ]


def test_the_metrics_port_is_reserved_and_always_kept_out_of_the_inbound_redirect() -> None:
    assert RESERVED_PORTS[ENVOY_METRICS_PORT] == "Envoy Prometheus metrics"
    assert one_problem(services={"api": {"port": ENVOY_METRICS_PORT}}) == (
        "services.api.port: 20200 is reserved on mesh VMs for Envoy Prometheus metrics"
    )
    assert ENVOY_METRICS_PORT in redirect_exclusions(recipe()).inbound_ports
    env = files_of(render_cloud_config(recipe()))["/etc/envoy/web.env"]
    assert 'REDIRECT_EXCLUDE_INBOUND_PORTS="20200"' in env


def test_a_scrape_of_the_metrics_port_is_not_redirected_into_envoy(netns: Netns) -> None:  # noqa: F811
    """The rendered env file, fed to the redirect script under real iptables: 20200 returns early."""
    env = files_of(render_cloud_config(recipe()))["/etc/envoy/web.env"]
    ports = next(line for line in env.splitlines() if line.startswith("REDIRECT_EXCLUDE_INBOUND_PORTS="))
    netns.run(REDIRECT, "web", env={"REDIRECT_EXCLUDE_INBOUND_PORTS": ports.split("=", 1)[1].strip('"')})
    assert f"-exclude-inbound-port={ENVOY_METRICS_PORT}" in netns.log.read_text().split()
    assert f"-A CONSUL_PROXY_INBOUND -p tcp -m tcp --dport {ENVOY_METRICS_PORT} -j RETURN" in netns.nat()


def test_proxy_defaults_hold_exactly_what_is_on() -> None:
    assert proxy_defaults_config(False, False) == {}
    assert proxy_defaults_config(True, False) == {"AccessLogs": {"Enabled": True}}
    assert proxy_defaults_config(False, True) == {"Config": {"envoy_prometheus_bind_addr": "0.0.0.0:20200"}}
    assert PROMETHEUS_BIND_ADDR.endswith(f":{ENVOY_METRICS_PORT}")


# --- the declared config entries, under mocks ------------------------------------------------------


class DeclaredEntries(MockedTestCase):
    async def test_an_l7_source_has_permissions_and_no_action(self) -> None:
        given_ = [
            IntentionSpec(
                "web", "api", None, "reads only", (PermissionSpec("allow", path_exact="/", methods=("GET",)),)
            ),
            IntentionSpec("batch", "api", "deny"),
        ]
        component = ServiceIntentions("mesh", ServiceIntentionsArgs(intentions=given_))
        applied = await value(component.applied)
        (entry,) = self.mocks.of_type(INTENTIONS)
        assert entry.inputs["sources"] == [
            {"name": "batch", "action": "deny", "type": "consul"},
            {
                "name": "web",
                "type": "consul",
                "description": "reads only",
                "permissions": [{"action": "allow", "https": [{"pathExact": "/", "methods": ["GET"]}]}],
            },
        ]
        assert applied == [
            {"source": "batch", "destination": "api", "action": "deny"},
            {
                "source": "web",
                "destination": "api",
                "permissions": [{"action": "allow", "http": {"pathExact": "/", "methods": ["GET"]}}],
            },
        ]
        # A destination the typed resource can write has no generic entry.
        assert [r for r in self.mocks.of_type(CONFIG_ENTRY) if r.inputs["kind"] == "service-intentions"] == []

    async def test_a_path_prefix_is_written_by_a_generic_entry_the_typed_one_denying_first(self) -> None:
        """The typed resource would send the prefix as "" (an allow of GET everywhere): it writes every
        source denied and then ignores its sources; the generic entry writes the rules as Consul takes them."""
        given_ = [
            IntentionSpec(
                "web", "api", None, "reads only", (PermissionSpec("allow", path_prefix="/v1", methods=("GET",)),)
            ),
            IntentionSpec("batch", "api", "deny"),
        ]
        component = ServiceIntentions("mesh", ServiceIntentionsArgs(intentions=given_))
        await value(component.applied)
        (typed,) = self.mocks.of_type(INTENTIONS)
        assert [(s["name"], s["action"]) for s in typed.inputs["sources"]] == [("batch", "deny"), ("web", "deny")]
        (entry,) = [r for r in self.mocks.of_type(CONFIG_ENTRY) if r.inputs["kind"] == "service-intentions"]
        assert (entry.name, entry.inputs["name"]) == ("mesh-api-entry", "api")
        assert typed.inputs["meta"] == {"tproxy-vms-rules": "generic-entry"}
        assert json.loads(entry.inputs["configJson"]) == {
            "Meta": {"tproxy-vms-rules": "generic-entry"},
            "Sources": [
                {"Name": "batch", "Action": "deny", "Precedence": 9, "Type": "consul"},
                {
                    "Name": "web",
                    "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/v1", "Methods": ["GET"]}}],
                    "Precedence": 9,
                    "Type": "consul",
                    "Description": "reads only",
                },
            ],
        }

    async def test_regexes_and_headers_are_written_by_the_generic_entry_in_consuls_own_fields(self) -> None:
        given_ = [
            IntentionSpec(
                "web",
                "api",
                None,
                "",
                (
                    PermissionSpec("deny", path_regex="/admin(/.*)?", headers=(HeaderSpec("x-canary", "present"),)),
                    PermissionSpec("allow", methods=("GET",), headers=(HeaderSpec("x-tenant", "exact", "acme", True),)),
                ),
            )
        ]
        ServiceIntentions("mesh", ServiceIntentionsArgs(intentions=given_))
        await value(self.mocks.resources)
        (entry,) = [r for r in self.mocks.of_type(CONFIG_ENTRY) if r.inputs["kind"] == "service-intentions"]
        (source,) = json.loads(entry.inputs["configJson"])["Sources"]
        assert source["Permissions"] == [
            {
                "Action": "deny",
                "HTTP": {"PathRegex": "/admin(/.*)?", "Header": [{"Name": "x-canary", "Present": True}]},
            },
            {
                "Action": "allow",
                "HTTP": {"Header": [{"Name": "x-tenant", "Exact": "acme", "Invert": True}], "Methods": ["GET"]},
            },
        ]
        (typed,) = self.mocks.of_type(INTENTIONS)
        assert [(s["name"], s["action"]) for s in typed.inputs["sources"]] == [("web", "deny")]

    async def test_a_splitter_per_split_service_with_its_weights_in_order(self) -> None:
        TrafficSplits("splits", TrafficSplitsArgs(splits={"api": (SplitSpec(90.0, "api"), SplitSpec(10.0, "canary"))}))
        await value(self.mocks.resources)
        (splitter,) = self.mocks.of_type(SPLITTER)
        assert splitter.name == "splits-api" and splitter.inputs["name"] == "api"
        assert splitter.inputs["splits"] == [{"weight": 90, "service": "api"}, {"weight": 10, "service": "canary"}]

    async def defaults(self, access_logs: bool, envoy_metrics: bool) -> dict[tuple[str, str], Any]:
        component = MeshDefaults(
            "mesh",
            MeshDefaultsArgs(
                mesh_destinations_only=False,
                protocols={"web": "http"},
                dns_policy_name="p",
                datacenter="dc1",
                access_logs=access_logs,
                envoy_metrics=envoy_metrics,
            ),
        )
        await value(component.dns_policy_name)
        return {
            (r.inputs["kind"], r.inputs["name"]): json.loads(r.inputs["configJson"])
            for r in self.mocks.of_type(CONFIG_ENTRY)
        }

    async def test_proxy_defaults_only_when_logs_or_metrics_are_on(self) -> None:
        entries = await self.defaults(True, True)
        assert entries[("proxy-defaults", "global")] == {
            "AccessLogs": {"Enabled": True},
            "Config": {"envoy_prometheus_bind_addr": "0.0.0.0:20200"},
        }
        assert self.mocks.named("mesh-proxy-defaults")
        self.mocks.resources.clear()
        assert ("proxy-defaults", "global") not in await self.defaults(False, False)


class StackEntries(MockedTestCase):
    """The whole program: what the keys declare, and what they leave alone."""

    async def up(self, **overrides: Any) -> dict[str, Any]:
        self.mocks.resources.clear()
        self.set_config({**DEMO, **overrides})
        return await value(program.main(deployer_lookup=lambda: ADMIN))

    def metrics_rules(self) -> dict[str, dict[str, Any]]:
        return {r.name: r.inputs for r in self.mocks.of_type(INGRESS_RULE) if "-metrics" in r.name}

    async def test_metrics_open_port_20200_to_the_mesh_and_admins_on_every_mesh_vm(self) -> None:
        await self.up(envoyMetrics=True)
        rules = self.metrics_rules()
        assert sorted(rules) == ["api-metrics", "api-metrics-admin-0", "web-metrics", "web-metrics-admin-0"]
        for vm in ("api", "web"):
            assert rules[f"{vm}-metrics"]["referencedSecurityGroupId"] == "network-members-id"
            assert rules[f"{vm}-metrics-admin-0"]["cidrIpv4"] == ADMIN
            assert {r["fromPort"] for r in (rules[f"{vm}-metrics"], rules[f"{vm}-metrics-admin-0"])} == {20200}
        (defaults,) = [r for r in self.mocks.of_type(CONFIG_ENTRY) if r.inputs["kind"] == "proxy-defaults"]
        assert json.loads(defaults.inputs["configJson"]) == {"Config": {"envoy_prometheus_bind_addr": "0.0.0.0:20200"}}

    async def test_without_metrics_the_port_stays_closed_and_no_proxy_defaults_is_written(self) -> None:
        await self.up()
        assert self.metrics_rules() == {}
        assert not [r for r in self.mocks.of_type(CONFIG_ENTRY) if r.inputs["kind"] == "proxy-defaults"]
        assert self.mocks.of_type(SPLITTER) == []

    async def test_the_stack_declares_l7_intentions_splits_and_tells_the_gate(self) -> None:
        services = {**DEMO["services"], "canary": {"port": 9092}}
        services["api"] = {**services["api"], "splits": CANARY}
        outputs = await self.up(
            services=services,
            intentions=[l7("api", HEALTH_ONLY), l7("canary", HEALTH_ONLY)],
        )
        (splitter,) = self.mocks.of_type(SPLITTER)
        assert splitter.name == "splits-api"
        assert {r.inputs["name"] for r in self.mocks.of_type(INTENTIONS)} == {"api", "canary"}
        gate = self.mocks.named("mesh-ready").inputs
        assert gate["probes"] == ["web"]
        assert gate["intentions"] == ["web->api:l7[allow GET =/health]", "web->canary:l7[allow GET =/health]"]
        assert outputs["intentions"][0] == {"source": "web", "destination": "api", "permissions": HEALTH_ONLY}


def test_splitters_follow_the_protocols_and_the_gate_follows_the_splitters() -> None:
    """Consul refuses a splitter before its services are HTTP-like (service-defaults), and the gate's
    probe goes through the split: so defaults, then splitters, then the gate."""
    services = {**DEMO["services"], "canary": {"port": 9092}}
    services["api"] = {**services["api"], "splits": CANARY}
    split = {**DEMO, "services": services, "intentions": [*DEMO["intentions"], l7("canary", HEALTH_ONLY)]}
    record = first_up(split).record
    splitter = lifecycle.urn_named(record, "splits-api")
    assert lifecycle.depends_transitively(record, splitter, lifecycle.urn_named(record, "defaults-api-defaults"))
    assert lifecycle.depends_transitively(record, lifecycle.urn_named(record, "mesh-ready"), splitter)


# --- day two: moving a destination between the typed and the generic entry ------------------------

PREFIXED = [
    {
        "source": "web",
        "destination": "api",
        "permissions": [{"action": "allow", "http": {"pathPrefix": "/", "methods": ["GET"]}}],
    }
]


def test_a_destination_that_gains_a_prefix_keeps_its_live_entry_until_the_generic_one_writes_it() -> None:
    """Nothing is deleted: the typed resource is unchanged (its sources ignored), the generic entry is
    created after it. A new resource in place of the typed one would DELETE the live entry at the
    end of the update (the old resource's delete)."""
    result = plan(DEMO, {**DEMO, "intentions": PREFIXED})
    assert result.deleted == [] and result.replaced == []
    # The typed resource writes its meta alone, with the sources it kept (what is live already) ...
    assert result.step("intentions-api").paths == ("meta",)
    typed = result.after[lifecycle.urn_named(result.after, "intentions-api")]
    assert typed.inputs["sources"] == result.before[typed.urn].inputs["sources"]
    # ... and the generic entry writes the rules after it.
    assert "intentions-api-entry" in result.created
    waves = result.order()
    assert waves[typed.urn] < waves[lifecycle.urn_named(result.after, "intentions-api-entry")]


def test_a_destination_back_to_typed_rules_is_written_by_the_typed_entry_and_the_generic_one_goes_quietly() -> None:
    result = plan({**DEMO, "intentions": PREFIXED}, DEMO)
    assert "intentions-api" in result.updated
    # Deleted from the state, left in Consul: its DELETE would remove what the typed one just wrote.
    assert result.deleted == ["intentions-api-entry"] and result.retained() == ["intentions-api-entry"]


def test_a_prefixed_destination_removed_is_deleted_by_its_typed_entry() -> None:
    result = plan({**DEMO, "intentions": PREFIXED}, {**DEMO, "intentions": []})
    assert sorted(result.deleted) == ["intentions-api", "intentions-api-entry"]
    # The typed resource's delete (DELETE /v1/config/service-intentions/api) removes the entry.
    assert result.retained() == ["intentions-api-entry"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.one_of(st.text(max_size=60), st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=2)),
    st.sampled_from(["pathRegex", "header-regex", "header-exact", "header-name"]),
)
def test_any_regex_or_header_value_is_accepted_or_refused_naming_its_key(value: Any, where: str) -> None:
    """Whatever a user writes into a regex or a header match, the spec answers with a problem naming
    the key, never another error (RE2 refusals included)."""
    if where == "pathRegex":
        http: dict[str, Any] = {"pathRegex": value}
    elif where == "header-name":
        http = {"header": [{"name": value, "present": True}]}
    else:
        http = {"header": [{"name": "x-a", where.removeprefix("header-"): value}]}
    try:
        (intention,) = load_spec(config(intentions=[l7("api", [{"action": "allow", "http": http}])])).intentions
    except MeshSpecError as err:
        assert all(p.startswith("intentions[0].permissions[0].http") for p in err.problems), err.problems
    else:
        (permission,) = intention.permissions
        assert permission.as_config()["http"] == http


def test_undoing_a_prefix_rule_writes_the_typed_entry_again() -> None:
    """DEMO -> PREFIXED -> DEMO, each `up` over the state the one before left: the typed resource's
    sources were kept as they were while ignored (the engine's processIgnoreChanges), so only its
    mode's meta tells it to write again; without it Consul would keep the generic entry's rules."""
    second = lifecycle.run(stack_program({**DEMO, "intentions": PREFIXED}), MeshMocks(), first_up(DEMO).record)
    result = lifecycle.plan_after(second, stack_program(DEMO), MeshMocks())
    assert "intentions-api" in result.updated, result.changed()
    assert result.deleted == ["intentions-api-entry"] and result.retained() == ["intentions-api-entry"]
