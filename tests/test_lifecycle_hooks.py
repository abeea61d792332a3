"""mesh-lifecycle: a VM of an Auto Scaling group completes its own lifecycle hooks.

The script runs for real (as shipped: comment lines stripped, as userdata._shipped_script does),
with the real curl signing its Auto Scaling call, against stand-ins as strict as what they stand for:
- the metadata service: IMDSv2 from tests/test_boot_login.py, plus the target lifecycle state, the
  instance role's credentials and the group tag;
- the Auto Scaling Query API: recomputes the SigV4 signature with botocore's signer from the raw
  request, and refuses a missing or wrong session token, a wrong scope, missing or malformed
  parameters (botocore's autoscaling model), an unknown group or hook, an action not active;
- the local Consul agent's health endpoint (200 passing, 429 warning, 503 critical, 404, 403);
- Envoy's admin (mutating endpoints need POST);
- `systemctl` (tests/fixtures/lifecycle/systemctl), and a `curl` in front of the real one that
  records every command line (tests/fixtures/lifecycle/curl).
Every stand-in appends what it did to one event log: the order of a run is read from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from urllib.request import Request, urlopen

import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import QueryParser

from components.escape import UnsafeValue
from components.spec import ServiceSpec
from components.userdata import SCRIPTS, _render, _shipped_script
from tests.conftest import systemd_verify, tool
from tests.helpers import serving
from tests.test_boot_login import IMDS_TOKEN, INSTANCE_ID, REGION, Imds

SCRIPT = SCRIPTS / "mesh-lifecycle.sh"
FIXTURES = Path(__file__).parent / "fixtures" / "lifecycle"
TEMPLATES = Path(__file__).parent.parent / "components" / "templates"
GROUP = "consul-tproxy-vms-dev-web"
LAUNCH_HOOK, TERMINATE_HOOK = "mesh-ready", "mesh-drain"
ROLE = "consul-tproxy-vms-dev-web"
ACCESS_KEY = "ASIAEXAMPLEKEY000001"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE/session+token=="
CONSUL_TOKEN = "5b7e9a64-2f6e-4c1b-9a8d-0e3f1c2b4a59"
SECRETS = (SECRET_KEY, SESSION_TOKEN, CONSUL_TOKEN, IMDS_TOKEN)
AUTOSCALING = botocore.session.get_session().get_service_model("autoscaling")
COMPLETE = AUTOSCALING.operation_model("CompleteLifecycleAction")
XMLNS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


@dataclass
class World:
    """What the stand-ins serve and what they saw, shared by all of them."""

    events_file: Path
    # Answers to autoscaling/target-lifecycle-state, in turn (the last one repeats); None: 404.
    states: list[str | None] = field(default_factory=lambda: ["InService"])
    # Health of each service on the local agent, in turn (the last repeats); None: not registered.
    health: dict[str, list[str | None]] = field(
        default_factory=lambda: {"web": ["passing"], "web-sidecar-proxy": ["passing"]}
    )
    readable: set[str] = field(default_factory=lambda: {"web", "web-sidecar-proxy"})
    writable: set[str] = field(default_factory=lambda: {"web", "web-sidecar-proxy"})
    # Hook name -> instances whose lifecycle action is waiting for a result.
    active: dict[str, set[str]] = field(
        default_factory=lambda: {LAUNCH_HOOK: {INSTANCE_ID}, TERMINATE_HOOK: {INSTANCE_ID}}
    )
    group_tag: bool = False
    # How many more calls fail with a server error, per stand-in.
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, line: str) -> None:
        with self.lock, self.events_file.open("a") as log:
            log.write(line + "\n")

    def events(self) -> list[str]:
        return self.events_file.read_text().splitlines() if self.events_file.exists() else []

    def actions(self) -> list[str]:
        """The events that change something (everything but the watch's reads of the state)."""
        return [e for e in self.events() if not e.startswith("imds ")]

    def fail(self, who: str) -> bool:
        with self.lock:
            if self.failures.get(who, 0) > 0:
                self.failures[who] -= 1
                return True
            return False

    def next_of(self, answers: list[str | None]) -> str | None:
        with self.lock:
            return answers.pop(0) if len(answers) > 1 else answers[0]


class Handler(BaseHTTPRequestHandler):
    world: World

    def reply(self, code: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class LifecycleImds(Imds):
    """IMDSv2 (tests/test_boot_login.py Imds: session token, 401 without it, 404 for unknown paths),
    with the categories of an instance in an Auto Scaling group (EC2 User Guide, "Instance metadata
    categories"): autoscaling/target-lifecycle-state (absent outside a group: 404),
    iam/security-credentials/ (the instance profile's role name) and iam/security-credentials/ROLE
    (its temporary credentials as JSON, Code "Success"), tags/instance/KEY (only when the launch
    template enables instance metadata tags)."""

    world: World

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
            return self.answer(401, "")
        path = self.path.removeprefix("/latest/meta-data/")
        if path == "autoscaling/target-lifecycle-state":
            state = self.world.next_of(self.world.states)
            self.world.event(f"imds target-lifecycle-state {state}")
            return self.answer(404, "") if state is None else self.answer(200, state)
        credentials = {
            "Code": "Success",
            "LastUpdated": "2026-12-05T05:00:00Z",
            "Type": "AWS-HMAC",
            "AccessKeyId": ACCESS_KEY,
            "SecretAccessKey": SECRET_KEY,
            "Token": SESSION_TOKEN,
            "Expiration": "2026-12-05T11:00:00Z",
        }
        paths = {
            "instance-id": INSTANCE_ID,
            "placement/region": REGION,
            "iam/security-credentials/": ROLE,
            f"iam/security-credentials/{ROLE}": json.dumps(credentials, indent=2),
        }
        if self.world.group_tag:
            paths["tags/instance/aws:autoscaling:groupName"] = GROUP
        if path in paths:
            return self.answer(200, paths[path])
        return self.answer(404, "")


class ConsulAgent(Handler):
    """The local agent's GET /v1/agent/health/service/name/NAME (hashicorp/consul
    agent/agent_endpoint.go AgentHealthServiceByName): 400 without a name; the token (agent/http.go
    parseToken: X-Consul-Token, else Authorization: Bearer, else ?token=) must have service:read on
    NAME, else 403 "Permission denied" (acl.PermissionDeniedError; no token is the anonymous token,
    denied under default_policy deny); then the worst of the service's checks: 200 passing, 429
    warning, 503 critical (agentHealthService), 404 "ServiceName NAME Not Found" when not
    registered. Registered for GET only (agent/http_register.go), other methods 405."""

    prefix = "/v1/agent/health/service/name/"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not url.path.startswith(self.prefix):
            return self.reply(404, "not found")
        name = url.path.removeprefix(self.prefix)
        if not name:
            return self.reply(400, "Missing service Name")
        if self.world.fail("consul"):
            self.world.event(f"consul health {name} 500")
            return self.reply(500, "No known Consul servers")
        bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
        token = self.headers.get("X-Consul-Token") or bearer or parse_qs(url.query).get("token", [""])[0]
        if token != CONSUL_TOKEN or name not in self.world.readable:
            self.world.event(f"consul health {name} 403")
            return self.reply(
                403, f"Permission denied: token with AccessorID '' lacks permission 'service:read' on \"{name}\""
            )
        status = self.world.next_of(self.world.health.get(name, [None]))
        code = {None: 404, "passing": 200, "warning": 429, "critical": 503}[status]
        self.world.event(f"consul health {name} {code}")
        self.reply(code, json.dumps([{"AggregatedStatus": status}]), "application/json")

    def do_PUT(self) -> None:
        """PUT /v1/agent/service/maintenance/ID?enable=BOOL&reason=TEXT (AgentServiceMaintenance):
        400 without a parseable enable, service:write on the service (vetServiceUpdateWithAuthorizer)
        else 403, 404 for an unknown service ID; the only PUT endpoint mesh-lifecycle calls."""
        url = urlsplit(self.path)
        prefix = "/v1/agent/service/maintenance/"
        if not url.path.startswith(prefix):
            return self.reply(405, "method PUT not allowed")
        service = url.path.removeprefix(prefix)
        query = parse_qs(url.query, keep_blank_values=True)
        if query.get("enable", [""])[0] not in ("true", "false", "1", "0"):
            return self.reply(400, "Missing value for enable")
        if self.headers.get("X-Consul-Token") != CONSUL_TOKEN or service not in self.world.writable:
            return self.reply(403, f"Permission denied: lacks permission 'service:write' on \"{service}\"")
        if service not in self.world.health:
            return self.reply(404, f'Unknown service ID "{service}"')
        self.world.event(f"consul maintenance {service} enable={query['enable'][0]}")
        self.reply(200, "")

    def do_POST(self) -> None:
        self.reply(405, "method POST not allowed")


class EnvoyAdmin(Handler):
    """Envoy's admin: /drain_listeners mutates server state, so any method but POST is 405
    "Method GET not allowed, POST required." (envoyproxy/envoy source/server/admin/admin.cc); its
    flags are the query's inboundonly, graceful, skip_exit (docs operations/admin)."""

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/drain_listeners":
            return self.reply(405, f"Method {self.command} not allowed, POST required.")
        self.reply(404, "invalid path")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/drain_listeners":
            return self.reply(404, "invalid path")
        flags = sorted(parse_qs(url.query, keep_blank_values=True))
        self.world.event("envoy drain_listeners " + " ".join(flags))
        self.reply(200, "OK\n")


class AutoScaling(Handler):
    """The EC2 Auto Scaling Query API's CompleteLifecycleAction, as AWS checks a call."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        refused = self.authenticate(body)
        if refused:
            return self.error(*refused)
        # The Query protocol takes a form body (botocore serializers.QuerySerializer).
        if not self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return self.error(400, "MalformedInput", "the body is not a form")
        params = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True, strict_parsing=True).items()}
        if params.get("Action") != "CompleteLifecycleAction" or params.get("Version") != AUTOSCALING.api_version:
            return self.error(400, "InvalidAction", f"Could not find operation {params.get('Action')}")
        invalid = invalid_parameters(params)
        if invalid:
            return self.error(400, "ValidationError", invalid)
        if self.world.fail("autoscaling"):
            return self.error(500, "InternalFailure", "An internal error occurred", "Receiver")
        hook, instance = params["LifecycleHookName"], params.get("InstanceId", "")
        # The messages of an unknown group or hook are this stand-in's own wording (ValidationError
        # is the code AWS uses for both); the non-active one is AWS's, as reported in
        # convox/rack#2432 and department-of-veterans-affairs/va.gov-cms#1719.
        if params["AutoScalingGroupName"] != GROUP:
            return self.error(400, "ValidationError", f"Group {params['AutoScalingGroupName']} not found")
        if hook not in self.world.active:
            return self.error(400, "ValidationError", f"No Lifecycle Hook found with name {hook}")
        if instance not in self.world.active[hook]:
            return self.error(400, "ValidationError", f"No active Lifecycle Action found with instance ID {instance}")
        self.world.active[hook].discard(instance)
        self.world.event(f"autoscaling complete {hook} {params['LifecycleActionResult']} {instance}")
        self.reply(
            200,
            f'<CompleteLifecycleActionResponse xmlns="{XMLNS}">\n  <CompleteLifecycleActionResult/>\n'
            f"  <ResponseMetadata>\n    <RequestId>{uuid.uuid4()}</RequestId>\n  </ResponseMetadata>\n"
            "</CompleteLifecycleActionResponse>\n",
            "text/xml",
        )

    def authenticate(self, body: bytes) -> tuple[int, str, str] | None:
        """SigV4 as AWS verifies it (AWS General Reference, "Signature Version 4 signing process";
        "Elements of an AWS API request signature"): the Authorization header's credential scope is
        <date>/<region>/autoscaling/aws4_request with the date of X-Amz-Date, which is within 5
        minutes of now; host and x-amz-date are signed; temporary credentials need their session
        token in X-Amz-Security-Token; and the signature is recomputed here with botocore's signer
        over exactly the headers the request says it signed."""
        match = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            self.headers.get("Authorization", ""),
        )
        if not match:
            return 403, "MissingAuthenticationToken", "Request is missing Authentication Token"
        key, date, region, service, signed_list, signature = match.groups()
        signed = signed_list.split(";")
        amz_date = self.headers.get("X-Amz-Date", "")
        if key != ACCESS_KEY or self.headers.get("X-Amz-Security-Token") != SESSION_TOKEN:
            return 403, "InvalidClientTokenId", "The security token included in the request is invalid."
        if not {"host", "x-amz-date"} <= set(signed) or not amz_date.startswith(date):
            return 403, "IncompleteSignature", "host and x-amz-date must be signed, for the scope's date"
        if region != REGION:
            return 403, "SignatureDoesNotMatch", f"Credential should be scoped to a valid region, not '{region}'."
        if service != "autoscaling":
            return 403, "SignatureDoesNotMatch", "Credential should be scoped to correct service: 'autoscaling'."
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        if abs(datetime.now(UTC) - when) > timedelta(minutes=5):
            return 403, "SignatureDoesNotMatch", "Signature expired"
        expected = expected_signature(
            self.command, self.path, {name: self.headers.get(name, "") for name in signed}, body, amz_date
        )
        if expected != signature:
            return (
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    def error(self, code: int, aws_code: str, message: str, kind: str = "Sender") -> None:
        self.world.event(f"autoscaling {aws_code}")
        self.reply(code, error_xml(aws_code, message, kind), "text/xml")


def expected_signature(method: str, path: str, headers: dict[str, str], body: bytes, amz_date: str) -> str:
    """botocore's SigV4 signature of a request with exactly these (signed) headers."""
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "autoscaling", REGION)
    request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body, headers=headers)
    request.context["timestamp"] = amz_date
    canonical = auth.canonical_request(request)
    return auth.signature(auth.string_to_sign(request, canonical), request)


