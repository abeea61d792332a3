"""Readiness gates: dynamic resources that exist once Consul can take what comes after them.

ConsulReady: the cluster has a leader, its ACLs accept the token and (for servers the stack
created) autopilot reports every expected server a healthy voter. For servers the stack created it
also bootstraps the ACL system (`bootstrap`): the servers' configuration carries no initial
management token, so the gate sends `PUT /v1/acl/bootstrap` with the stack's token as the
`BootstrapSecret` once a leader is elected and the token is not accepted yet. The consul provider is ordered
after it (`depends_on`), so no token, policy, config entry or intention is sent before the servers
can take it. The provider's address and token are NOT read from the gate: they are values known at
preview (the API's fixed address, the token), so a preview with a replaced server shows what the
update will do, not an unknown provider and a change to every Consul object.

ServerReady: one per created server, the link of the one-at-a-time chain. Server i+1's instance
depends on server i's gate. Creating the gate waits for nothing: on the first `up` no server can
be healthy before `bootstrap_expect` servers are up, so a gate that waited there would deadlock the
chain (ConsulReady waits for the bootstrapped cluster at the end instead). Updating the gate, which
happens when its server was replaced (its `triggers` changed), waits until autopilot reports the
cluster healthy with that server a healthy voter again: only then is the next server touched.

The gates poll the HTTPS API with the cluster's CA until a deadline; they never sleep a fixed time
and fail with the last thing they saw. The polling is plain Python, tested against local HTTP
servers; the dynamic resources only call it from `create` and `update`.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

DEFAULT_INTERVAL_SECONDS = 5.0
# Per request: a server that accepts the connection but never answers must not eat the deadline.
REQUEST_TIMEOUT_SECONDS = 10.0
# Inputs whose change means "a different cluster, rebuilt servers, or a new token": wait again. The
# token is watched so that a rotated consulToken (existing-cluster mode) is checked and stored.
WATCHED_INPUTS = ("http_addr", "ca_pem", "token", "triggers", "expect_voters")
SERVER_WATCHED_INPUTS = ("http_addr", "ca_pem", "token", "node_name", "triggers")


class NotReady(Exception):
    """The cluster is not ready yet; the message says what was seen."""


class ConsulNotReadyError(RuntimeError):
    """The cluster did not become ready before the deadline, or cannot be trusted."""


# Consul's answer to a bootstrap once the ACL system is bootstrapped (structs.ACLBootstrapNotAllowedErr),
# sent as HTTP 403 "Permission denied: ACL bootstrap no longer allowed (reset index: N)".
BOOTSTRAP_NOT_ALLOWED = "ACL bootstrap no longer allowed"


def tls_context(http_addr: str, ca_pem: str | None) -> ssl.SSLContext | None:
    if not http_addr.startswith("https://"):
        return None
    # With a CA, trust only it (the cluster's own CA); without one, the system's store.
    return ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()


def http_get(url: str, context: ssl.SSLContext | None, token: str | None, timeout: float) -> tuple[int, str]:
    headers = {"X-Consul-Token": token} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _put_json(url: str, context: ssl.SSLContext | None, payload: dict[str, Any], timeout: float) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="PUT", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def shown(body: str, token: str) -> str:
    """An answer's body as it may appear in a message: trimmed, and never with the token in it."""
    text = body.strip()[:200]
    return text.replace(token, "<token>") if token else text


def _reset_index(body: str) -> str | None:
    match = re.search(r"reset index: (\d+)", body)
    return match.group(1) if match else None


@contextmanager
def talking_to(base: str) -> Iterator[None]:
    """Turn what a request can raise into NotReady (wait) or ConsulNotReadyError (waiting cannot help)."""
    try:
        yield
    except json.JSONDecodeError as err:
        raise NotReady(f"{base} answered something other than JSON ({err.msg})") from None
    except (OSError, http.client.HTTPException) as err:
        # urllib wraps the TLS failure in a URLError; unwrap it to tell it from "not listening yet".
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise ConsulNotReadyError(
                f"the server at {base} presented a certificate that does not verify against the cluster's CA: "
                f"{reason.verify_message or reason}"
            ) from None
        raise NotReady(f"cannot reach {base}: {reason}") from None


