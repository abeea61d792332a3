"""The readiness gate's poller, against real HTTP(S) servers on 127.0.0.1 that play a booting Consul."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pulumi.dynamic.dynamic import serialize_provider

from components import readiness
from components.readiness import (
    ConsulNotReadyError,
    ConsulReadyProvider,
    ServerReadyProvider,
    check_once,
    wait_until_ready,
    wait_until_server_healthy,
)
from tests.conftest import ROOT, tool

TOKEN = "11111111-2222-4333-8444-555555555555"
OTHER_TOKEN = "99999999-8888-4777-8666-555555555555"
# What Consul answers before the bootstrap (consul/acl_server.go wraps acl.ErrNotFound) and after it.
NOT_BOOTSTRAPPED = (
    "ACL system must be bootstrapped before making any requests that require authorization: ACL not found"
)
NO_LONGER_ALLOWED = "Permission denied: ACL bootstrap no longer allowed (reset index: 13)"
LEADER = "10.42.1.10:8300"


class FakeConsul:
    """What a booting server answers: no leader, then a leader, then bootstrapped ACLs.

    `servers` is autopilot's view: node name -> (healthy, voter); the cluster is healthy when every
    listed server is a healthy voter. `management_token` is the token the ACL system was
    bootstrapped with (by `acl_bootstrapped = True`, or by PUT /v1/acl/bootstrap, whose bodies are
    kept in `bootstraps`). `queued` holds answers ("METHOD path" -> [(status, body)]) given before
    the normal ones, one per request.
    """

    def __init__(self) -> None:
        self.leader = ""
        self.acl_bootstrapped = False
        self.management_token = TOKEN
        self.servers: dict[str, tuple[bool, bool]] = {}
        self.requests: list[str] = []
        self.bootstraps: list[dict[str, object]] = []
        self.queued: dict[str, list[tuple[int, str]]] = {}

    def autopilot(self) -> tuple[int, dict[str, object]]:
        healthy = bool(self.servers) and all(h and v for h, v in self.servers.values())
        report = {
            "Healthy": healthy,
            "FailureTolerance": max(0, (len(self.servers) - 1) // 2) if healthy else 0,
            "Servers": [{"Name": n, "Healthy": h, "Voter": v} for n, (h, v) in sorted(self.servers.items())],
        }
        # Consul answers 429 with the same report when the cluster is not healthy.
        return (200 if healthy else 429), report


def _handler(state: FakeConsul) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _queued(self, key: str) -> bool:
            answers = state.queued.get(key)
            if answers:
                self._answer(*answers.pop(0))
                return True
            return False

        def do_PUT(self) -> None:
            state.requests.append(f"PUT {self.path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/acl/bootstrap":
                self._answer(404, "not found")
                return
            state.bootstraps.append(json.loads(body) if body else {})
            if self._queued(f"PUT {self.path}"):
                return
            if not state.leader:
                self._answer(500, "No cluster leader")
            elif state.acl_bootstrapped:
                self._answer(403, NO_LONGER_ALLOWED)
            else:
                secret = str(state.bootstraps[-1].get("BootstrapSecret") or "generated-secret")
                state.acl_bootstrapped, state.management_token = True, secret
                self._answer(200, json.dumps({"AccessorID": "acc-1", "SecretID": secret, "ID": secret}))

        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self._queued(f"GET {self.path}"):
                return
            if self.path == "/v1/status/leader":
                self._answer(200, json.dumps(state.leader))
            elif self.path == "/v1/operator/autopilot/health":
                if not state.leader:
                    self._answer(500, "No cluster leader")
                elif self.headers.get("X-Consul-Token") != state.management_token:
                    self._answer(403, "Permission denied")
                else:
                    status, report = state.autopilot()
                    self._answer(status, json.dumps(report))
            elif self.path == "/v1/acl/token/self":
                if not state.acl_bootstrapped:
                    self._answer(403, NOT_BOOTSTRAPPED)
                elif self.headers.get("X-Consul-Token") != state.management_token:
                    self._answer(403, "ACL not found")
                else:
                    self._answer(200, json.dumps({"SecretID": state.management_token}))
            else:
                self._answer(404, "not found")

        def _answer(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def free_port() -> int:
    """A port nothing listens on (yet): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    state: FakeConsul,
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    handler: type[BaseHTTPRequestHandler] | None = None,
) -> Iterator[ThreadingHTTPServer]:
    """Serve `state` (or `handler`, another stand-in's) on 127.0.0.1, over TLS with `tls`."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler or _handler(state))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class FakeClock:
    """Time that passes only when the poller sleeps, so the tests never wait for real."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_refused_then_no_leader_then_leader_then_acls_is_ready() -> None:
    state = FakeConsul()
    port = free_port()
    clock = FakeClock()
    stack: list[object] = []

    def boot_step(seconds: float) -> None:
        # Each sleep moves the fake server one step further through its boot.
        clock.sleep(seconds)
        step = len(clock.sleeps)
        if step == 1:
            stack.append(serving(state, port))
            stack[-1].__enter__()  # type: ignore[attr-defined]
        elif step == 2:
            state.leader = LEADER
        elif step == 3:
            state.acl_bootstrapped = True

    try:
        leader = wait_until_ready(
            f"http://127.0.0.1:{port}",
            TOKEN,
            None,
            timeout_seconds=600,
            interval_seconds=5,
            clock=clock,
            sleep=boot_step,
        )
    finally:
        for server in stack:
            server.__exit__(None, None, None)  # type: ignore[attr-defined]
    assert leader == LEADER
    assert clock.sleeps == [5, 5, 5]
    # Attempt 1 was refused; 2 saw no leader; 3 a leader but no ACLs; 4 both.
    assert state.requests == [
        "/v1/status/leader",
        "/v1/status/leader",
        "/v1/acl/token/self",
        "/v1/status/leader",
        "/v1/acl/token/self",
    ]