def error_xml(code: str, message: str, kind: str = "Sender") -> str:
    """The Query protocol's error document (what botocore parsers.QueryParser reads)."""
    return (
        f'<ErrorResponse xmlns="{XMLNS}">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n'
        f"    <Message>{escape(message, quote=False)}</Message>\n  </Error>\n  <RequestId>{uuid.uuid4()}</RequestId>\n"
        "</ErrorResponse>\n"
    )


def invalid_parameters(params: dict[str, str]) -> str:
    """What AWS's input validation says of the call's parameters, per botocore's model of
    CompleteLifecycleAction (required members, lengths, the hook name's pattern), plus what its API
    reference adds: LifecycleActionResult is CONTINUE or ABANDON, and the instance is named by
    InstanceId or LifecycleActionToken."""
    shape = COMPLETE.input_shape
    for name in shape.required_members:
        if name not in params:
            lower = name[0].lower() + name[1:]
            return (
                f"1 validation error detected: Value null at '{lower}' failed to satisfy constraint: "
                "Member must not be null"
            )
    for name, value in params.items():
        member = shape.members.get(name)
        if member is None:
            continue
        meta = member.metadata
        if not meta.get("min", 0) <= len(value) <= meta.get("max", 1 << 20):
            return f"Value '{value}' at '{name}' failed to satisfy constraint: length"
        if name == "LifecycleHookName" and not re.fullmatch(meta["pattern"], value):
            return f"Value '{value}' at '{name}' failed to satisfy constraint: pattern {meta['pattern']}"
    if params["LifecycleActionResult"] not in ("CONTINUE", "ABANDON"):
        return "LifecycleActionResult must be CONTINUE or ABANDON"
    if not params.get("InstanceId") and not params.get("LifecycleActionToken"):
        return "Either an instance id or a lifecycle action token must be given"
    return ""


