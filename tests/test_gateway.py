"""The API gateway (config `gateway`, issue 19 item 1): its spec, config entries, VM and user data,
its token's rights, the gate, and what a change to it replaces."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components import acl, identity, lifecycle, program
from components.gateway_entries import listener_config, route_config, route_name
from components.mesh_ready import Expectation, instance_missing
from components.render import user_data_by_vm
from components.spec import GATEWAY_NAME, RESERVED_PORTS, GatewaySpec, MeshSpecError, RouteSpec, load_spec
from components.userdata import (
    EC2_USER_DATA_LIMIT,
    GATEWAY_UNIT,
    TOKEN_DIR,
    decode_user_data,
    render_gateway_cloud_config,
    unpack_cloud_config,
)
from tests.helpers import gateway_recipe
from tests.lifecycle import first_up, named, plan
from tests.mocks import MockedTestCase, demo_config, value
from tests.test_acl import INSTANCE_ID, Declared, env_of

DEMO = demo_config(gateway=True)
ADMIN = "198.51.100.7/32"
CONFIG_ENTRY = "consul:index/configEntry:ConfigEntry"
INTENTIONS = "consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


def with_gateway(gateway: Any, **overrides: Any) -> dict[str, Any]:
    return {**DEMO, **overrides, "gateway": gateway}


def problems(gateway: Any, **overrides: Any) -> list[str]:
    with pytest.raises(MeshSpecError) as err:
        load_spec(with_gateway(gateway, **overrides))
    return err.value.problems


# --- the spec ---------------------------------------------------------------------------------------


def test_the_demo_gateway_routes_everything_to_web_open_to_the_admin_networks() -> None:
    spec = load_spec(DEMO)
    assert spec.gateway == GatewaySpec(8080, (RouteSpec("prefix", "/", "web"),), ("deployer",), "t3.small")
    resolved = program.resolve_admin_cidrs(spec, lambda: ADMIN)
    assert resolved.gateway is not None and resolved.gateway.allow_cidrs == (ADMIN,)
    assert load_spec(demo_config()).gateway is None


def test_a_gateway_takes_its_own_networks_port_and_instance_type() -> None:
    spec = load_spec(
        with_gateway(
            {
                "port": 80,
                "routes": [{"pathExact": "/hello", "service": "api"}, {"pathPrefix": "/", "service": "web"}],
                "allowCidrs": ["0.0.0.0/0"],
                "instanceType": "t3.micro",
            }
        )
    )
    assert spec.gateway == GatewaySpec(
        80,
        (RouteSpec("exact", "/hello", "api"), RouteSpec("prefix", "/", "web")),
        ("0.0.0.0/0",),
        "t3.micro",
    )
    assert [i.key() for i in spec.gateway.intentions()] == ["gateway->api:allow", "gateway->web:allow"]


@pytest.mark.parametrize(
    ("gateway", "overrides", "expected"),
    [
        (
            {"routes": [{"pathPrefix": "/", "service": "nope"}]},
            {},
            'gateway.routes[0].service: "nope" is not a service',
        ),
        (
            {"routes": [{"pathPrefix": "/", "service": "api"}]},
            {"services": {"web": {"port": 9090}, "api": {"port": 9091, "protocol": "tcp"}}, "intentions": []},
            'gateway.routes[0].service: "api" has protocol tcp',
        ),
        ({"port": 8500, "routes": [{"pathPrefix": "/", "service": "web"}]}, {}, "gateway.port: 8500 is reserved"),
        ({"port": 0, "routes": [{"pathPrefix": "/", "service": "web"}]}, {}, "gateway.port: 0 is out of range"),
        (
            {"allowCidrs": ["10.0.0.1/8"], "routes": [{"pathPrefix": "/", "service": "web"}]},
            {},
            'gateway.allowCidrs[0]: "10.0.0.1/8" is not a CIDR',
        ),
        (
            {"routes": [{"pathPrefix": "/", "pathExact": "/", "service": "web"}]},
            {},
            "gateway.routes[0]:",
        ),
        ({"routes": [{"service": "web"}]}, {}, "needs exactly one of pathPrefix and pathExact"),
        ({"routes": [{"pathPrefix": "no-slash", "service": "web"}]}, {}, 'gateway.routes[0].pathPrefix: "no-slash"'),
        ({"routes": []}, {}, "gateway.routes: [] is empty"),
        ({}, {}, "gateway.routes: is missing"),
        (
            {"routes": [{"pathPrefix": "/", "service": "web"}], "listeners": 1},
            {},
            "gateway.listeners: 1 is not a known",
        ),
        (
            {"routes": [{"pathPrefix": "/", "service": "web"}, {"pathPrefix": "/", "service": "api"}]},
            {},
            'gateway.routes[1]: "/" matches the same requests as gateway.routes[0]',
        ),
        (
            {"routes": [{"pathPrefix": "/", "service": "web"}]},
            {"services": {"web": {"port": 9090}, "gateway": {"port": 9091}}, "intentions": []},
            'services.gateway: "gateway" clashes with the API gateway',
        ),
        (
            {"routes": [{"pathPrefix": "/", "service": "web"}]},
            {"adminCidrs": [], "consulHttpAddr": "https://10.0.1.10:8501", "consulToken": "t"},
            "gateway.allowCidrs: [] is empty",
        ),
        ("yes", {}, 'gateway: "yes" must be an object'),
    ],
)
def test_bad_gateways_are_refused_naming_the_key(gateway: Any, overrides: dict[str, Any], expected: str) -> None:
    found = problems(gateway, **overrides)
    assert any(expected in p for p in found), found


def test_a_service_whose_nodes_the_gateway_would_share_is_refused() -> None:
    """Nodes are <name>-<instance id> and an agent may write its name's prefix (acl.agent_rules):
    a service named gateway-x, or one named g when the gateway is g-..., would share nodes."""
    route = {"routes": [{"pathPrefix": "/", "service": "web"}]}
    services = {"web": {"port": 9090}, f"{GATEWAY_NAME}-admin": {"port": 9091}}
    assert any("clashes" in p for p in problems(route, services=services, intentions=[]))


@given(st.sampled_from(sorted(RESERVED_PORTS)))
def test_every_reserved_port_is_refused_for_the_listener(port: int) -> None:
    found = problems({"port": port, "routes": [{"pathPrefix": "/", "service": "web"}]})
    assert found == [f"gateway.port: {port} is reserved on mesh VMs for {RESERVED_PORTS[port]}"]


PATHS = st.from_regex(r"/[a-z0-9/_-]{0,20}", fullmatch=True)
ROUTES = st.lists(
    st.tuples(st.sampled_from(["pathPrefix", "pathExact"]), PATHS, st.sampled_from(["web", "api"])),
    min_size=1,
    max_size=6,
    unique_by=lambda r: (r[0], r[1]),
)


@given(ROUTES)
def test_any_distinct_routes_to_http_services_are_kept_in_order(routes: list[tuple[str, str, str]]) -> None:
    spec = load_spec(with_gateway({"routes": [{kind: path, "service": svc} for kind, path, svc in routes]}))
    assert spec.gateway is not None
    assert [(r.match, r.path, r.service) for r in spec.gateway.routes] == [
        ("prefix" if kind == "pathPrefix" else "exact", path, svc) for kind, path, svc in routes
    ]
    # One entry per route, named by what it matches: distinct, and the same whatever the order.
    names = [route_name(spec.gateway, r) for r in spec.gateway.routes]
    assert len(set(names)) == len(names)


@given(ROUTES, st.sampled_from(["nope", "db"]))
def test_a_route_to_a_service_the_stack_lacks_is_refused(routes: list[tuple[str, str, str]], bad: str) -> None:
    raw = [{kind: path, "service": svc} for kind, path, svc in routes] + [{"pathExact": "/zz/unique", "service": bad}]
    assert problems({"routes": raw}) == [
        f'gateway.routes[{len(routes)}].service: "{bad}" is not a service of this stack'
    ]


# --- the config entries -----------------------------------------------------------------------------


def test_entries_are_consul_s_api_gateway_and_http_route_fields() -> None:
    """Field names as the HTTP API takes them (reference/config-entry/api-gateway and http-route)."""
    gateway = GatewaySpec(8080, (RouteSpec("exact", "/hello", "api"),), (ADMIN,), "t3.small")
    assert listener_config(gateway) == {"Listeners": [{"Name": "http", "Port": 8080, "Protocol": "http"}]}
    assert route_config(gateway, gateway.routes[0]) == {
        "Parents": [{"Kind": "api-gateway", "Name": "gateway", "SectionName": "http"}],
        "Rules": [{"Matches": [{"Path": {"Match": "exact", "Value": "/hello"}}], "Services": [{"Name": "api"}]}],
    }


class GatewayStack(MockedTestCase):
    config = DEMO

    async def up(self) -> dict[str, Any]:
        return await value(program.main(deployer_lookup=lambda: ADMIN))

    async def test_entries_intentions_and_the_url(self) -> None:
        outputs = await self.up()
        entries = {r.inputs["kind"]: r for r in self.mocks.of_type(CONFIG_ENTRY) if "gateway" in r.name}
        assert sorted(entries) == ["api-gateway", "http-route"]
        assert entries["api-gateway"].inputs["name"] == "gateway"
        assert json.loads(entries["api-gateway"].inputs["configJson"])["Listeners"][0]["Port"] == 8080
        route = json.loads(entries["http-route"].inputs["configJson"])
        assert route["Rules"][0]["Services"] == [{"Name": "web"}]
        assert route["Parents"][0]["Name"] == "gateway"
        # The gateway's intention is a source of web's one entry (Consul keeps one per destination).
        (web,) = [r for r in self.mocks.of_type(INTENTIONS) if r.inputs["name"] == "web"]
        assert [(s["name"], s["action"]) for s in web.inputs["sources"]] == [("gateway", "allow")]
        assert outputs["gatewayUrl"].startswith("http://") and outputs["gatewayUrl"].endswith(":8080")
        assert outputs["gatewayUrl"] != "http://:8080"

    async def test_the_listener_is_open_to_allow_cidrs_only(self) -> None:
        await self.up()
        rules = {r.name: r.inputs for r in self.mocks.of_type(INGRESS_RULE) if r.name.startswith("gateway-")}
        on_listener = {name: r for name, r in rules.items() if r["fromPort"] == 8080}
        assert [(r["cidrIpv4"], r["toPort"]) for r in on_listener.values()] == [(ADMIN, 8080)]
        assert {r["fromPort"] for r in rules.values()} == {8080, 8301, 22}
        gossip = [r for r in rules.values() if r["fromPort"] == 8301]
        assert gossip and all(r["referencedSecurityGroupId"] == "network-members-id" for r in gossip)
        # Nothing opens Envoy's public port (21000) on the gateway: the mesh never calls it.
        assert not [r for r in rules.values() if r["fromPort"] == 21000]

    async def test_the_gateway_vm_logs_in_runs_envoy_as_the_gateway_and_nothing_else(self) -> None:
        await self.up()
        files = unpack_cloud_config(decode_user_data(user_data_by_vm(self.mocks)["gateway"]))
        unit = files[f"/etc/systemd/system/{GATEWAY_UNIT}"]
        assert "ExecStart=/usr/bin/consul connect envoy -gateway api -register -service ${GATEWAY_SERVICE}" in unit
        assert "User=envoy" in unit and "Requires=mesh-imds-guard.service" in unit
        env = env_of(files["/etc/envoy/gateway.env"])
        assert env["GATEWAY_SERVICE"] == "gateway"
        assert env["CONSUL_HTTP_TOKEN_FILE"] == f"{TOKEN_DIR}/service.token"
        login = env_of(files["/etc/consul.d/login.env"])
        assert login["MESH_SERVICE"] == "gateway"
        # No application, no registration file, no redirect; the guard and the login as on any VM.
        assert not [p for p in files if "mesh-app" in p or "redirect" in p or "service-" in p or "envoy@" in p]
        assert "/usr/local/sbin/mesh-imds-guard" in files and "/usr/local/sbin/consul-login" in files
        doc = decode_user_data(user_data_by_vm(self.mocks)["gateway"])
        assert "iptables" not in doc.split("write_files:")[0]
        iam = {r.name: r.inputs for r in self.mocks.of_type("aws:iam/role:Role")}["gateway-role"]
        assert iam["tags"][identity.SERVICE_TAG] == "gateway"

    async def test_the_gateway_token_has_every_right_its_calls_need(self) -> None:
        """The ACL judge (tests/test_acl.py) on the gateway VM: each process's token covers its calls,
        and the agent and DNS tokens hold nothing more. The service token holds one grant beyond: the
        service identity the login binds also writes <gateway>-sidecar-proxy, which no gateway has."""
        await self.up()
        declared = Declared(self.mocks)
        files = unpack_cloud_config(decode_user_data(user_data_by_vm(self.mocks)["gateway"]))
        methods = dict(p.split("=", 1) for p in env_of(files["/etc/consul.d/login.env"])["LOGIN_METHODS"].split())
        gossip = env_of(files["/etc/consul.d/login.env"])["GOSSIP_KEY_PATH"]
        iam_role = declared.iam_roles["gateway-role"]
        node = f"gateway-{INSTANCE_ID}"
        tokens = {p: declared.login_grants(methods[k], iam_role) for p, k in acl.GATEWAY_METHOD_OF.items()}
        for process, grants in tokens.items():
            missing = [n for n in acl.needs_of(process, node, "gateway", gossip) if not acl.grants_cover(grants, n)]
            assert not missing, f"{process} lacks {missing}"
        for kind in set(acl.GATEWAY_METHOD_OF.values()):
            processes = [p for p, k in acl.GATEWAY_METHOD_OF.items() if k == kind]
            needs = set().union(*(acl.needs_of(p, node, "gateway", gossip) for p in processes))
            extra = acl.unused(tokens[processes[0]], needs)
            expected = {acl.Grant("service", "gateway-sidecar-proxy", False, acl.WRITE)} if kind == "service" else set()
            assert extra == expected, f"the {kind} token grants {extra} no call needs"
        assert acl.grants_cover(tokens[acl.GATEWAY], acl.Need("mesh", "", acl.READ))
        # It can never write a mesh service's nodes or register as one.
        for grants in tokens.values():
            assert not acl.grants_cover(grants, acl.Need("node", f"web-{INSTANCE_ID}", acl.WRITE))
            assert not acl.grants_cover(grants, acl.Need("service", "web", acl.WRITE))


def test_without_mesh_read_the_gateway_token_is_caught() -> None:
    """The guard of the judge above: the gateway's role without its mesh rule fails it."""
    full = acl.service_identity("gateway") | acl.parse_rules(acl.gateway_service_rules("gateway"))
    needs = acl.needs_of(acl.GATEWAY, f"gateway-{INSTANCE_ID}", "gateway")
    assert all(acl.grants_cover(full, n) for n in needs)
    weakened = {g for g in full if g.resource != "mesh"}
    assert not all(acl.grants_cover(weakened, n) for n in needs)


