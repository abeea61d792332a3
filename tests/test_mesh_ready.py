"""The mesh gate's poller, against a local HTTPS stand-in of Consul's health API; its wiring under mocks."""

from __future__ import annotations

import base64
import datetime
import json
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3
import hcl2
import pytest
from botocore.stub import Stubber

from components import mesh_ready
from components.mesh_ready import (
    ConsulNotReadyError,
    Expectation,
    MeshReadyProvider,
    console_tail,
    probed_services,
    wait_for_mesh,
)
from components.spec import AppSpec, MeshSpecError, load_spec
from components.userdata import render_cloud_config, unpack_cloud_config
from tests import test_readiness
from tests.helpers import recipe
from tests.lifecycle import DEMO, first_up, named, plan
from tests.mocks import MockedTestCase, value
from tests.test_readiness import TOKEN, FakeClock, server_tls, serving

# The readiness tests' CA and server certificate for 127.0.0.1 (a module fixture), reused.
pki = test_readiness.pki

GATE = "pulumi-python:dynamic/consul-tproxy-vms:MeshReady"
WEB, API = "i-0123456789abcdef0", "i-0fedcba9876543210"
# What Consul answers a token it does not know: acl.ErrNotFound, HTTP 403 (agent/http.go).
ACL_NOT_FOUND = "ACL not found"


def check(node: str, check_id: str, name: str, status: str, output: str, service: str = "", kind: str = "") -> dict:
    """A HealthCheck as Consul's API returns it (hashicorp/consul api/health.go HealthCheck)."""
    return {
        "Node": node,
        "CheckID": check_id,
        "Name": name,
        "Status": status,
        "Notes": "",
        "Output": output,
        "ServiceID": service,
        "ServiceName": service,
        "ServiceTags": [],
        "Type": kind,
        "Interval": "10s" if kind in ("http", "tcp") else "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 20,
        "ModifyIndex": 21,
    }


@dataclass
class Instance:
    """One VM as Consul sees it: which of its parts are registered, and their checks' statuses."""

    service: str
    instance_id: str
    port: int = 9090
    serf: str = "passing"
    registered: bool = True
    app: str = "passing"
    sidecar: str | None = "passing"
    """The "Connect Sidecar Listening" check; None: no sidecar registered."""
    probe: tuple[str, str] | None = None
    """(status, output) of the upstream probe check; None: no probe registered."""
    meta: dict[str, str] = field(default_factory=dict)
    """The node's metadata beyond Consul's own (a group's VMs: their group and recipe)."""

    @property
    def node(self) -> str:
        return f"{self.service}-{self.instance_id}"

    def node_checks(self) -> list[dict]:
        # Every agent's node check (agent/structs SerfCheckID, SerfCheckName).
        output = "Agent alive and reachable" if self.serf == "passing" else "Agent not live or unreachable"
        return [check(self.node, "serfHealth", "Serf Health Status", self.serf, output)]

    def service_checks(self) -> list[dict]:
        if not self.registered:
            return []
        app_url = f"http://127.0.0.1:{self.port}/health"
        app_output = (
            f'HTTP GET {app_url}: 200 OK Output: {{"status": "ok"}}'
            if self.app == "passing"
            else f'Get "{app_url}": dial tcp 127.0.0.1:{self.port}: connect: connection refused'
        )
        found = [
            check(
                self.node,
                f"{self.service}-app",
                f"{self.service} application",
                self.app,
                app_output,
                self.service,
                "http",
            )
        ]
        if self.probe is not None:
            status, output = self.probe
            name = f"{self.service} calls its upstreams through the mesh"
            found.append(check(self.node, f"{self.service}-upstreams", name, status, output, self.service, "http"))
        return found

    def sidecar_checks(self) -> list[dict]:
        # agent/sidecar_service.go sidecarDefaultChecks: a TCP check of Envoy's public listener and
        # an alias of the service's own health (the alias turns warning or critical with it).
        proxy = f"{self.service}-sidecar-proxy"
        listening = (
            "TCP connect 127.0.0.1:21000: Success"
            if self.sidecar == "passing"
            else "dial tcp 127.0.0.1:21000: connect: connection refused"
        )
        statuses = [c["Status"] for c in self.service_checks()]
        alias = "critical" if "critical" in statuses else "warning" if "warning" in statuses else "passing"
        return [
            check(
                self.node, f"service:{proxy}:1", "Connect Sidecar Listening", str(self.sidecar), listening, proxy, "tcp"
            ),
            check(
                self.node, f"service:{proxy}:2", f"Connect Sidecar Aliasing {self.service}", alias, "", proxy, "alias"
            ),
        ]