@dataclass
class Vm:
    world: World
    script: Path
    env: dict[str, str]
    argv_log: Path

    def run(self, command: str, script: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(script or self.script), command],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Nothing secret is ever printed, or put on a command line.
        for secret in SECRETS:
            assert secret not in result.stdout + result.stderr
            assert secret not in self.argv_log.read_text()
        return result

    def variant(self, old: str, new: str) -> Path:
        """The shipped script with one thing changed: to show that a guard catches it."""
        text = self.script.read_text()
        assert old in text
        path = self.script.with_name(f"variant-{uuid.uuid4().hex}")
        path.write_text(text.replace(old, new))
        return path


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Vm]:
    real_curl = tool("curl")
    world = World(tmp_path / "events.log")
    handlers = [
        type(f"Test{base.__name__}", (base,), {"world": world})
        for base in (LifecycleImds, AutoScaling, ConsulAgent, EnvoyAdmin)
    ]
    script = tmp_path / "mesh-lifecycle"
    script.write_text(_shipped_script(SCRIPT))
    token_file = tmp_path / "service.token"
    token_file.write_text(CONSUL_TOKEN + "\n")
    argv_log = tmp_path / "curl-argv.log"
    argv_log.write_text("")
    (tmp_path / "runuser-argv.log").write_text("")
    with serving(handlers[0]) as imds, serving(handlers[1]) as autoscaling, serving(handlers[2]) as consul:
        with serving(handlers[3]) as envoy:
            env = {
                "PATH": f"{FIXTURES}:{os.environ['PATH']}",
                "HOME": str(tmp_path),
                "REAL_CURL": real_curl,
                "FAKE_CURL_ARGV": str(argv_log),
                "RUNUSER": str(FIXTURES / "runuser"),
                "FAKE_RUNUSER_ARGV": str(tmp_path / "runuser-argv.log"),
                "FAKE_EVENTS": str(world.events_file),
                "FAKE_SYSTEMCTL_UNITS": "consul.service consul-login.service envoy@web.service",
                "MESH_SERVICE": "web",
                "LIFECYCLE_GROUP": GROUP,
                "LAUNCH_HOOK": LAUNCH_HOOK,
                "TERMINATE_HOOK": TERMINATE_HOOK,
                "IMDS_ENDPOINT": imds,
                "AUTOSCALING_ENDPOINT": autoscaling,
                "CONSUL_HTTP_ADDR": consul,
                "ENVOY_ADMIN": envoy,
                "TOKEN_FILE": str(token_file),
                "SYSTEMCTL": str(FIXTURES / "systemctl"),
                "RUN_DIR": str(tmp_path / "run"),
                "LIFECYCLE_RETRY_SECONDS": "0",
                "LIFECYCLE_POLL_SECONDS": "0",
                "LIFECYCLE_DRAIN_SECONDS": "0",
                "LIFECYCLE_READY_DEADLINE_SECONDS": "60",
                "LIFECYCLE_LEAVE_DEADLINE_SECONDS": "60",
            }
            yield Vm(world, script, env, argv_log)