# --- the gate ---------------------------------------------------------------------------------------


def test_the_gate_waits_for_the_gateway_without_a_sidecar() -> None:
    record = first_up(DEMO).record
    gate = named(record, "mesh-ready")
    assert gate.inputs["instances"]["gateway"] == ["gateway-instance-id"]
    assert gate.inputs["expected"] == {"api": 1, "gateway": 1, "web": 1}
    assert gate.inputs["gateways"] == ["gateway"]
    assert "gateway->web:allow" in gate.inputs["intentions"]
    for needed in ("gateway-instance", "gateway-entries-api-gateway", "intentions-web"):
        assert named(record, needed).urn in gate.needs, needed
    entries = lifecycle.urn_named(record, "gateway-entries-api-gateway")
    assert lifecycle.depends_transitively(record, entries, lifecycle.urn_named(record, "defaults-web-defaults"))


def test_a_registered_gateway_is_ready_and_a_failing_one_is_named() -> None:
    exp = Expectation("gateway", 1, ("i-1",), sidecar=False)
    node = "gateway-i-1"
    serf = {"CheckID": "serfHealth", "Status": "passing"}
    ready = {"Node": {"Node": node}, "Checks": [serf]}
    assert instance_missing(exp, node, "i-1", ready, []) is None
    failing = {"Node": {"Node": node}, "Checks": [serf, {"ServiceID": "gateway", "Name": "x", "Status": "critical"}]}
    missing = instance_missing(exp, node, "i-1", failing, [])
    assert missing is not None and missing.step == "Envoy"
    # A mesh service without its sidecar is still not ready: the gateway's exemption is its own.
    assert instance_missing(Expectation("web", 1, ("i-1",)), "web-i-1", "i-1", ready, []) is not None