@dataclass
class FakeHealthApi:
    """Consul's health endpoints as the gate reads them, for the `instances` that have joined.

    ACLs as Consul applies them to these reads: a token it does not know is refused with 403 "ACL
    not found" (ResolveTokenAndDefaultMeta fails: agent/consul/health_endpoint.go); no token is the
    anonymous token, whose results are filtered by ACLs (filterACL) down to nothing under a deny
    default, answered 200 with an empty list, and without the X-Consul-Results-Filtered-By-ACLs
    header, which is only set for an authenticated caller (agent/agent_endpoint.go).
    """

    instances: list[Instance] = field(default_factory=list)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def entry(self, instance: Instance, sidecar: bool) -> dict:
        """A ServiceEntry (api/health.go): Node, Service, and the node's and the service's checks."""
        name = f"{instance.service}-sidecar-proxy" if sidecar else instance.service
        service: dict[str, Any] = {
            "Kind": "connect-proxy" if sidecar else "",
            "ID": name,
            "Service": name,
            "Tags": [],
            "Address": "",
            "Meta": None,
            "Port": 21000 if sidecar else instance.port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {},
            "PeerName": "",
            "CreateIndex": 20,
            "ModifyIndex": 20,
        }
        if sidecar:
            service["Proxy"] = {
                "DestinationServiceName": instance.service,
                "DestinationServiceID": instance.service,
                "LocalServiceAddress": "127.0.0.1",
                "LocalServicePort": instance.port,
                "Mode": "transparent",
                "TransparentProxy": {"OutboundListenerPort": 15001},
            }
        node = {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": instance.node,
            "Address": "10.42.1.20",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.42.1.20", "wan": "10.42.1.20"},
            "Meta": {"consul-network-segment": "", **instance.meta},
            "CreateIndex": 10,
            "ModifyIndex": 12,
        }
        checks = instance.sidecar_checks() if sidecar else instance.service_checks()
        return {"Node": node, "Service": service, "Checks": instance.node_checks() + checks}

    def service(self, name: str, node_meta: list[str] = ()) -> list[dict]:  # type: ignore[assignment]
        # node-meta=key:value filters, every one to match: the key is what precedes the first ':'
        # (hashicorp/consul agent/http.go parseMetaFilter, ParseMetaPair; state store
        # structs.SatisfiesMetaFilters).
        wanted = dict(pair.partition(":")[::2] for pair in node_meta)
        found = []
        for instance in self.instances:
            if any(instance.meta.get(k) != v for k, v in wanted.items()):
                continue
            if instance.registered and name == instance.service:
                found.append(self.entry(instance, sidecar=False))
            elif instance.registered and instance.sidecar is not None and name == f"{instance.service}-sidecar-proxy":
                found.append(self.entry(instance, sidecar=True))
        return found

    def node(self, name: str) -> list[dict]:
        for instance in self.instances:
            if instance.node == name:
                return instance.node_checks() + instance.service_checks()
        return []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.headers.get("X-Consul-Token")
                path = urllib.parse.urlsplit(self.path).path
                node_meta = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("node-meta", [])
                api.requests.append((path, token))
                kind, _, name = path.removeprefix("/v1/health/").partition("/")
                if kind not in ("service", "node") or not name:
                    self.answer(404, "Not found")
                elif token is not None and token != TOKEN:
                    self.answer(403, ACL_NOT_FOUND)
                elif token is None:
                    self.answer(200, "[]")  # anonymous: filtered down to nothing
                else:
                    name = urllib.parse.unquote(name)
                    answer = api.service(name, node_meta) if kind == "service" else api.node(name)
                    self.answer(200, json.dumps(answer))

            def answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