LAUNCH_DONE = f"autoscaling complete {LAUNCH_HOOK} CONTINUE {INSTANCE_ID}"
TERMINATE_DONE = f"autoscaling complete {TERMINATE_HOOK} CONTINUE {INSTANCE_ID}"


# ready


def test_ready_completes_the_launch_hook_once_service_and_sidecar_pass(vm: Vm) -> None:
    vm.world.health = {"web": ["critical", "passing"], "web-sidecar-proxy": [None, "critical", "passing"]}
    result = vm.run("ready")
    assert result.returncode == 0, result.stderr
    assert vm.world.actions() == [
        "consul health web 503",
        "consul health web 200",
        "consul health web-sidecar-proxy 404",
        "consul health web 200",
        "consul health web-sidecar-proxy 503",
        "consul health web 200",
        "consul health web-sidecar-proxy 200",
        LAUNCH_DONE,
    ]
    assert vm.world.active[LAUNCH_HOOK] == set()
    assert vm.world.active[TERMINATE_HOOK] == {INSTANCE_ID}


def test_the_aws_call_goes_out_as_the_consul_user_whose_traffic_the_redirect_lets_through(vm: Vm) -> None:
    """As root, the call would enter Envoy's outbound listener, which with meshDestinationsOnly refuses
    everything outside the mesh (consul-redirect-traffic excludes the consul user's UID)."""
    assert vm.run("ready").returncode == 0
    runs = Path(vm.env["FAKE_RUNUSER_ARGV"]).read_text().splitlines()
    assert runs == ["consul curl"]