def autopilot_health(base: str, context: ssl.SSLContext | None, token: str, timeout: float) -> dict[str, Any]:
    """GET /v1/operator/autopilot/health (needs operator:read): Healthy, FailureTolerance and Servers.

    Consul answers 200 when the cluster is healthy and 429 with the same report when it is not.
    """
    status, body = http_get(f"{base}/v1/operator/autopilot/health", context, token, timeout)
    if status not in (200, 429):
        raise NotReady(f"GET /v1/operator/autopilot/health answered HTTP {status}: {body.strip()[:200]}")
    report = json.loads(body)
    if not isinstance(report, dict):
        raise NotReady("GET /v1/operator/autopilot/health answered something other than a report")
    return report


def healthy_voters(report: dict[str, Any]) -> list[str]:
    """Names of the servers autopilot reports as healthy voters."""
    return sorted(s.get("Name", "") for s in report.get("Servers") or [] if s.get("Healthy") and s.get("Voter"))


def bootstrap_acls(base: str, context: ssl.SSLContext | None, token: str, timeout: float) -> None:
    """PUT /v1/acl/bootstrap with `token` as the BootstrapSecret (ACL required: none).

    Returns when Consul made `token` its first management token. Raises ConsulNotReadyError when the
    cluster is already bootstrapped and does not accept `token` (bootstrapped with another token),
    NotReady for anything waiting can fix (no leader yet, a 5xx). The 200 answer holds the token: it
    is never shown.
    """
    status, body = _put_json(f"{base}/v1/acl/bootstrap", context, {"BootstrapSecret": token}, timeout)
    if status == 200:
        return
    if status == 403 and BOOTSTRAP_NOT_ALLOWED in body:
        # Bootstrapped already: by us (a re-run, or an earlier attempt whose answer was lost) if the
        # token is accepted now, else by someone else.
        self_status, _ = http_get(f"{base}/v1/acl/token/self", context, token, timeout)
        if self_status == 200:
            return
        index = _reset_index(body)
        raise ConsulNotReadyError(
            f"the ACL system of Consul at {base} was bootstrapped with another token: PUT /v1/acl/bootstrap "
            f"answered HTTP 403 ({shown(body, token)}) and /v1/acl/token/self does not accept the stack's token "
            f"(HTTP {self_status}). Either reset the ACL bootstrap so the next `pulumi up` bootstraps it with the "
            f"stack's token (on the leader, write the reset index{f' {index}' if index else ''} to "
            "<data_dir>/acl-bootstrap-reset, see `consul acl bootstrap`), or make the cluster accept the stack's "
            "token (`consul acl token create -secret <consulManagementToken> -policy-name global-management` "
            "with the existing management token)."
        )
    raise NotReady(f"PUT /v1/acl/bootstrap answered HTTP {status}: {shown(body, token)}")


def check_once(
    http_addr: str,
    token: str,
    ca_pem: str | None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    expect_voters: int | None = None,
    bootstrap: bool = False,
) -> str:
    """Return the leader's address if the cluster is ready; raise NotReady saying why not.

    Ready means: /v1/status/leader names a leader, /v1/acl/token/self accepts `token` (which only
    happens once the ACL system is bootstrapped and knows the token), and, with `expect_voters`,
    autopilot reports the cluster healthy with at least that many healthy voters.
    With `bootstrap` (servers the stack created), a token/self answered with 403 (before the
    bootstrap Consul answers "ACL system must be bootstrapped ...: ACL not found") is followed by
    one PUT /v1/acl/bootstrap with `token` as its secret; without it the bootstrap is never sent.
    Raises ConsulNotReadyError at once when the server's certificate does not verify, or when the
    cluster was bootstrapped with another token: waiting fixes neither.
    """
    base = http_addr.rstrip("/")
    context = tls_context(base, ca_pem)
    with talking_to(base):
        status, body = http_get(f"{base}/v1/status/leader", context, None, timeout)
        if status != 200:
            raise NotReady(f"GET /v1/status/leader answered HTTP {status}: {body.strip()[:200]}")
        leader = json.loads(body) if body.strip() else ""
        if not leader:
            raise NotReady("the servers answer but have not elected a leader yet")
        status, body = http_get(f"{base}/v1/acl/token/self", context, token, timeout)
        if status == 403 and bootstrap:
            bootstrap_acls(base, context, token, timeout)
            status, body = http_get(f"{base}/v1/acl/token/self", context, token, timeout)
        if status != 200:
            raise NotReady(
                f"a leader is elected ({leader}) but the ACL system does not accept the token yet "
                f"(GET /v1/acl/token/self answered HTTP {status}: {shown(body, token)})"
            )
        if expect_voters is not None:
            report = autopilot_health(base, context, token, timeout)
            voters = healthy_voters(report)
            if not report.get("Healthy") or len(voters) < expect_voters:
                raise NotReady(
                    f"a leader is elected ({leader}) but autopilot reports {len(voters)} of {expect_voters} "
                    f"servers as healthy voters ({', '.join(voters) or 'none'}; cluster healthy: "
                    f"{bool(report.get('Healthy'))})"
                )
        return str(leader)