def test_never_ready_fails_at_the_deadline_with_what_it_last_saw() -> None:
    state = FakeConsul()
    clock = FakeClock()
    with serving(state) as server:
        with pytest.raises(ConsulNotReadyError) as err:
            wait_until_ready(
                f"http://127.0.0.1:{server.server_port}",
                TOKEN,
                None,
                timeout_seconds=30,
                interval_seconds=4,
                clock=clock,
                sleep=clock.sleep,
            )
    message = str(err.value)
    assert "was not ready after 30 s" in message
    assert "have not elected a leader" in message
    assert "consulReadyTimeoutSeconds" in message
    # It polled until the deadline and no further: 4 s steps, the last one cut to the 2 s left.
    assert clock.sleeps == [4, 4, 4, 4, 4, 4, 4, 2]
    assert clock.now == 30


def test_unreachable_server_times_out_naming_the_address() -> None:
    port = free_port()
    clock = FakeClock()
    with pytest.raises(ConsulNotReadyError, match=rf"cannot reach http://127\.0\.0\.1:{port}"):
        wait_until_ready(f"http://127.0.0.1:{port}", TOKEN, None, 10, 5, clock=clock, sleep=clock.sleep)


def test_a_token_the_cluster_does_not_know_is_not_ready() -> None:
    state = FakeConsul()
    state.leader = LEADER
    state.acl_bootstrapped = True
    clock = FakeClock()
    with serving(state) as server:
        addr = f"http://127.0.0.1:{server.server_port}"
        assert check_once(addr, TOKEN, None) == LEADER
        with pytest.raises(ConsulNotReadyError, match=r"does not accept the token yet .*HTTP 403: ACL not found"):
            wait_until_ready(addr, "wrong-token", None, 10, 5, clock=clock, sleep=clock.sleep)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA (openssl)."""
    openssl = tool("openssl")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    for ca in ("ca", "other-ca"):
        run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
        )  # fmt: skip
    run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=server.dc1.consul", "-keyout", "server.key", "-out", "server.csr",
    )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:server.dc1.consul,IP:127.0.0.1\n")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "san.ext", "-out", "server.pem",
    )  # fmt: skip
    return {name: d / name for name in ("ca.pem", "other-ca.pem", "server.pem", "server.key")}


def server_tls(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server.pem"], pki["server.key"])
    return context


def test_https_is_verified_against_the_clusters_ca(pki: dict[str, Path]) -> None:
    state = FakeConsul()
    state.leader = LEADER
    state.acl_bootstrapped = True
    with serving(state, tls=server_tls(pki)) as server:
        addr = f"https://127.0.0.1:{server.server_port}"
        assert check_once(addr, TOKEN, pki["ca.pem"].read_text()) == LEADER
        # Without the cluster's CA the system store does not trust the server: fail, never fall back.
        clock = FakeClock()
        with pytest.raises(ConsulNotReadyError, match="does not verify against the cluster's CA"):
            wait_until_ready(addr, TOKEN, pki["other-ca.pem"].read_text(), 600, 5, clock=clock, sleep=clock.sleep)
        # A wrong CA cannot be fixed by waiting: it fails at the first attempt.
        assert clock.sleeps == []


def test_the_provider_survives_pulumis_serialization_and_waits_in_a_fresh_process() -> None:
    """The engine runs dynamic providers in another process from the dill-pickled provider."""
    state = FakeConsul()
    state.leader = LEADER
    state.acl_bootstrapped = True
    serialized = serialize_provider(ConsulReadyProvider())
    props = {"http_addr": "", "token": TOKEN, "ca_pem": None, "timeout_seconds": 5, "triggers": ["i-0abc"]}
    script = (
        "import base64, json, sys, dill\n"
        "provider = dill.loads(base64.b64decode(sys.argv[1]))\n"
        "result = provider.create(json.loads(sys.argv[2]))\n"
        "print(json.dumps({'id': result.id, 'outs': result.outs}))\n"
    )
    with serving(state) as server:
        props["http_addr"] = f"http://127.0.0.1:{server.server_port}"
        done = subprocess.run(
            [sys.executable, "-c", script, serialized, json.dumps(props)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["id"] == props["http_addr"]
    assert result["outs"]["leader"] == LEADER
    assert result["outs"]["triggers"] == ["i-0abc"]


def test_diff_waits_again_when_the_cluster_or_the_token_changes() -> None:
    provider = ConsulReadyProvider()
    old = {"http_addr": "https://1.2.3.4:8501", "token": "a", "ca_pem": "ca", "triggers": ["i-1"], "leader": LEADER}
    assert provider.diff("id", old, {**old, "leader": None}).changes is False
    assert provider.diff("id", old, {**old, "timeout_seconds": 60}).changes is False
    # A rotated consulToken (existing cluster) is checked again, and stored for the next diff.
    assert provider.diff("id", old, {**old, "token": "b"}).changes is True
    assert provider.diff("id", old, {**old, "triggers": ["i-2"]}).changes is True
    assert provider.diff("id", old, {**old, "http_addr": "https://5.6.7.8:8501"}).changes is True
    assert provider.diff("id", old, {**old, "expect_voters": 3}).changes is True


def ready_cluster(*servers: str) -> FakeConsul:
    state = FakeConsul()
    state.leader = LEADER
    state.acl_bootstrapped = True
    state.servers = {name: (True, True) for name in servers}
    return state


def test_the_cluster_gate_waits_for_the_expected_healthy_voters() -> None:
    state = ready_cluster("consul-server-0")
    state.servers["consul-server-1"] = (True, False)  # joined, not yet promoted by autopilot
    clock = FakeClock()
    with serving(state) as server:
        addr = f"http://127.0.0.1:{server.server_port}"
        assert check_once(addr, TOKEN, None) == LEADER  # without expect_voters: leader and ACLs suffice
        with pytest.raises(ConsulNotReadyError, match=r"autopilot reports 1 of 2 servers as healthy voters"):
            wait_until_ready(addr, TOKEN, None, 10, 5, clock=clock, sleep=clock.sleep, expect_voters=2)
        state.servers["consul-server-1"] = (True, True)
        assert check_once(addr, TOKEN, None, expect_voters=2) == LEADER


def test_a_server_gate_waits_until_its_replaced_server_is_a_healthy_voter_again() -> None:
    state = ready_cluster("consul-server-0", "consul-server-2")
    clock = FakeClock()

    def replacement_boots(seconds: float) -> None:
        # The replaced server first appears unhealthy (autopilot still has the old one), then recovers.
        clock.sleep(seconds)
        step = len(clock.sleeps)
        if step == 1:
            state.servers["consul-server-1"] = (False, True)
        elif step == 2:
            state.servers["consul-server-1"] = (True, False)
        elif step == 3:
            state.servers["consul-server-1"] = (True, True)

    with serving(state) as server:
        seen = wait_until_server_healthy(
            f"http://127.0.0.1:{server.server_port}",
            TOKEN,
            None,
            "consul-server-1",
            timeout_seconds=600,
            interval_seconds=5,
            clock=clock,
            sleep=replacement_boots,
        )
    assert seen == "consul-server-1 healthy voter; failure tolerance 1"
    assert clock.sleeps == [5, 5, 5]


def test_a_server_gate_that_never_sees_its_server_fails_saying_so() -> None:
    state = ready_cluster("consul-server-0")
    clock = FakeClock()
    with serving(state) as server, pytest.raises(ConsulNotReadyError, match="autopilot does not list consul-server-1"):
        wait_until_server_healthy(
            f"http://127.0.0.1:{server.server_port}",
            TOKEN,
            None,
            "consul-server-1",
            20,
            5,
            clock=clock,
            sleep=clock.sleep,
        )


def test_a_server_gate_waits_for_nothing_when_created_and_for_its_server_when_updated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Created on the first `up`: no server can be healthy before bootstrap_expect are up (no deadlock)."""
    waited: list[tuple[str, str]] = []

    def wait(http_addr: str, _token: str, _ca: str | None, node_name: str, _timeout: float) -> str:
        waited.append((http_addr, node_name))
        return f"{node_name} healthy voter"

    monkeypatch.setattr(readiness, "wait_until_server_healthy", wait)
    provider = ServerReadyProvider()
    props = {
        "http_addr": "https://203.0.113.10:8501",
        "token": TOKEN,
        "ca_pem": None,
        "node_name": "consul-server-1",
        "timeout_seconds": 600,
        "triggers": ["i-1"],
    }
    created = provider.create(props)
    assert created.id == "consul-server-1" and waited == []
    assert provider.diff("consul-server-1", created.outs, props).changes is False
    replaced = {**props, "triggers": ["i-2"]}
    assert provider.diff("consul-server-1", created.outs, replaced).changes is True
    updated = provider.update("consul-server-1", created.outs, replaced)
    assert waited == [("https://203.0.113.10:8501", "consul-server-1")]
    assert updated.outs["seen"] == "consul-server-1 healthy voter" and updated.outs["triggers"] == ["i-2"]