def test_a_missing_lifecycle_state_in_a_group_is_asked_again_never_taken_for_no_group(vm: Vm) -> None:
    """The metadata item answers 404 until the instance moves towards a steady state: a group's VM
    (LIFECYCLE_GROUP set) asks again, where it used to exit as if it were in no group."""
    vm.world.states = [None, None, "InService"]
    result = vm.run("ready")
    assert result.returncode == 0, result.stderr
    assert vm.world.actions()[-1] == LAUNCH_DONE


def test_a_warning_counts_a_new_vm_serves_while_an_upstream_is_down(vm: Vm) -> None:
    """The demo app's upstream probe warns (429) while an upstream is down: Consul routes to a warning
    instance, and a group must be able to heal itself during a dependency's outage."""
    vm.world.health = {"web": ["warning"], "web-sidecar-proxy": ["warning"]}
    result = vm.run("ready")
    assert result.returncode == 0, result.stderr
    assert vm.world.actions() == ["consul health web 429", "consul health web-sidecar-proxy 429", LAUNCH_DONE]


def test_ready_never_completes_while_the_sidecar_fails(vm: Vm) -> None:
    vm.world.health["web-sidecar-proxy"] = ["critical"]
    result = vm.run("ready", LIFECYCLE_READY_DEADLINE_SECONDS="0")
    assert result.returncode == 1
    assert "not ready within 0s" in result.stderr
    assert not any(e.startswith("autoscaling") for e in vm.world.events())
    assert vm.world.active[LAUNCH_HOOK] == {INSTANCE_ID}


