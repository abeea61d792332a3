"""MeshReady: `pulumi up` ends only when the mesh works, or fails saying which step did not happen.

A dynamic resource created after the mesh VMs, the intentions and the mesh defaults. Creating (or
updating) it polls the Consul HTTP API the consul provider uses (the stack's address, management
token and CA) until, for every service, each expected instance is in Consul and passing, with:

    1. its node registered (nodes are named <service>-<instance id>) and alive (serfHealth);
    2. the service registered on it, its application's check passing;
    3. its sidecar <service>-sidecar-proxy registered, Envoy listening ("Connect Sidecar Listening");
    4. for the demo app, its probe `<service>-upstreams` passing: a call to each upstream through
       the mesh (scripts/mesh-demo-app.py), awaited where the intentions admit it (GET /health) to
       every upstream and to the services their splits send calls to.

On timeout it fails naming, per service, the first of those steps an instance has not reached,
with what Consul recorded (the check's Output) and, for an instance that never joined, the tail of
its EC2 console output. The messages never hold the token.

What the poller reads is `GET /v1/health/service/<name>` (hashicorp/consul agent/health_endpoint.go,
agent/consul/health_endpoint.go Health.ServiceNodes; the entries' shape is api/health.go
ServiceEntry: Node, Service, Checks[]), for each service and its sidecar, and, only for an instance
whose service is missing, `GET /v1/health/node/<node>` (Health.NodeChecks) to tell a node that never
joined from one that joined without its service.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from .readiness import (
    DEFAULT_INTERVAL_SECONDS,
    ConsulNotReadyError,
    NotReady,
    http_get,
    request_timeout,
    shown,
    talking_to,
    tls_context,
    wait_until,
)
from .spec import IntentionSpec, ServiceSpec, SplitSpec, probe_admitted, split_targets
from .userdata import has_upstream_probe, probe_check_id

DEFAULT_TIMEOUT_SECONDS = 900
# Every agent's node check (hashicorp/consul agent/structs: SerfCheckID = "serfHealth").
SERF_HEALTH = "serfHealth"
SIDECAR_SUFFIX = "-sidecar-proxy"
# The sidecar's "Connect Sidecar Aliasing <service>" check mirrors the service's own checks
# (agent/sidecar_service.go sidecarDefaultChecks; its HealthCheck.Type is "alias"): it says nothing
# about Envoy, and it turns warning with the upstream probe. Envoy is judged by its other checks.
ALIAS_CHECK_TYPE = "alias"
PASSING = "passing"
CONSOLE_TAIL_LINES = 25
# Inputs whose change means "other instances, services or intentions": wait for the mesh again.
WATCHED_INPUTS = ("http_addr", "ca_pem", "instances", "expected", "probes", "intentions", "node_meta")

# The steps an instance goes through, in order, and what to do when one is the first missing.
BOOT = "boot or login"
AGENT = "agent"
REGISTRATION = "service registration"
APPLICATION = "application"
ENVOY = "Envoy"
PROBE = "upstream probe"
STEP_ADVICE = {
    BOOT: "the VM never joined Consul: its boot (cloud-init, packages) or its `consul login` failed; read the "
    "console output below, then `journalctl -u consul-login -u consul` on the VM",
    AGENT: "the node's agent is not alive (serfHealth): consul.service stopped, or gossip (8301 tcp/udp) does "
    "not get through between the VM and the servers",
    REGISTRATION: "the agent runs but has not registered the service: its service token (the login's `service` "
    "method) or /etc/consul.d/service-<name>.hcl; `journalctl -u consul` on the VM",
    APPLICATION: "the application's own check fails: `systemctl status mesh-app` and `journalctl -u mesh-app`",
    ENVOY: "the sidecar is missing or Envoy does not listen on its public port: `systemctl status envoy@<name>` "
    "and `journalctl -u envoy@<name>` (Envoy version, xDS token, traffic redirect)",
    PROBE: "a call to an upstream through the mesh fails: a name resolution error points at DNS "
    "(systemd-resolved -> Consul DNS, the DNS token), a refused or timed-out connection at the redirect "
    "(iptables, Envoy's outbound listener), HTTP 403 'RBAC: access denied' or a reset connection at the "
    "intentions",
}
ADVICE = (
    "Each line above names a service's first missing step. New VMs need a few minutes to install and join; "
    "raise meshReadyTimeoutSeconds if they are still booting (0 turns this check off)."
)

Console = Callable[[str], str]
"""Instance id -> the tail of its EC2 console output (or why there is none)."""


@dataclass(frozen=True)
class Expectation:
    """What the gate waits for of one service."""

    name: str
    count: int
    """How many instances must be ready (1 today; the instances of an Auto Scaling group later)."""
    instance_ids: tuple[str, ...] = ()
    """The instances the stack created, to name one that never joined; empty: any instances."""
    probe: bool = False
    """Wait for the demo app's upstream probe too."""
    sidecar: bool = True
    """A mesh service, with its sidecar; False: the API gateway, which is Envoy itself (registered by
    `consul connect envoy -gateway api -register`) and has no sidecar."""
    node_meta: tuple[tuple[str, str], ...] = ()
    """Count only nodes with this metadata (a group's VMs of the current recipe: userdata.group_node_meta);
    empty: any node of the service."""


