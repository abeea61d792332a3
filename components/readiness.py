"""ConsulReady: a gate that exists once the Consul servers have a leader and their ACLs are bootstrapped.

The consul provider takes its address and token from this resource, so no token, policy, config
entry or intention is sent before the servers can take it. The gate polls the HTTPS API with the
cluster's CA until a deadline; it never sleeps a fixed time, and it fails with the last thing it saw.

The polling (`wait_until_ready`) is plain Python, tested against local HTTP servers; the dynamic
resource only calls it from `create` and `update`.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

DEFAULT_INTERVAL_SECONDS = 5.0
# Per request: a server that accepts the connection but never answers must not eat the deadline.
REQUEST_TIMEOUT_SECONDS = 10.0
# Inputs whose change means "a different cluster, or rebuilt servers": wait again.
WATCHED_INPUTS = ("http_addr", "ca_pem", "triggers")


class NotReady(Exception):
    """The cluster is not ready yet; the message says what was seen."""


class ConsulNotReadyError(RuntimeError):
    """The cluster did not become ready before the deadline, or cannot be trusted."""


def _context(http_addr: str, ca_pem: str | None) -> ssl.SSLContext | None:
    if not http_addr.startswith("https://"):
        return None
    # With a CA, trust only it (the cluster's own CA); without one, the system's store.
    return ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()


def _get(url: str, context: ssl.SSLContext | None, token: str | None, timeout: float) -> tuple[int, str]:
    headers = {"X-Consul-Token": token} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def check_once(http_addr: str, token: str, ca_pem: str | None, timeout: float = REQUEST_TIMEOUT_SECONDS) -> str:
    """Return the leader's address if the cluster is ready; raise NotReady saying why not.

    Ready means: /v1/status/leader names a leader, and /v1/acl/token/self accepts `token` (which
    only happens once the ACL system is bootstrapped and knows the token).
    Raises ConsulNotReadyError at once when the server's certificate does not verify: waiting does
    not fix a wrong CA or address.
    """
    base = http_addr.rstrip("/")
    context = _context(base, ca_pem)
    try:
        status, body = _get(f"{base}/v1/status/leader", context, None, timeout)
        if status != 200:
            raise NotReady(f"GET /v1/status/leader answered HTTP {status}: {body.strip()[:200]}")
        leader = json.loads(body) if body.strip() else ""
        if not leader:
            raise NotReady("the servers answer but have not elected a leader yet")
        status, body = _get(f"{base}/v1/acl/token/self", context, token, timeout)
        if status != 200:
            raise NotReady(
                f"a leader is elected ({leader}) but the ACL system does not accept the token yet "
                f"(GET /v1/acl/token/self answered HTTP {status}: {body.strip()[:200]})"
            )
        return str(leader)
    except json.JSONDecodeError as err:
        raise NotReady(f"GET /v1/status/leader answered something other than JSON ({err.msg})") from None
    except (OSError, http.client.HTTPException) as err:
        # urllib wraps the TLS failure in a URLError; unwrap it to tell it from "not listening yet".
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise ConsulNotReadyError(
                f"the server at {base} presented a certificate that does not verify against the cluster's CA: "
                f"{reason.verify_message or reason}"
            ) from None
        raise NotReady(f"cannot reach {base}: {reason}") from None


def wait_until_ready(
    http_addr: str,
    token: str,
    ca_pem: str | None,
    timeout_seconds: float,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until the cluster is ready and return its leader; raise ConsulNotReadyError at the deadline."""
    deadline = clock() + timeout_seconds
    attempts = 0
    while True:
        attempts += 1
        try:
            return check_once(http_addr, token, ca_pem, min(REQUEST_TIMEOUT_SECONDS, max(timeout_seconds, 1.0)))
        except NotReady as err:
            last = str(err)
        remaining = deadline - clock()
        if remaining <= 0:
            raise ConsulNotReadyError(
                f"Consul at {http_addr} was not ready after {timeout_seconds:g} s ({attempts} attempts). "
                f"Last seen: {last}. New servers need a few minutes to install and elect a leader; "
                "raise consulReadyTimeoutSeconds if they are still booting, or check their console output."
            )
        sleep(min(interval_seconds, remaining))


class ConsulReadyProvider(ResourceProvider):
    """Creating (or updating) the resource is waiting for readiness; deleting it does nothing."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["http_addr"], outs=self._wait(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in WATCHED_INPUTS if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._wait(news))

    @staticmethod
    def _wait(props: dict[str, Any]) -> dict[str, Any]:
        leader = wait_until_ready(
            props["http_addr"], props["token"], props.get("ca_pem") or None, float(props["timeout_seconds"])
        )
        # The token is passed on so the consul provider can take it from here (and so wait); the
        # resource marks it secret in the state (additional_secret_outputs).
        return {
            "http_addr": props["http_addr"],
            "token": props["token"],
            "ca_pem": props.get("ca_pem"),
            "timeout_seconds": props["timeout_seconds"],
            "triggers": props.get("triggers", []),
            "leader": leader,
        }


class ConsulReady(Resource, module="consul-tproxy-vms", name="ConsulReady"):
    """Exists once the Consul cluster at `http_addr` has a leader and accepts `token`.

    Use `http_addr` and `token` of this resource (not the raw values) to configure the consul
    provider: everything on that provider then waits for the gate.
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
                "leader": None,
            },
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["token"])),
        )