def test_ready_retries_transient_failures(vm: Vm) -> None:
    vm.world.failures = {"consul": 1, "autoscaling": 1}
    result = vm.run("ready")
    assert result.returncode == 0, result.stderr
    assert "HTTP 500 InternalFailure: An internal error occurred" in result.stderr
    assert vm.world.actions() == [
        "consul health web 500",
        "consul health web 200",
        "consul health web-sidecar-proxy 200",
        "autoscaling InternalFailure",
        "consul health web 200",
        "consul health web-sidecar-proxy 200",
        LAUNCH_DONE,
    ]


def test_ready_after_a_reboot_finds_the_action_completed_and_is_done(vm: Vm) -> None:
    vm.world.active[LAUNCH_HOOK] = set()
    result = vm.run("ready")
    assert result.returncode == 0, result.stderr
    assert f"no active lifecycle action of {LAUNCH_HOOK}" in result.stdout
    assert vm.world.actions()[-1] == "autoscaling ValidationError"
    assert vm.world.active[LAUNCH_HOOK] == set()


def test_ready_outside_a_group_does_nothing(vm: Vm) -> None:
    vm.world.states = [None]
    result = vm.run("ready", LIFECYCLE_GROUP="")
    assert result.returncode == 0, result.stderr
    assert "target lifecycle state '': no launch hook to complete" in result.stdout
    assert vm.world.events() == ["imds target-lifecycle-state None"]


def test_ready_while_terminating_does_nothing(vm: Vm) -> None:
    vm.world.states = ["Terminated"]
    result = vm.run("ready")
    assert result.returncode == 0, result.stderr
    assert vm.world.actions() == []


def test_a_token_without_service_read_is_not_taken_for_health(vm: Vm) -> None:
    vm.world.readable = {"web"}
    result = vm.run("ready", LIFECYCLE_READY_DEADLINE_SECONDS="0")
    assert result.returncode == 1
    assert "web-sidecar-proxy is not passing in Consul yet (403)" in result.stdout
    assert vm.world.active[LAUNCH_HOOK] == {INSTANCE_ID}


def test_the_group_name_may_come_from_the_instance_tags(vm: Vm) -> None:
    vm.world.group_tag = True
    result = vm.run("ready", LIFECYCLE_GROUP="")
    assert result.returncode == 0, result.stderr
    assert vm.world.actions()[-1] == LAUNCH_DONE


def test_without_a_group_name_nothing_is_completed(vm: Vm) -> None:
    result = vm.run("ready", LIFECYCLE_GROUP="", LIFECYCLE_READY_DEADLINE_SECONDS="0")
    assert result.returncode == 1
    assert "no LIFECYCLE_GROUP, and no aws:autoscaling:groupName tag" in result.stderr