def check_server_once(
    http_addr: str, token: str, ca_pem: str | None, node_name: str, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> str:
    """Return a summary if `node_name` is back: a healthy voter of a healthy cluster; else raise NotReady.

    Asked of the cluster's API (any server forwards it to the leader), so it holds whichever server
    was replaced, server 0 (which carries the API's address) included.
    """
    base = http_addr.rstrip("/")
    context = tls_context(base, ca_pem)
    with talking_to(base):
        report = autopilot_health(base, context, token, timeout)
        servers = {s.get("Name"): s for s in report.get("Servers") or []}
        server = servers.get(node_name)
        if server is None:
            raise NotReady(f"autopilot does not list {node_name} yet (servers: {', '.join(sorted(map(str, servers)))})")
        if not (server.get("Healthy") and server.get("Voter")):
            raise NotReady(
                f"{node_name} is listed but not yet a healthy voter "
                f"(healthy: {bool(server.get('Healthy'))}, voter: {bool(server.get('Voter'))})"
            )
        if not report.get("Healthy"):
            raise NotReady(f"{node_name} is a healthy voter but the cluster is not healthy yet")
        return f"{node_name} healthy voter; failure tolerance {report.get('FailureTolerance')}"


SERVER_ADVICE = (
    "New servers need a few minutes to install and elect a leader; "
    "raise consulReadyTimeoutSeconds if they are still booting, or check their console output."
)


def wait_until(
    check: Callable[[], str],
    what: str,
    timeout_seconds: float,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    advice: str = SERVER_ADVICE,
) -> str:
    """Call `check` until it returns; raise ConsulNotReadyError at the deadline, saying what it last
    saw and then `advice` (what to do about it)."""
    deadline = clock() + timeout_seconds
    attempts = 0
    while True:
        attempts += 1
        try:
            return check()
        except NotReady as err:
            last = str(err)
        remaining = deadline - clock()
        if remaining <= 0:
            raise ConsulNotReadyError(
                f"{what} was not ready after {timeout_seconds:g} s ({attempts} attempts). Last seen: {last}. {advice}"
            )
        sleep(min(interval_seconds, remaining))


def request_timeout(timeout_seconds: float) -> float:
    return min(REQUEST_TIMEOUT_SECONDS, max(timeout_seconds, 1.0))


def wait_until_ready(
    http_addr: str,
    token: str,
    ca_pem: str | None,
    timeout_seconds: float,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    expect_voters: int | None = None,
    bootstrap: bool = False,
) -> str:
    """Poll until the cluster is ready and return its leader; raise ConsulNotReadyError at the deadline.

    With `bootstrap`, bootstrap the ACL system with `token` when it is not yet (see check_once).
    """
    timeout = request_timeout(timeout_seconds)
    return wait_until(
        lambda: check_once(http_addr, token, ca_pem, timeout, expect_voters, bootstrap),
        f"Consul at {http_addr}",
        timeout_seconds,
        interval_seconds,
        clock,
        sleep,
    )


def wait_until_server_healthy(
    http_addr: str,
    token: str,
    ca_pem: str | None,
    node_name: str,
    timeout_seconds: float,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until `node_name` is a healthy voter of a healthy cluster; raise ConsulNotReadyError at the deadline."""
    timeout = request_timeout(timeout_seconds)
    return wait_until(
        lambda: check_server_once(http_addr, token, ca_pem, node_name, timeout),
        f"Consul server {node_name} (asked of {http_addr})",
        timeout_seconds,
        interval_seconds,
        clock,
        sleep,
    )


class ConsulReadyProvider(ResourceProvider):
    """Creating (or updating) the resource is waiting for readiness; deleting it does nothing."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["http_addr"], outs=self._wait(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in WATCHED_INPUTS if olds.get(key) != news.get(key)]
        # States written before `bootstrap` existed lack it: absent is False, not a change.
        if bool(olds.get("bootstrap")) != bool(news.get("bootstrap")):
            changed.append("bootstrap")
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._wait(news))

    @staticmethod
    def _wait(props: dict[str, Any]) -> dict[str, Any]:
        expect = props.get("expect_voters")
        leader = wait_until_ready(
            props["http_addr"],
            props["token"],
            props.get("ca_pem") or None,
            float(props["timeout_seconds"]),
            expect_voters=int(expect) if expect is not None else None,
            bootstrap=bool(props.get("bootstrap")),
        )
        # The token is kept in the state (secret: additional_secret_outputs) so the diff can tell a
        # rotated one and check it before anything uses it.
        return {
            "http_addr": props["http_addr"],
            "token": props["token"],
            "ca_pem": props.get("ca_pem"),
            "timeout_seconds": props["timeout_seconds"],
            "triggers": props.get("triggers", []),
            "expect_voters": expect,
            "bootstrap": bool(props.get("bootstrap")),
            "leader": leader,
        }


class ConsulReady(Resource, module="consul-tproxy-vms", name="ConsulReady"):
    """Exists once the Consul cluster at `http_addr` has a leader and accepts `token`.

    Order the consul provider after it (`depends_on`), configured from the same known values: every
    Consul object then waits for the gate, and preview knows the provider's configuration.
    `expect_voters` (servers the stack created): also wait for that many healthy voters.
    `bootstrap` (servers the stack created, whose configuration carries no initial management
    token): bootstrap the ACL system with `token` (PUT /v1/acl/bootstrap with it as BootstrapSecret)
    once a leader is elected; fail at once if the cluster was bootstrapped with another token. Leave
    it False for an existing cluster: the gate then never calls the bootstrap endpoint.
    """

    http_addr: pulumi.Output[str]
    token: pulumi.Output[str]
    leader: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        http_addr: pulumi.Input[str],
        token: pulumi.Input[str],
        ca_pem: pulumi.Input[str] | None,
        timeout_seconds: int,
        triggers: pulumi.Input[Sequence[pulumi.Input[str]]] | None = None,
        expect_voters: int | None = None,
        bootstrap: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            ConsulReadyProvider(),
            name,
            {
                "http_addr": http_addr,
                "token": pulumi.Output.secret(token),
                "ca_pem": ca_pem,
                "timeout_seconds": timeout_seconds,
                "triggers": triggers or [],
                "expect_voters": expect_voters,
                "bootstrap": bootstrap,
                "leader": None,
            },
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["token"])),
        )