WEB_PROBE_OK = (
    "passing",
    "HTTP GET http://127.0.0.1:9090/upstreams: 200 OK Output: 1 of 1 upstreams reached through the mesh\n"
    'ok http://api.virtual.consul/health: HTTP 200 {"name": "api", "status": "ok"}',
)
WEB_PROBE_DNS = (
    "warning",
    "HTTP GET http://127.0.0.1:9090/upstreams: 429 Too Many Requests Output: 0 of 1 upstreams reached "
    "through the mesh\nFAIL http://api.virtual.consul/health: <urlopen error [Errno -2] Name or service not known>",
)
WANTED = [Expectation("api", 1, (API,)), Expectation("web", 1, (WEB,), probe=True)]


def healthy_mesh() -> FakeHealthApi:
    return FakeHealthApi([Instance("api", API, port=8080), Instance("web", WEB, probe=WEB_PROBE_OK)])


class Consoles:
    """A console fetcher that records what it was asked."""

    def __init__(self, text: str = "cloud-init: consul-login failed") -> None:
        self.asked: list[str] = []
        self.text = text

    def __call__(self, instance_id: str) -> str:
        self.asked.append(instance_id)
        return self.text


def poll(api: FakeHealthApi, pki: dict[str, Path], wanted: list[Expectation] = WANTED, **kwargs: Any) -> str:
    """wait_for_mesh against `api` over HTTPS with the cluster's CA, on a fake clock: 30 s, 5 s steps."""
    clock = FakeClock()
    options: dict[str, Any] = {"console": Consoles(), "clock": clock, "sleep": clock.sleep, **kwargs}
    with serving(None, tls=server_tls(pki), handler=api.handler()) as server:  # type: ignore[arg-type]
        addr = f"https://127.0.0.1:{server.server_port}"
        return wait_for_mesh(addr, options.pop("token", TOKEN), pki["ca.pem"].read_text(), wanted, 30, **options)


def failure(api: FakeHealthApi, pki: dict[str, Path], **kwargs: Any) -> str:
    with pytest.raises(ConsulNotReadyError) as err:
        poll(api, pki, **kwargs)
    message = str(err.value)
    assert TOKEN not in message
    return message


def line_of(message: str, service: str) -> str:
    (line,) = [line for line in message.splitlines() if line.startswith(f"  - service {service}:")]
    return line


# --- the poller -------------------------------------------------------------------------------------