# watch


def test_watch_leaves_the_mesh_then_completes_the_terminating_hook(vm: Vm) -> None:
    vm.world.states = ["InService", "InService", "Terminated"]
    result = vm.run("watch")
    assert result.returncode == 0, result.stderr
    events = vm.world.events()
    # Nothing happens while the instance is in service.
    assert events[:3] == [
        "imds target-lifecycle-state InService",
        "imds target-lifecycle-state InService",
        "imds target-lifecycle-state Terminated",
    ]
    assert events[3:] == [
        "consul maintenance web enable=true",
        "envoy drain_listeners graceful inboundonly",
        "systemctl stop consul.service",
        "systemctl stop consul-login.service",
        TERMINATE_DONE,
    ]
    assert vm.world.active == {LAUNCH_HOOK: {INSTANCE_ID}, TERMINATE_HOOK: set()}


def test_a_restarted_watch_leaves_only_once(vm: Vm) -> None:
    vm.world.states = ["Terminated"]
    vm.world.failures = {"autoscaling": 1}
    first = vm.run("watch", LIFECYCLE_LEAVE_DEADLINE_SECONDS="0")
    assert first.returncode == 1
    second = vm.run("watch")
    assert second.returncode == 0, second.stderr
    assert "out of the mesh already" in second.stdout
    assert vm.world.actions() == [
        "consul maintenance web enable=true",
        "envoy drain_listeners graceful inboundonly",
        "systemctl stop consul.service",
        "systemctl stop consul-login.service",
        "autoscaling InternalFailure",
        TERMINATE_DONE,
    ]


def test_the_leave_goes_on_when_a_step_is_refused(vm: Vm) -> None:
    """Each step is best effort: a refused maintenance (no service:write) or a drain sent with GET
    (Envoy wants POST) is reported, and the VM still leaves, logs out and lets the instance go."""
    vm.world.states = ["Terminated"]
    vm.world.writable = set()
    result = vm.run("watch", vm.variant("--max-time 5 -X POST -o /dev/null", "--max-time 5 -o /dev/null"))
    assert result.returncode == 0, result.stderr
    assert "could not put web in maintenance" in result.stderr
    assert "Envoy's drain failed" in result.stderr
    assert vm.world.actions() == [
        "systemctl stop consul.service",
        "systemctl stop consul-login.service",
        TERMINATE_DONE,
    ]


def test_watch_outside_a_group_does_nothing(vm: Vm) -> None:
    vm.world.states = [None]
    result = vm.run("watch", LIFECYCLE_GROUP="")
    assert result.returncode == 0, result.stderr
    assert "nothing to watch" in result.stdout
    assert vm.world.actions() == []


# The signature: the stand-in's check, and guards shown failing


def test_the_stand_in_accepts_botocores_own_signature_and_nothing_else(vm: Vm) -> None:
    """The verifier is botocore's signer itself: a request botocore signs passes; the same request
    with its body changed after signing does not."""
    body = (
        f"Action=CompleteLifecycleAction&Version=2011-01-01&AutoScalingGroupName={GROUP}"
        f"&LifecycleHookName={LAUNCH_HOOK}&LifecycleActionResult=CONTINUE&InstanceId={INSTANCE_ID}"
    )
    url = vm.env["AUTOSCALING_ENDPOINT"] + "/"

    def signed(data: str) -> Request:
        request = AWSRequest(
            method="POST",
            url=url,
            data=data.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN), "autoscaling", REGION).add_auth(request)
        return Request(url, data=request.body, headers=dict(request.headers.items()), method="POST")

    tampered = signed(body)
    tampered.data = body.replace("CONTINUE", "ABANDON").encode()
    with pytest.raises(Exception, match="403"):
        urlopen(tampered, timeout=10)
    assert vm.world.events() == ["autoscaling SignatureDoesNotMatch"]
    with urlopen(signed(body), timeout=10) as answer:
        assert answer.status == 200
    assert vm.world.events()[-1] == LAUNCH_DONE