@dataclass(frozen=True)
class Missing:
    """The first step one instance (None: the service as a whole) has not reached."""

    service: str
    instance_id: str | None
    step: str
    detail: str

    def line(self) -> str:
        return f"service {self.service}: {self.step}: {self.detail} -> {STEP_ADVICE[self.step]}"


# --- pure: what the spec expects ------------------------------------------------------------------


def probed_services(
    services: Mapping[str, ServiceSpec],
    intentions: Iterable[IntentionSpec],
    splits: Mapping[str, Sequence[SplitSpec]] | None = None,
) -> list[str]:
    """Services whose upstream probe the gate waits for: a demo app whose probe (GET /health) the
    intentions certainly admit to every service its calls can land on (each upstream, or the
    services its splits send calls to). An L7 intention counts when its first rule matching the
    probe allows it. Any other probe stays warning (spec.footguns warns about it), so waiting for
    it would only fail the deploy."""
    intentions = list(intentions)
    return sorted(
        name
        for name, svc in services.items()
        if has_upstream_probe(svc)
        and all(
            probe_admitted(intentions, name, target)
            for up in svc.upstreams
            for target in split_targets(up, splits or {})
        )
    )


def intention_keys(intentions: Iterable[IntentionSpec]) -> list[str]:
    """The intentions as the gate's diff sees them: a changed one makes the next `up` wait again."""
    return sorted(i.key() for i in intentions)


def expectations(props: Mapping[str, Any]) -> list[Expectation]:
    """The gate's inputs as Expectations, one per service, by name."""
    instances = props.get("instances") or {}
    expected = props.get("expected") or {}
    probes = set(props.get("probes") or [])
    gateways = set(props.get("gateways") or [])
    node_meta = props.get("node_meta") or {}
    return [
        Expectation(
            name,
            int(expected[name]),
            tuple(str(i) for i in instances.get(name) or ()),
            name in probes,
            sidecar=name not in gateways,
            node_meta=tuple(sorted((str(k), str(v)) for k, v in (node_meta.get(name) or {}).items())),
        )
        for name in sorted(expected)
    ]


# --- pure: an answer of Consul's health API -> the first missing step ------------------------------


def _node_of(entry: Mapping[str, Any]) -> str:
    return str((entry.get("Node") or {}).get("Node", ""))


def _failing(checks: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in checks if c.get("Status") != PASSING]


def _said(check: Mapping[str, Any]) -> str:
    output = " ".join(str(check.get("Output") or "").split())
    return f'check "{check.get("Name") or check.get("CheckID")}" is {check.get("Status")}' + (
        f": {output[:600]}" if output else ""
    )