def test_the_gate_bootstraps_the_acls_with_the_stacks_token_once_a_leader_is_elected() -> None:
    state = FakeConsul()
    port = free_port()
    clock = FakeClock()
    stack: list[object] = []

    def boot_step(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 1:
            stack.append(serving(state, port))
            stack[-1].__enter__()  # type: ignore[attr-defined]
        elif len(clock.sleeps) == 2:
            state.leader = LEADER

    try:
        leader = wait_until_ready(
            f"http://127.0.0.1:{port}", TOKEN, None, 600, 5, clock=clock, sleep=boot_step, bootstrap=True
        )
    finally:
        for server in stack:
            server.__exit__(None, None, None)  # type: ignore[attr-defined]
    assert leader == LEADER
    assert clock.sleeps == [5, 5]
    # Exactly one bootstrap, with the stack's token as its secret, sent once a leader was elected.
    assert state.bootstraps == [{"BootstrapSecret": TOKEN}]
    assert state.requests == [
        "/v1/status/leader",
        "/v1/status/leader",
        "/v1/acl/token/self",
        "PUT /v1/acl/bootstrap",
        "/v1/acl/token/self",
    ]


def test_a_failed_bootstrap_is_retried_and_never_shows_the_token() -> None:
    state = FakeConsul()
    state.leader = LEADER
    # Answers that waiting can fix; the second echoes the secret, which must never be shown.
    state.queued["PUT /v1/acl/bootstrap"] = [(500, "No cluster leader"), (500, f"rpc error: bad secret {TOKEN}")]
    clock = FakeClock()
    with serving(state) as server:
        addr = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(ConsulNotReadyError) as err:
            wait_until_ready(addr, TOKEN, None, 5, 5, clock=clock, sleep=clock.sleep, bootstrap=True)
        assert "PUT /v1/acl/bootstrap answered HTTP 500: rpc error: bad secret <token>" in str(err.value)
        assert TOKEN not in str(err.value)
        assert wait_until_ready(addr, TOKEN, None, 600, 5, clock=clock, sleep=clock.sleep, bootstrap=True) == LEADER
    assert state.bootstraps == [{"BootstrapSecret": TOKEN}] * 3


def test_a_cluster_bootstrapped_with_another_token_fails_at_once_without_the_token() -> None:
    state = FakeConsul()
    state.leader = LEADER
    state.acl_bootstrapped, state.management_token = True, OTHER_TOKEN  # e.g. `consul acl bootstrap` by hand
    clock = FakeClock()
    with serving(state) as server, pytest.raises(ConsulNotReadyError) as err:
        addr = f"http://127.0.0.1:{server.server_port}"
        wait_until_ready(addr, TOKEN, None, 600, 5, clock=clock, sleep=clock.sleep, bootstrap=True)
    message = str(err.value)
    assert "was bootstrapped with another token" in message
    assert "ACL bootstrap no longer allowed" in message
    assert "reset index 13" in message and "acl-bootstrap-reset" in message
    assert "consul acl token create" in message
    assert TOKEN not in message and OTHER_TOKEN not in message
    assert clock.sleeps == []  # waiting cannot fix it
    assert state.bootstraps == [{"BootstrapSecret": TOKEN}]


def test_a_bootstrap_already_done_with_our_token_is_ready() -> None:
    """The bootstrap answered 'no longer allowed' but the token is accepted now (an earlier answer was lost)."""
    state = FakeConsul()
    state.leader = LEADER
    state.acl_bootstrapped = True
    state.queued["GET /v1/acl/token/self"] = [(403, NOT_BOOTSTRAPPED)]
    with serving(state) as server:
        assert check_once(f"http://127.0.0.1:{server.server_port}", TOKEN, None, bootstrap=True) == LEADER
    assert state.bootstraps == [{"BootstrapSecret": TOKEN}]


def test_an_existing_cluster_is_never_bootstrapped() -> None:
    state = FakeConsul()
    state.leader = LEADER
    clock = FakeClock()
    with serving(state) as server, pytest.raises(ConsulNotReadyError) as err:
        wait_until_ready(f"http://127.0.0.1:{server.server_port}", TOKEN, None, 20, 5, clock=clock, sleep=clock.sleep)
    assert "ACL system must be bootstrapped" in str(err.value) and TOKEN not in str(err.value)
    assert "PUT /v1/acl/bootstrap" not in state.requests and state.bootstraps == []
    assert not state.acl_bootstrapped


def test_the_provider_bootstraps_on_create_and_needs_no_bootstrap_on_update() -> None:
    state = FakeConsul()
    state.leader = LEADER
    provider = ConsulReadyProvider()
    with serving(state) as server:
        props = {
            "http_addr": f"http://127.0.0.1:{server.server_port}",
            "token": TOKEN,
            "ca_pem": None,
            "timeout_seconds": 5,
            "triggers": ["i-1"],
            "bootstrap": True,
        }
        created = provider.create(props)
        assert created.outs["leader"] == LEADER and created.outs["bootstrap"] is True
        assert state.bootstraps == [{"BootstrapSecret": TOKEN}]
        # A second `up` (a replaced server, a re-created gate): the token is accepted, no bootstrap.
        replaced = {**props, "triggers": ["i-2"]}
        assert provider.diff(props["http_addr"], created.outs, replaced).changes is True
        provider.update(props["http_addr"], created.outs, replaced)
        provider.create(props)
    assert state.bootstraps == [{"BootstrapSecret": TOKEN}]
    assert state.requests.count("PUT /v1/acl/bootstrap") == 1


def test_the_bootstrap_input_never_replaces_and_is_false_when_absent() -> None:
    provider = ConsulReadyProvider()
    old = {"http_addr": "https://1.2.3.4:8501", "token": "a", "ca_pem": "ca", "triggers": ["i-1"], "leader": LEADER}
    # A state written before the input existed: False is no change.
    assert provider.diff("id", old, {**old, "bootstrap": False}).changes is False
    assert provider.diff("id", {**old, "bootstrap": True}, {**old, "bootstrap": True}).changes is False
    flipped = provider.diff("id", old, {**old, "bootstrap": True})
    assert flipped.changes is True and not flipped.replaces