# --- user data and day two --------------------------------------------------------------------------


def test_gateway_user_data_fits_the_budget_and_holds_no_route() -> None:
    import gzip

    text = render_gateway_cloud_config(gateway_recipe())
    # As much room as a mesh VM's (tests/test_userdata.py): no application, no redirect scripts.
    assert len(gzip.compress(text.encode(), 9, mtime=0)) < EC2_USER_DATA_LIMIT * 3 / 4
    assert "8080" not in text and "web" not in text


ROUTED_TO_API = with_gateway(
    {"routes": [{"pathPrefix": "/", "service": "web"}, {"pathExact": "/api", "service": "api"}]}
)


def test_adding_and_changing_routes_replaces_no_vm() -> None:
    added = plan(DEMO, ROUTED_TO_API).changed()
    assert added["replaced"] == [] and added["deleted"] == []
    # The gateway becomes a source of api's intentions entry (updated in place) and a route is added.
    assert "intentions-api" in added["updated"]
    assert [c for c in added["created"] if c.startswith("gateway-entries-route-")]
    assert not [u for u in added["updated"] if u.endswith("-instance")]
    moved = with_gateway({"routes": [{"pathPrefix": "/", "service": "api"}], "port": 8081})
    changed = plan(DEMO, moved).changed()
    assert changed["replaced"] == []
    assert "gateway-entries-api-gateway" in changed["updated"]


def test_the_gateway_s_own_settings_replace_the_gateway_vm_only() -> None:
    bigger = with_gateway({**DEMO["gateway"], "instanceType": "t3.medium"})
    changed = plan(DEMO, bigger).changed()
    assert [r for r in changed["replaced"] + changed["updated"] if r.endswith("-instance")] == ["gateway-instance"]


def test_adding_a_gateway_to_a_stack_replaces_no_vm() -> None:
    changed = plan(demo_config(), DEMO).changed()
    assert changed["replaced"] == [] and changed["deleted"] == []
    assert "gateway-instance" in changed["created"]
    assert [u for u in changed["updated"] if u.endswith("-instance")] == []