@pytest.mark.parametrize(
    ("old", "new", "refusal"),
    [
        # The session token dropped: temporary credentials without it are refused.
        ('print("header = \\"x-amz-security-token: %s\\"" % c["Token"])\n', "", "InvalidClientTokenId"),
        # Signed for another service, or another region.
        (':autoscaling"', ':ec2"', "Credential should be scoped to correct service"),
        ('"aws:amz:${region}:', '"aws:amz:us-east-1:', "Credential should be scoped to a valid region"),
        # A parameter the model requires, missing.
        ("--data-urlencode LifecycleActionResult=CONTINUE ", "", "Value null at 'lifecycleActionResult'"),
    ],
)
def test_a_wrongly_signed_or_incomplete_call_is_refused(vm: Vm, old: str, new: str, refusal: str) -> None:
    result = vm.run("ready", vm.variant(old, new), LIFECYCLE_READY_DEADLINE_SECONDS="0")
    assert result.returncode == 1
    assert refusal in result.stderr
    assert vm.world.active[LAUNCH_HOOK] == {INSTANCE_ID}


def test_the_stand_ins_answers_are_what_botocore_parses() -> None:
    """The error and success documents have the Query protocol's shape: botocore reads the code and
    message the script matches on."""
    parser = QueryParser()
    parsed = parser.parse(
        {
            "status_code": 400,
            "headers": {},
            "body": error_xml("ValidationError", "No active Lifecycle Action found").encode(),
        },
        COMPLETE.output_shape,
    )
    assert parsed["Error"]["Code"] == "ValidationError"
    assert parsed["Error"]["Message"] == "No active Lifecycle Action found"


# Settings, units, the shipped script


def test_the_settings_template_gives_the_script_what_it_reads(vm: Vm) -> None:
    text = _render(
        "lifecycle.env.j2",
        service=ServiceSpec(name="web", port=9090),
        group_name=GROUP,
        launch_hook=LAUNCH_HOOK,
        terminate_hook=TERMINATE_HOOK,
    )
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings == {
        "MESH_SERVICE": '"web"',
        "LIFECYCLE_GROUP": f'"{GROUP}"',
        "LAUNCH_HOOK": f'"{LAUNCH_HOOK}"',
        "TERMINATE_HOOK": f'"{TERMINATE_HOOK}"',
    }
    # The script reads exactly these (a key renamed on one side only would be caught here).
    read = set(re.findall(r"\$\{(MESH_SERVICE|LIFECYCLE_GROUP|LAUNCH_HOOK|TERMINATE_HOOK)", SCRIPT.read_text()))
    assert read == set(settings)
    result = vm.run("ready", **{k: v.strip('"') for k, v in settings.items()})
    assert result.returncode == 0, result.stderr


def test_the_settings_template_escapes_what_it_writes() -> None:
    with pytest.raises(UnsafeValue):
        _render(
            "lifecycle.env.j2",
            service=ServiceSpec(name="web", port=9090),
            group_name='web"\nLAUNCH_HOOK=x',
            launch_hook=LAUNCH_HOOK,
            terminate_hook=TERMINATE_HOOK,
        )


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = ["mesh-lifecycle-ready.service", "mesh-lifecycle-watch.service"]
    for unit in units:
        (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
        shutil.copy(TEMPLATES / unit, root / "etc/systemd/system" / unit)
    exe = root / "usr/local/sbin/mesh-lifecycle"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert systemd_verify(root, units) == []


def test_the_watch_stops_before_the_agent_and_the_logout() -> None:
    """At shutdown systemd stops units in the reverse order of After=: the watch goes first, so its
    own `systemctl stop` calls never race the agent's and the logout's normal stop."""
    for unit in ("mesh-lifecycle-watch.service", "mesh-lifecycle-ready.service"):
        after = " ".join(re.findall(r"^After=(.*)$", (TEMPLATES / unit).read_text(), re.M)).split()
        assert {"consul.service", "consul-login.service"} <= set(after), unit


def test_the_shipped_script_passes_shellcheck() -> None:
    result = subprocess.run(
        [tool("shellcheck"), "--severity=style", "-"], input=_shipped_script(SCRIPT), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