def instance_missing(
    exp: Expectation,
    node: str,
    instance_id: str | None,
    entry: Mapping[str, Any],
    sidecars: Sequence[Mapping[str, Any]],
) -> Missing | None:
    """The first step the instance registered as `entry` has not reached; None when it is ready."""
    checks = entry.get("Checks") or []
    node_checks = [c for c in checks if not c.get("ServiceID")]
    service_checks = [c for c in checks if c.get("ServiceID")]
    probe_id = probe_check_id(exp.name)

    def missing(step: str, detail: str) -> Missing:
        return Missing(exp.name, instance_id, step, detail)

    for check in _failing(node_checks):
        return missing(AGENT, f"node {node}: {_said(check)}")
    if not exp.sidecar:
        # The gateway's own checks (if its registration carries any) are Envoy's.
        for check in _failing(service_checks):
            return missing(ENVOY, f"node {node}: {_said(check)}")
        return None
    for check in _failing(c for c in service_checks if c.get("CheckID") != probe_id):
        return missing(APPLICATION, f"node {node}: {_said(check)}")
    sidecar = next((s for s in sidecars if _node_of(s) == node), None)
    if sidecar is None:
        return missing(ENVOY, f"no {exp.name}{SIDECAR_SUFFIX} registered on node {node}")
    envoy_checks = [c for c in sidecar.get("Checks") or [] if c.get("ServiceID") and c.get("Type") != ALIAS_CHECK_TYPE]
    for check in _failing(envoy_checks):
        return missing(ENVOY, f"{exp.name}{SIDECAR_SUFFIX} on node {node}: {_said(check)}")
    if exp.probe:
        probe = next((c for c in service_checks if c.get("CheckID") == probe_id), None)
        if probe is None:
            return missing(PROBE, f"node {node} has no check {probe_id} (a VM from before the probe existed?)")
        if probe.get("Status") != PASSING:
            return missing(PROBE, f"node {node}: {_said(probe)}")
    return None


def never_registered(
    exp: Expectation, node: str, instance_id: str, node_checks: Sequence[Mapping[str, Any]]
) -> Missing:
    """The service is not on `node`: the node never joined, its agent is down, or it has no service."""
    if not node_checks:
        return Missing(exp.name, instance_id, BOOT, f"instance {instance_id} never joined (no node {node} in Consul)")
    serf = next((c for c in node_checks if c.get("CheckID") == SERF_HEALTH), None)
    if serf is not None and serf.get("Status") != PASSING:
        return Missing(exp.name, instance_id, AGENT, f"node {node}: {_said(serf)}")
    return Missing(exp.name, instance_id, REGISTRATION, f"node {node} is in Consul without service {exp.name}")


def service_missing(
    exp: Expectation,
    entries: Sequence[Mapping[str, Any]],
    sidecars: Sequence[Mapping[str, Any]],
    node_checks: Callable[[str], Sequence[Mapping[str, Any]]],
) -> list[Missing]:
    """Why the service has fewer than `exp.count` ready instances; [] when it has enough."""
    by_node = {_node_of(e): e for e in entries}
    if exp.instance_ids:
        nodes = [(f"{exp.name}-{iid}", iid) for iid in exp.instance_ids]
    else:
        nodes = [(node, None) for node in sorted(by_node)]
    found: list[Missing] = []
    ready = 0
    for node, instance_id in nodes:
        entry = by_node.get(node)
        if entry is None:
            assert instance_id is not None
            found.append(never_registered(exp, node, instance_id, node_checks(node)))
            continue
        missing = instance_missing(exp, node, instance_id, entry, sidecars)
        if missing is None:
            ready += 1
        else:
            found.append(missing)
    if ready >= exp.count:
        return []
    if not found:
        detail = f"{ready} of {exp.count} instances registered and passing"
        found.append(Missing(exp.name, None, BOOT, detail))
    return found