class ServerReadyProvider(ResourceProvider):
    """Creating the gate waits for nothing (first bootstrap); updating it waits for its server (replacement)."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=str(props["node_name"]), outs=self._state(props, "created: no wait on first creation"))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in SERVER_WATCHED_INPUTS if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        seen = wait_until_server_healthy(
            news["http_addr"],
            news["token"],
            news.get("ca_pem") or None,
            news["node_name"],
            float(news["timeout_seconds"]),
        )
        return UpdateResult(outs=self._state(news, seen))

    @staticmethod
    def _state(props: dict[str, Any], seen: str) -> dict[str, Any]:
        return {
            "http_addr": props["http_addr"],
            "token": props["token"],
            "ca_pem": props.get("ca_pem"),
            "node_name": props["node_name"],
            "timeout_seconds": props["timeout_seconds"],
            "triggers": props.get("triggers", []),
            "seen": seen,
        }


class ServerReady(Resource, module="consul-tproxy-vms", name="ServerReady"):
    """One server's link in the one-at-a-time chain: after its replacement, exists once it is back.

    `triggers` carries the server's instance id: a replaced server changes it, and the update waits
    until autopilot (asked at `http_addr`) reports `node_name` a healthy voter of a healthy cluster.
    Make the next server's instance depend on this resource.
    """

    node_name: pulumi.Output[str]
    seen: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        http_addr: pulumi.Input[str],
        token: pulumi.Input[str],
        ca_pem: pulumi.Input[str] | None,
        node_name: str,
        timeout_seconds: int,
        triggers: pulumi.Input[Sequence[pulumi.Input[str]]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            ServerReadyProvider(),
            name,
            {
                "http_addr": http_addr,
                "token": pulumi.Output.secret(token),
                "ca_pem": ca_pem,
                "node_name": node_name,
                "timeout_seconds": timeout_seconds,
                "triggers": triggers,
                "seen": None,
            },
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["token"])),
        )