def test_a_working_mesh_is_ready_at_the_first_look_asked_with_the_token(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    assert poll(api, pki) == "api: 1 ready, web: 1 ready"
    assert sorted(path for path, _ in api.requests) == [
        "/v1/health/service/api",
        "/v1/health/service/api-sidecar-proxy",
        "/v1/health/service/web",
        "/v1/health/service/web-sidecar-proxy",
    ]
    assert {token for _, token in api.requests} == {TOKEN}


def test_an_instance_that_never_joined_is_named_with_its_console_output(pki: dict[str, Path]) -> None:
    api = FakeHealthApi([Instance("web", WEB, probe=WEB_PROBE_OK)])  # api's VM never logged in
    consoles = Consoles("[  OK  ] Started consul-login.service\nconsul-login: AWS region not found")
    message = failure(api, pki, console=consoles)
    assert message.startswith("The mesh (asked of https://127.0.0.1:")
    assert "was not ready after 30 s (7 attempts)" in message
    line = line_of(message, "api")
    assert f"boot or login: instance {API} never joined (no node api-{API} in Consul)" in line
    assert "`journalctl -u consul-login -u consul`" in line
    assert "web" not in [m.split(":")[0].removeprefix("  - service ") for m in message.splitlines() if "service" in m]
    # The console is asked once, at the end, for that instance only.
    assert consoles.asked == [API]
    assert f"Console output of {API} (last 25 lines):\n    | [  OK  ] Started consul-login.service\n" in message
    assert "    | consul-login: AWS region not found" in message
    assert "meshReadyTimeoutSeconds" in message
    assert ("/v1/health/node/api-" + API, TOKEN) in api.requests


def test_a_node_without_its_service_or_with_a_dead_agent_says_so(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    api.instances[0].registered = False
    line = line_of(failure(api, pki), "api")
    assert f"service registration: node api-{API} is in Consul without service api" in line
    api.instances[0].serf = "critical"
    line = line_of(failure(api, pki), "api")
    assert f'agent: node api-{API}: check "Serf Health Status" is critical: Agent not live or unreachable' in line


def test_a_missing_sidecar_is_envoys_step(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    api.instances[0].sidecar = None
    line = line_of(failure(api, pki), "api")
    assert f"Envoy: no api-sidecar-proxy registered on node api-{API}" in line
    assert "journalctl -u envoy@<name>" in line


def test_a_sidecar_whose_envoy_does_not_listen_is_envoys_step_with_the_checks_output(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    api.instances[1].sidecar = "critical"
    line = line_of(failure(api, pki), "web")
    assert (
        f'Envoy: web-sidecar-proxy on node web-{WEB}: check "Connect Sidecar Listening" is critical: '
        "dial tcp 127.0.0.1:21000: connect: connection refused"
    ) in line


def test_the_first_missing_step_is_named_not_a_later_one(pki: dict[str, Path]) -> None:
    """The app's check fails and Envoy is down: the application comes first."""
    api = healthy_mesh()
    api.instances[1].app, api.instances[1].sidecar = "critical", "critical"
    line = line_of(failure(api, pki), "web")
    assert line.startswith("  - service web: application:") and "Envoy" not in line


def test_a_probe_warning_is_the_upstream_step_with_the_probes_output(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    api.instances[1].probe = WEB_PROBE_DNS
    message = failure(api, pki)
    line = line_of(message, "web")
    # The sidecar's alias check is warning too, mirroring the probe: it is not taken for Envoy's.
    assert line.startswith("  - service web: upstream probe: ")
    assert (
        'check "web calls its upstreams through the mesh" is warning: HTTP GET http://127.0.0.1:9090/upstreams: '
        in line
    )
    assert "429 Too Many Requests" in line and "Name or service not known" in line
    assert "points at DNS" in line and "at the redirect" in line and "at the intentions" in line
    assert "service api:" not in message


def test_a_probe_that_is_not_awaited_does_not_hold_the_gate(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    api.instances[1].probe = WEB_PROBE_DNS
    assert poll(api, pki, wanted=[Expectation("web", 1, (WEB,), probe=False)]) == "web: 1 ready"


def test_a_probe_the_vm_does_not_have_is_named(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    api.instances[1].probe = None
    assert f"upstream probe: node web-{WEB} has no check web-upstreams" in line_of(failure(api, pki), "web")


def test_every_service_gets_its_own_line(pki: dict[str, Path]) -> None:
    api = FakeHealthApi([Instance("web", WEB, sidecar=None)])
    message = failure(api, pki)
    assert "boot or login" in line_of(message, "api") and "Envoy" in line_of(message, "web")


def test_the_mesh_comes_up_while_the_gate_waits(pki: dict[str, Path]) -> None:
    api = FakeHealthApi([])
    clock = FakeClock()
    boot = [
        lambda: api.instances.append(Instance("api", API, port=8080, sidecar="critical")),
        lambda: api.instances.append(Instance("web", WEB, probe=WEB_PROBE_DNS)),
        lambda: setattr(api.instances[0], "sidecar", "passing"),
        lambda: setattr(api.instances[1], "probe", WEB_PROBE_OK),
    ]

    def step(seconds: float) -> None:
        clock.sleep(seconds)
        boot[len(clock.sleeps) - 1]()

    assert poll(api, pki, clock=clock, sleep=step, interval_seconds=5) == "api: 1 ready, web: 1 ready"
    assert clock.sleeps == [5, 5, 5, 5]


def test_a_token_consul_does_not_know_is_shown_as_its_answer_never_as_the_token(pki: dict[str, Path]) -> None:
    api = healthy_mesh()
    wrong = "99999999-8888-4777-8666-555555555555"
    message = failure(api, pki, token=wrong)
    assert f"GET /v1/health/service/api answered HTTP 403: {ACL_NOT_FOUND}" in message and wrong not in message


def test_without_a_token_consul_shows_nothing_so_nothing_is_ever_ready(pki: dict[str, Path]) -> None:
    """Why the gate must send the token: the anonymous token sees no node at all (ACLs filter it)."""
    message = failure(healthy_mesh(), pki, token="")
    assert "never joined" in line_of(message, "api") and "never joined" in line_of(message, "web")


def test_a_certificate_the_clusters_ca_did_not_sign_fails_at_once(pki: dict[str, Path]) -> None:
    clock = FakeClock()
    with serving(None, tls=server_tls(pki), handler=healthy_mesh().handler()) as server:  # type: ignore[arg-type]
        with pytest.raises(ConsulNotReadyError, match="does not verify against the cluster's CA"):
            wait_for_mesh(
                f"https://127.0.0.1:{server.server_port}",
                TOKEN,
                pki["other-ca.pem"].read_text(),
                WANTED,
                600,
                Consoles(),
                clock=clock,
                sleep=clock.sleep,
            )
    assert clock.sleeps == []


def test_the_console_is_shown_without_the_token(pki: dict[str, Path]) -> None:
    api = FakeHealthApi([Instance("web", WEB, probe=WEB_PROBE_OK)])
    message = failure(api, pki, console=Consoles(f"a user script echoing CONSUL_HTTP_TOKEN={TOKEN}"))
    assert "    | a user script echoing CONSUL_HTTP_TOKEN=<token>" in message


# --- the probe check on the VM ----------------------------------------------------------------------


def service_file(**overrides: Any) -> dict[str, Any]:
    the_recipe = recipe(**overrides)
    text = unpack_cloud_config(render_cloud_config(the_recipe))[f"/etc/consul.d/service-{the_recipe.service.name}.hcl"]
    (service,) = hcl2.loads(text)["service"]
    return service


def test_the_demo_app_registers_its_upstream_probe_beside_its_health_check() -> None:
    service = service_file()
    (app,) = service["check"]
    (probe,) = service["checks"]
    assert app["http"] == '"http://127.0.0.1:9090/health"'
    assert probe["id"] == '"web-upstreams"' and probe["http"] == '"http://127.0.0.1:9090/upstreams"'
    # The app gives each upstream 3 s (scripts/mesh-demo-app.py): it answers before the check times out.
    assert (probe["interval"], probe["timeout"]) == ('"10s"', '"5s"')


def test_no_probe_without_upstreams_or_for_a_custom_app() -> None:
    assert "checks" not in service_file(upstreams=())
    assert "checks" not in service_file(app=AppSpec(command="/opt/app/bin/server", health_check_path=None))


# --- EC2 console output, with botocore's Stubber (the EC2 API model checks each call) --------------


def ec2_client() -> Any:
    return boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x")


def test_the_console_tail_asks_for_the_latest_output_and_decodes_it() -> None:
    client = ec2_client()
    lines = [f"line {i}" for i in range(40)] + ["\x1b[0;32m  OK  \x1b[0m] Started consul.service\r"]
    # GetConsoleOutput answers the output base64-encoded (botocore decodes it after the call).
    encoded = base64.b64encode("\n".join(lines).encode()).decode()
    with Stubber(client) as stub:
        stub.add_response(
            "get_console_output",
            {"InstanceId": API, "Output": encoded, "Timestamp": datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)},
            {"InstanceId": API, "Latest": True},
        )
        tail = console_tail(client, API)
        stub.assert_no_pending_responses()
    shown = tail.splitlines()
    assert len(shown) == 25 and shown[0] == "line 16"
    assert shown[-1] == " [0;32m  OK   [0m] Started consul.service"


def test_a_console_that_cannot_be_read_says_why() -> None:
    client = ec2_client()
    with Stubber(client) as stub:
        stub.add_client_error(
            "get_console_output",
            service_error_code="UnauthorizedOperation",
            service_message="You are not authorized to perform this operation.",
            expected_params={"InstanceId": API, "Latest": True},
        )
        tail = console_tail(client, API)
    assert tail.startswith("(console output unavailable: ") and "UnauthorizedOperation" in tail


def test_an_empty_console_says_so() -> None:
    client = ec2_client()
    with Stubber(client) as stub:
        stub.add_response("get_console_output", {"InstanceId": API}, {"InstanceId": API, "Latest": True})
        assert console_tail(client, API) == "(no console output yet)"


# --- the dynamic provider ------------------------------------------------------------------------------


def props(**changes: Any) -> dict[str, Any]:
    return {
        "http_addr": "https://203.0.113.10:8501",
        "token": TOKEN,
        "ca_pem": "ca",
        "region": "eu-west-1",
        "instances": {"api": [API], "web": [WEB]},
        "expected": {"api": 1, "web": 1},
        "probes": ["web"],
        "intentions": ["web->api:allow"],
        "timeout_seconds": 900,
        **changes,
    }


def test_the_gate_waits_again_when_instances_services_or_intentions_change() -> None:
    provider = MeshReadyProvider()
    old = {**props(), "seen": "api: 1 ready, web: 1 ready"}
    assert provider.diff("id", old, props()).changes is False
    assert provider.diff("id", old, props(timeout_seconds=60, token="rotated")).changes is False
    for changed in (
        {"instances": {"api": ["i-0new"], "web": [WEB]}},
        {"expected": {"api": 1, "web": 1, "db": 1}},
        {"probes": []},
        {"intentions": ["web->api:deny"]},
        {"http_addr": "https://198.51.100.1:8501"},
    ):
        result = provider.diff("id", old, props(**changed))
        assert result.changes is True and not result.replaces, changed


def test_create_polls_with_the_inputs_and_names_the_region_of_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def wait(
        http_addr: str, token: str, ca_pem: str | None, wanted: list[Expectation], timeout: float, console: Any
    ) -> str:
        calls.append((http_addr, token, ca_pem, wanted, timeout))
        return "ready"

    monkeypatch.setattr(mesh_ready, "wait_for_mesh", wait)
    created = MeshReadyProvider().create(props())
    assert calls == [("https://203.0.113.10:8501", TOKEN, "ca", WANTED, 900.0)]
    assert created.outs["seen"] == "ready" and created.outs["instances"] == {"api": [API], "web": [WEB]}


# --- what the spec expects, and the wiring ----------------------------------------------------------


def test_the_probe_is_awaited_where_every_upstream_is_allowed() -> None:
    spec = load_spec(DEMO)
    assert probed_services(spec.services, spec.intentions) == ["web"]
    assert probed_services(spec.services, []) == []  # no allow intention: web's probe stays warning
    custom = load_spec(
        {**DEMO, "services": {**DEMO["services"], "web": {**DEMO["services"]["web"], "command": "/bin/app"}}}
    )
    assert probed_services(custom.services, custom.intentions) == []  # a custom app has no probe endpoint


def test_the_gate_depends_on_every_vm_instance_the_intentions_and_the_defaults() -> None:
    record = first_up(DEMO).record
    gate = named(record, "mesh-ready")
    assert gate.type == GATE
    for needed in ("api-instance", "web-instance", "intentions-api", "defaults-mesh"):
        assert named(record, needed).urn in gate.needs, needed
    assert gate.inputs["instances"] == {"api": ["api-instance-id"], "web": ["web-instance-id"]}
    assert gate.inputs["expected"] == {"api": 1, "web": 1} and gate.inputs["probes"] == ["web"]
    assert gate.inputs["intentions"] == ["web->api:allow"] and gate.inputs["timeout_seconds"] == 900
    assert gate.inputs["region"] == "us-east-1" and "token" in gate.secret_inputs


def test_a_preview_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview calls the provider's diff only (the engine creates and updates in an update)."""

    def refuse(*_args: Any, **_kwargs: Any) -> str:
        raise AssertionError("the gate polled")

    monkeypatch.setattr(mesh_ready, "wait_for_mesh", refuse)
    previewed = plan(DEMO, {**DEMO, "envoyVersion": "1.35.4"}, preview=True)
    assert "mesh-ready" in previewed.updated  # replaced VMs: their ids are unknown, the gate will wait


class Wiring(MockedTestCase):
    config = DEMO

    async def test_the_gate_is_declared_and_awaits_the_stacks_api(self) -> None:
        from components import program

        outputs = program.main(deployer_lookup=lambda: "198.51.100.7/32")
        await value(outputs)
        (gate,) = self.mocks.of_type(GATE)
        assert gate.name == "mesh-ready"
        assert gate.inputs["http_addr"] == await value(outputs["consulHttpAddr"])

    async def test_a_timeout_of_zero_declares_no_gate(self) -> None:
        from components import program

        self.set_config({**DEMO, "meshReadyTimeoutSeconds": 0})
        await value(program.main(deployer_lookup=lambda: "198.51.100.7/32"))
        assert self.mocks.of_type(GATE) == []
        assert self.mocks.of_type("pulumi-python:dynamic/consul-tproxy-vms:ConsulReady")


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("30", "meshReadyTimeoutSeconds: 30 is too short for a VM to boot and join: 0 (no wait) or 60-7200 seconds"),
        ("soon", 'meshReadyTimeoutSeconds: "soon" must be an integer (seconds to wait for the mesh)'),
        (9000, "meshReadyTimeoutSeconds: 9000 is out of range: seconds to wait for the mesh is 0-7200"),
    ],
)
def test_the_timeout_is_validated_naming_the_key_and_value(raw: Any, problem: str) -> None:
    with pytest.raises(MeshSpecError) as err:
        load_spec({**DEMO, "meshReadyTimeoutSeconds": raw})
    assert err.value.problems == [problem]


def test_the_timeout_defaults_to_fifteen_minutes_and_zero_turns_it_off() -> None:
    assert load_spec(DEMO).mesh_ready_timeout_seconds == 900
    assert load_spec({**DEMO, "meshReadyTimeoutSeconds": "0"}).mesh_ready_timeout_seconds == 0
    assert load_spec({**DEMO, "meshReadyTimeoutSeconds": "60"}).mesh_ready_timeout_seconds == 60


def test_a_group_counts_its_nodes_of_the_current_recipe_alone(pki: dict[str, Path]) -> None:
    """A group's Expectation counts nodes with its group's and current recipe's metadata: not the
    lone VM it replaces, nor the VMs of the recipe an instance refresh is replacing."""
    group = {"tproxy-vms-group": "g-api-0a1b2c3d"}
    new, old = {**group, "tproxy-vms-recipe": "new"}, {**group, "tproxy-vms-recipe": "old"}
    wanted = [Expectation("api", 2, (), node_meta=tuple(sorted(new.items())))]
    api = FakeHealthApi(
        [
            Instance("api", "i-0000000000000000a", port=8080),  # the lone VM, not yet deleted
            Instance("api", "i-0000000000000000b", port=8080, meta=old),
            Instance("api", "i-0000000000000000c", port=8080, meta=old),
            Instance("api", "i-0000000000000000d", port=8080, meta=new),
        ]
    )
    assert "1 of 2 instances registered and passing" in line_of(failure(api, pki, wanted=wanted), "api")
    api.instances.append(Instance("api", "i-0000000000000000e", port=8080, meta=new))
    assert poll(api, pki, wanted)