# --- talking to Consul -----------------------------------------------------------------------------


def _health(base: str, path: str, context: Any, token: str, timeout: float) -> list[dict[str, Any]]:
    status, body = http_get(f"{base}{path}", context, token, timeout)
    if status != 200:
        raise NotReady(f"GET {path} answered HTTP {status}: {shown(body, token)}")
    answer = json.loads(body)
    if not isinstance(answer, list):
        raise NotReady(f"GET {path} answered something other than a list")
    return answer


def check_mesh_once(
    http_addr: str, token: str, ca_pem: str | None, wanted: Sequence[Expectation], timeout: float
) -> list[Missing]:
    """One look at the mesh: the first missing step of each instance that is not ready ([] = ready).

    Raises NotReady when Consul cannot be asked, ConsulNotReadyError when its certificate does not verify.
    """
    base = http_addr.rstrip("/")
    context = tls_context(base, ca_pem)

    def health(path: str) -> list[dict[str, Any]]:
        return _health(base, path, context, token, timeout)

    def quoted(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    found: list[Missing] = []
    with talking_to(base):
        for exp in wanted:
            # node-meta=key:value, repeatable, every pair to match (hashicorp/consul agent/http.go
            # parseMetaFilter, into the request's NodeMetaFilters: agent/health_endpoint.go).
            query = urllib.parse.urlencode([("node-meta", f"{k}:{v}") for k, v in exp.node_meta])
            only = f"?{query}" if query else ""
            entries = health(f"/v1/health/service/{quoted(exp.name)}{only}")
            sidecars = health(f"/v1/health/service/{quoted(exp.name + SIDECAR_SUFFIX)}{only}") if exp.sidecar else []
            found += service_missing(exp, entries, sidecars, lambda node: health(f"/v1/health/node/{quoted(node)}"))
    return found


def describe(found: Sequence[Missing]) -> str:
    """One line per service: its first instance's first missing step."""
    first: dict[str, Missing] = {}
    for missing in found:
        first.setdefault(missing.service, missing)
    return "\n" + "\n".join(f"  - {m.line()}" for m in first.values())


def console_tails(found: Sequence[Missing], console: Console) -> str:
    """The console output of each instance that never joined, for the failure message."""
    parts = []
    for instance_id in sorted({m.instance_id for m in found if m.step == BOOT and m.instance_id}):
        tail = "\n".join(f"    | {line}" for line in console(instance_id).splitlines())
        parts.append(f"\nConsole output of {instance_id} (last {CONSOLE_TAIL_LINES} lines):\n{tail}")
    return "".join(parts)


def wait_for_mesh(
    http_addr: str,
    token: str,
    ca_pem: str | None,
    wanted: Sequence[Expectation],
    timeout_seconds: float,
    console: Console,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until every service is ready and return a summary; raise ConsulNotReadyError at the
    deadline naming each service's first missing step, with the console output of the instances
    that never joined (asked of `console` once, at the end)."""
    timeout = request_timeout(timeout_seconds)
    last: list[Missing] = []

    def attempt() -> str:
        found = check_mesh_once(http_addr, token, ca_pem, wanted, timeout)
        last[:] = found
        if found:
            raise NotReady(describe(found))
        return ", ".join(f"{e.name}: {e.count} ready" for e in wanted)

    try:
        return wait_until(
            attempt, f"The mesh (asked of {http_addr})", timeout_seconds, interval_seconds, clock, sleep, ADVICE
        )
    except ConsulNotReadyError as err:
        message = str(err) + console_tails(last, console)
        raise ConsulNotReadyError(message.replace(token, "<token>") if token else message) from None


# --- EC2 console output ------------------------------------------------------------------------------


def console_tail(client: Any, instance_id: str, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last `lines` lines of an instance's console output, printable; or why there are none.

    `client` is a boto3 EC2 client. GetConsoleOutput answers the output base64-encoded; botocore
    decodes it after the call (botocore/handlers.py decode_console_output). Latest=True asks for the
    most recent output, not the boot-time snapshot (Nitro instances, such as t3, support it).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.get_console_output(InstanceId=instance_id, Latest=True)
    except (BotoCoreError, ClientError) as err:
        return f"(console output unavailable: {err})"
    text = str(answer.get("Output") or "")
    if not text.strip():
        return "(no console output yet)"
    tail = text.splitlines()[-lines:]
    # Consoles carry terminal escapes and carriage returns: keep a message that prints as it reads.
    return "\n".join("".join(c if c.isprintable() else " " for c in line).rstrip() for line in tail)


def ec2_console(region: str) -> Console:
    """A Console asking EC2 in `region`, with the credentials of the machine running `pulumi up`."""

    def tail(instance_id: str) -> str:
        import boto3

        return console_tail(boto3.client("ec2", region_name=region), instance_id)

    return tail


# --- the dynamic resource ------------------------------------------------------------------------------


class MeshReadyProvider(ResourceProvider):
    """Creating (or updating) the gate is waiting for the mesh; deleting it does nothing.

    The engine calls create and update only during an update, never in a preview (which calls diff):
    a preview never waits.
    """

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=str(props["http_addr"]), outs=self._wait(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in WATCHED_INPUTS if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._wait(news))

    @staticmethod
    def _wait(props: dict[str, Any]) -> dict[str, Any]:
        seen = wait_for_mesh(
            props["http_addr"],
            props["token"],
            props.get("ca_pem") or None,
            expectations(props),
            float(props["timeout_seconds"]),
            ec2_console(str(props["region"])),
        )
        return {**{k: props.get(k) for k in (*WATCHED_INPUTS, "token", "region", "timeout_seconds")}, "seen": seen}


class MeshReady(Resource, module="consul-tproxy-vms", name="MeshReady"):
    """Exists once every service's instances, sidecars and (demo app) upstream probes pass in Consul.

    `instances`: service -> its instance ids (nodes are <service>-<instance id>); `expected`: service
    -> how many instances must be ready (the API gateway too, named in `gateways`: it has no
    sidecar); `probes`: services whose upstream probe is awaited
    (probed_services); `intentions`: intention_keys, so a changed intention makes the next `up` wait
    again; `node_meta`: service -> the node metadata its counted nodes carry (a group's, and its
    current recipe's: a new recipe makes the next `up` wait for the instance refresh's new VMs).
    Make it depend on the VMs, the intentions and the mesh defaults.
    """

    seen: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        http_addr: pulumi.Input[str],
        token: pulumi.Input[str],
        ca_pem: pulumi.Input[str] | None,
        region: pulumi.Input[str],
        instances: Mapping[str, pulumi.Input[Sequence[pulumi.Input[str]]]],
        expected: Mapping[str, int],
        probes: Sequence[str],
        intentions: Sequence[str],
        timeout_seconds: int,
        opts: pulumi.ResourceOptions | None = None,
        gateways: Sequence[str] = (),
        node_meta: Mapping[str, pulumi.Input[Mapping[str, str]]] | None = None,
    ) -> None:
        super().__init__(
            MeshReadyProvider(),
            name,
            {
                "http_addr": http_addr,
                "token": pulumi.Output.secret(token),
                "ca_pem": ca_pem,
                "region": region,
                "instances": dict(instances),
                "expected": dict(expected),
                "probes": list(probes),
                "intentions": list(intentions),
                # Only when there is a gateway: a stack without one keeps the inputs it had.
                **({"gateways": list(gateways)} if gateways else {}),
                # Only with groups: a stack without one keeps the inputs it had.
                **({"node_meta": dict(node_meta)} if node_meta else {}),
                "timeout_seconds": timeout_seconds,
                "seen": None,
            },
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["token"])),
        )
