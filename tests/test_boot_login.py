"""consul-login: the boot-time aws-iam login that keeps every secret out of a mesh VM's user data.

The script runs for real, against a stand-in metadata service (an HTTP server on 127.0.0.1 in this
process, as strict as IMDSv2) and a stand-in `consul` (tests/fixtures/login/consul) that parses each
call as Consul 1.22's CLI does, refuses what it refuses (a login without a region, unknown flags,
arguments where none are taken), issues tokens linked to the roles that exist, and can be told to
fail, refuse a method, stall or serve a bad gossip key.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import hcl2
import pytest

from components.userdata import SCRIPTS
from tests.conftest import need, systemd_verify, tool
from tests.helpers import serving

LOGIN = SCRIPTS / "consul-login.sh"
FAKE_CONSUL = Path(__file__).parent / "fixtures" / "login" / "consul"
TEMPLATES = Path(__file__).parent.parent / "components" / "templates"
INSTANCE_ID = "i-0123456789abcdef0"
REGION = "eu-central-1"
IMDS_TOKEN = "imds-session-token-AQAEAEx9"
METHODS = {
    "agent": "consul-tproxy-vms-dev-agent",
    "service": "consul-tproxy-vms-dev-service",
    "dns": "consul-tproxy-vms-dev-dns",
}
ADDRS = ["https://10.0.1.10:8501", "https://10.0.2.10:8501"]
SERVER_ID = "consul-tproxy-vms-dev"
ROLES = {
    "agent": "consul-tproxy-vms-dev-web-agent",
    "service": "consul-tproxy-vms-dev-web-agent-read",
    "dns": "consul-tproxy-vms-dev-dns",
}
GOSSIP_KEY = base64.b64encode(bytes(range(32))).decode()
GOSSIP_PATH = "consul-tproxy-vms/gossip-key"
CONSUL_GROUP, ENVOY_GROUP = "daemon", "nogroup"  # groups every Debian/Ubuntu system has
FINAL_CONFIG = ["node.hcl", "tokens.hcl", "gossip.hcl"]
TOKEN_FILES = ["agent.token", "service.token", "dns.token"]


class Imds(BaseHTTPRequestHandler):
    """IMDSv2 as AWS documents it (EC2 User Guide, "Use the Instance Metadata Service to access instance
    metadata" and "Instance metadata categories"): a session token from a PUT whose TTL header is 1 to
    21600 seconds (400 otherwise), refused to a PUT carrying X-Forwarded-For (403); every GET needs
    the token (401); unknown paths are 404."""

    instance_id = INSTANCE_ID
    region = REGION

    def do_PUT(self) -> None:
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if self.headers.get("X-Forwarded-For"):
            self.answer(403, "")
        elif self.path != "/latest/api/token":
            self.answer(404, "")
        elif not (ttl.isdigit() and 1 <= int(ttl) <= 21600):
            self.answer(400, "")
        else:
            self.answer(200, IMDS_TOKEN)

    def do_GET(self) -> None:
        paths = {
            "/latest/meta-data/instance-id": type(self).instance_id,
            "/latest/meta-data/placement/region": type(self).region,
        }
        if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
            self.answer(401, "")
        elif self.path in paths:
            self.answer(200, paths[self.path])
        else:
            self.answer(404, "")

    def answer(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[type[Imds]]:
    handler = type("TestImds", (Imds,), {})
    with serving(handler) as base:
        handler.endpoint = base  # type: ignore[attr-defined]
        yield handler


@dataclass
class Vm:
    """One VM's directories, the stand-ins' settings, and how to run consul-login on it."""

    tmp: Path
    imds: str
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = self.tmp / "etc/consul.d"
        self.run_dir = self.tmp / "run"
        self.tokens = self.run_dir / "consul-login"
        self.state = self.tmp / "fake-consul"
        self.log = self.state / "calls.log"
        for d in (self.config, self.state):
            d.mkdir(parents=True)
        (self.config / "ca.pem").write_text("stand-in CA\n")
        self.env = {
            "PATH": os.environ["PATH"],
            "MESH_SERVICE": "web",
            "LOGIN_METHODS": " ".join(f"{k}={m}" for k, m in METHODS.items()),
            "LOGIN_ROLES": " ".join(f"{k}={r}" for k, r in ROLES.items()),
            "LOGIN_SERVER_ID": SERVER_ID,
            "LOGIN_HTTP_ADDRS": " ".join(ADDRS),
            "CONSUL_CACERT": str(self.config / "ca.pem"),
            "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
            "GOSSIP_KEY_PATH": GOSSIP_PATH,
            "LOGIN_DEADLINE_SECONDS": "10",
            "LOGIN_RETRY_SECONDS": "0",
            "IMDS_ENDPOINT": self.imds,
            "CONSUL_BIN": str(FAKE_CONSUL),
            "CONSUL_CONFIG_DIR": str(self.config),
            "TOKEN_DIR": str(self.tokens),
            "CONSUL_GROUP": CONSUL_GROUP,
            "ENVOY_GROUP": ENVOY_GROUP,
            "LOCK_FILE": str(self.tmp / "lock/consul-login.lock"),
            # No shared AWS config for the stand-in to find a region in.
            "HOME": str(self.tmp),
            "FAKE_CONSUL_LOG": str(self.log),
            "FAKE_CONSUL_STATE": str(self.state),
            "FAKE_CONSUL_METHODS": " ".join(METHODS.values()),
            "FAKE_CONSUL_SERVER_ID": SERVER_ID,
            "FAKE_CONSUL_GOSSIP_KEY": GOSSIP_KEY,
            # The roles that exist, as the binding rules link them (identity.binding_rules).
            "FAKE_CONSUL_ROLES": " ".join(f"{METHODS[k]}={r}" for k, r in ROLES.items()),
            "FAKE_CONSUL_SERVICE_IDENTITY": f"{METHODS['service']}=web",
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(LOGIN), *args], env={**self.env, **env}, capture_output=True, text=True, timeout=60
        )

    def fail_next(self, calls: int) -> str:
        path = self.state / "failures"
        path.write_text(f"{calls}\n")
        return str(path)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def issued(self) -> dict[str, str]:
        """Method -> the last token the stand-in issued for it."""
        path = self.state / "issued"
        lines = path.read_text().splitlines() if path.exists() else []
        return dict(line.split() for line in lines)

    def logged_out(self) -> list[str]:
        path = self.state / "logged-out"
        return path.read_text().splitlines() if path.exists() else []

    def written(self) -> list[str]:
        """Every file consul-login may write or leave behind: finals, staged temp files, work dirs."""
        found = [p for p in self.config.iterdir() if p.name != "ca.pem"]
        if self.run_dir.exists():
            found += [p for p in self.run_dir.rglob("*")]
        return sorted(str(p.relative_to(self.tmp)) for p in found)


@pytest.fixture
def vm(tmp_path: Path, imds: type[Imds]) -> Vm:
    need(os.geteuid() == 0, "consul-login sets owners with chown: it needs root")
    tool("curl")
    return Vm(tmp_path, imds.endpoint)  # type: ignore[attr-defined]


def owner(path: Path) -> tuple[int, str, str]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), "root" if st.st_uid == 0 else str(st.st_uid), grp.getgrgid(st.st_gid).gr_name


def hcl(path: Path) -> dict[str, object]:
    """A config file parsed, without the quotes and block markers python-hcl2 8 keeps."""

    def unquote(value: object) -> object:
        if isinstance(value, dict):
            return {k: unquote(v) for k, v in value.items() if k != "__is_block__"}
        if isinstance(value, list):
            return [unquote(v) for v in value]
        if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        return value

    parsed = unquote(hcl2.loads(path.read_text()))
    assert isinstance(parsed, dict)
    return parsed


def http_addr(call: str) -> str:
    return next(arg.removeprefix("-http-addr=") for arg in call.split() if arg.startswith("-http-addr="))


def assert_no_secret(vm: Vm, result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    for secret in [*vm.issued().values(), GOSSIP_KEY, IMDS_TOKEN]:
        assert secret not in output


def test_happy_path_writes_node_tokens_and_gossip_key(vm: Vm) -> None:
    result = vm.run()
    assert result.returncode == 0, result.stderr
    node = f"web-{INSTANCE_ID}"
    assert result.stdout.strip() == f"consul-login: node {node} logged in (agent, service, dns tokens written)"
    assert result.stderr == ""
    assert_no_secret(vm, result)

    issued = vm.issued()
    tokens = {kind: issued[method] for kind, method in METHODS.items()}
    assert hcl(vm.config / "node.hcl") == {"node_name": node}
    assert hcl(vm.config / "gossip.hcl") == {"encrypt": GOSSIP_KEY}
    acl = hcl(vm.config / "tokens.hcl")["acl"][0]["tokens"][0]  # type: ignore[index]
    assert acl == {
        "agent": tokens["agent"],
        "dns": tokens["dns"],
        "config_file_service_registration": tokens["service"],
    }
    for kind, token in tokens.items():
        assert (vm.tokens / f"{kind}.token").read_text().strip() == token

    for name in FINAL_CONFIG:
        assert owner(vm.config / name) == (0o640, "root", CONSUL_GROUP), name
    assert owner(vm.tokens) == (0o751, "root", "root")
    # The agent reads its token as CONSUL_HTTP_TOKEN_FILE too (its api.DefaultConfig() self-calls).
    assert owner(vm.tokens / "agent.token") == (0o640, "root", CONSUL_GROUP)
    assert owner(vm.tokens / "dns.token") == (0o600, "root", "root")
    assert owner(vm.tokens / "service.token") == (0o640, "root", ENVOY_GROUP)
    # No staged file and no work dir with token copies stays behind.
    assert vm.written() == [
        "etc/consul.d/gossip.hcl",
        "etc/consul.d/node.hcl",
        "etc/consul.d/tokens.hcl",
        "run/consul-login",
        "run/consul-login/agent.token",
        "run/consul-login/dns.token",
        "run/consul-login/service.token",
    ]

    calls = vm.calls()
    assert len(calls) == 7
    for i, method in enumerate(METHODS.values()):
        args = calls[2 * i].split()
        assert args[:3] == ["login", f"-http-addr={ADDRS[0]}", "-type=aws-iam"]
        assert f"-method={method}" in args and f"-aws-server-id-header-value={SERVER_ID}" in args
        assert "-aws-auto-bearer-token" in args and "-aws-include-entity" in args
        assert f"-aws-region={REGION}" in args
        # Each token is read back to check its roles.
        assert calls[2 * i + 1].startswith(f"acl token read -http-addr={ADDRS[0]} -self -format=json -token-file=")
    kv = calls[6].split()
    assert kv[:3] == ["kv", "get", f"-http-addr={ADDRS[0]}"] and kv[-1] == GOSSIP_PATH
    assert kv[3].startswith("-token-file=")


def test_without_gossip_key_path_no_gossip_hcl(vm: Vm) -> None:
    result = vm.run(GOSSIP_KEY_PATH="")
    assert result.returncode == 0, result.stderr
    assert not (vm.config / "gossip.hcl").exists()
    assert not any(c.startswith("kv") for c in vm.calls())


def test_servers_not_up_yet_retries_through_the_addresses(vm: Vm) -> None:
    error = "Error logging in: dial tcp 10.0.1.10:8501: connect: connection refused"
    result = vm.run(FAKE_CONSUL_FAILURES=vm.fail_next(3), FAKE_CONSUL_ERROR=error)
    assert result.returncode == 0, result.stderr
    method = METHODS["agent"]
    assert result.stderr.splitlines() == [
        f"consul-login: login to {method} at {ADDRS[0]} failed (attempt 1): {error}; retrying in 0s",
        f"consul-login: login to {method} at {ADDRS[1]} failed (attempt 2): {error}; retrying in 0s",
        f"consul-login: login to {method} at {ADDRS[0]} failed (attempt 3): {error}; retrying in 0s",
    ]
    # The server that answered is kept for the next calls (three logins, each read back, the key).
    assert [http_addr(c) for c in vm.calls()[3:]] == [ADDRS[1]] * 7
    assert (vm.config / "tokens.hcl").exists()
    assert_no_secret(vm, result)


def test_a_server_that_is_down_is_skipped(vm: Vm) -> None:
    result = vm.run(FAKE_CONSUL_DOWN_ADDRS=ADDRS[0])
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "connection refused" in result.stderr


def test_login_refused_until_the_deadline_writes_nothing(vm: Vm) -> None:
    """The agent and service logins succeed, dns is refused: no final file may exist at all."""
    start = time.monotonic()
    # Deadlines of a few seconds here: under load the logins before the one that fails can take a
    # second or two, and the retry lines asserted must still fit (bash's SECONDS ticks in whole seconds).
    result = vm.run(FAKE_CONSUL_REFUSE=METHODS["dns"], LOGIN_DEADLINE_SECONDS="5", LOGIN_RETRY_SECONDS="1")
    assert result.returncode == 1
    assert time.monotonic() - start < 10
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        rf"consul-login: login to {METHODS['dns']} failed after \d+ attempts in \d+s: the Consul servers"
        rf" \({' '.join(ADDRS)}\) are not reachable or refuse the login; last error: Error logging in:"
        r" Unexpected response code: 403 \(rpc error making call: Permission denied\)",
        last,
    ), last
    assert "(attempt 1)" in result.stderr and "retrying in 1s" in result.stderr
    assert set(vm.issued()) == {METHODS["agent"], METHODS["service"]}
    # The tokens this failed run made are destroyed: no later run would know of them.
    assert sorted(vm.logged_out()) == sorted(vm.issued().values())
    assert vm.written() == []
    assert_no_secret(vm, result)


def test_bad_instance_id_is_refused(vm: Vm, imds: type[Imds]) -> None:
    imds.instance_id = 'i-0123"; rm -rf /'
    result = vm.run()
    assert result.returncode == 1
    assert "answered something that is not an instance id; refusing it" in result.stderr
    assert "rm -rf" not in result.stderr
    assert vm.calls() == [] and vm.written() == []


def test_metadata_service_down_until_the_deadline(vm: Vm) -> None:
    result = vm.run(IMDS_ENDPOINT="http://127.0.0.1:9", LOGIN_DEADLINE_SECONDS="3", LOGIN_RETRY_SECONDS="1")
    assert result.returncode == 1
    assert "metadata service at http://127.0.0.1:9 failed (attempt 1)" in result.stderr
    assert "no instance id and region from the metadata service" in result.stderr.splitlines()[-1]
    assert vm.calls() == [] and vm.written() == []


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        base64.b64encode(bytes(15)).decode(),
        base64.b64encode(bytes(33)).decode(),
        base64.b64encode(bytes(16)).decode().rstrip("="),
        base64.b64encode(bytes(16)).decode() + '"\nacl { enabled = false }',
    ],
)
def test_bad_gossip_key_is_refused_and_never_printed(vm: Vm, key: str) -> None:
    result = vm.run(FAKE_CONSUL_GOSSIP_KEY=key)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"consul-login: the value at {GOSSIP_PATH} is not a gossip key (base64 of 16, 24 or 32 bytes)"
    )
    assert key not in result.stdout + result.stderr
    assert vm.written() == []


@pytest.mark.parametrize("size", [16, 24, 32])
def test_gossip_keys_of_every_aes_size_are_accepted(vm: Vm, size: int) -> None:
    key = base64.b64encode(os.urandom(size)).decode()
    result = vm.run(FAKE_CONSUL_GOSSIP_KEY=key)
    assert result.returncode == 0, result.stderr
    assert hcl(vm.config / "gossip.hcl") == {"encrypt": key}


def test_missing_gossip_key_is_retried_then_fails(vm: Vm) -> None:
    result = vm.run(FAKE_CONSUL_GOSSIP_KEY="", LOGIN_DEADLINE_SECONDS="4", LOGIN_RETRY_SECONDS="1")
    assert result.returncode == 1
    assert f"reading the gossip key {GOSSIP_PATH} at {ADDRS[0]} failed (attempt 1)" in result.stderr
    assert f"last error: Error! No key exists at: {GOSSIP_PATH}" in result.stderr
    assert vm.written() == []


def test_a_login_that_yields_no_uuid_is_refused(vm: Vm) -> None:
    result = vm.run(FAKE_CONSUL_SINK='x" }\nacl { enabled = false', LOGIN_DEADLINE_SECONDS="2", LOGIN_RETRY_SECONDS="1")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].endswith(
        "last error: the login succeeded but left no token SecretID in its sink file"
    )
    assert vm.written() == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("LOGIN_METHODS", "agent=a service=s"),
        ("LOGIN_METHODS", "agent=a service=s dns=d agent=b"),
        ("LOGIN_METHODS", "agent=a service=s dns=d node=n"),
        ("LOGIN_ROLES", "agent=a service=s"),
        ("LOGIN_ROLES", "agent=a service=s dns="),
        ("LOGIN_HTTP_ADDRS", "http://10.0.1.10:8500"),
        ("LOGIN_HTTP_ADDRS", ""),
        ("MESH_SERVICE", "Web_1"),
        ("LOGIN_SERVER_ID", ""),
    ],
)
def test_bad_settings_are_refused_before_anything(vm: Vm, setting: str, value: str) -> None:
    result = vm.run(**{setting: value})
    assert result.returncode == 1 and result.stderr.startswith("consul-login: ")
    assert vm.calls() == [] and vm.written() == []


def test_logout_destroys_every_token_and_is_idempotent(vm: Vm) -> None:
    assert vm.run().returncode == 0
    tokens = sorted(vm.issued().values())
    before = len(vm.calls())

    result = vm.run("logout")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "consul-login: logged out"
    logouts = vm.calls()[before:]
    assert len(logouts) == 3
    assert all(c.startswith(f"logout -http-addr={ADDRS[0]} -token-file={vm.tokens}/") for c in logouts)
    assert sorted(vm.logged_out()) == tokens
    assert not (vm.config / "tokens.hcl").exists()
    assert list(vm.tokens.iterdir()) == []
    assert (vm.config / "node.hcl").exists()
    assert_no_secret(vm, result)

    again = vm.run("logout")
    assert again.returncode == 0, again.stderr
    assert len(vm.calls()) == before + 3


def test_logout_is_best_effort_and_tries_the_next_server(vm: Vm) -> None:
    assert vm.run().returncode == 0
    issued = vm.issued()
    stuck = issued[METHODS["service"]]
    result = vm.run("logout", FAKE_CONSUL_DOWN_ADDRS=ADDRS[0], FAKE_CONSUL_LOGOUT_FAIL=stuck)
    assert result.returncode == 0
    assert result.stderr.strip() == (
        f"consul-login: could not log out the service token ({' '.join(ADDRS)}):"
        " Error destroying token: Unexpected response code: 403 (Permission denied)"
    )
    assert sorted(vm.logged_out()) == sorted(t for t in issued.values() if t != stuck)
    # The token files go; tokens.hcl stays, so that the next boot destroys the stuck token.
    assert list(vm.tokens.iterdir()) == []
    assert stuck in (vm.config / "tokens.hcl").read_text()
    assert_no_secret(vm, result)


def test_logout_with_nothing_logged_in(vm: Vm) -> None:
    result = vm.run("logout")
    assert result.returncode == 0, result.stderr
    assert vm.calls() == []


def test_login_script_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    for script in (LOGIN,):
        result = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # Imported here: test_validators renders every VM at import, which this file does not need.
    from tests.test_validators import fake_root

    root = fake_root(
        tmp_path,
        {
            "/etc/systemd/system/consul.service": (TEMPLATES / "consul.service").read_text(),
            "/etc/systemd/system/consul.service.d/login.conf": (TEMPLATES / "consul-login.conf").read_text(),
            "/etc/systemd/system/consul-login.service": (TEMPLATES / "consul-login.service").read_text(),
            "/etc/consul.d/login.env": "MESH_SERVICE=web\n",
            "/usr/local/sbin/consul-login": "#!/bin/sh\n",
        },
    )
    assert systemd_verify(root, ["consul-login.service", "consul.service"]) == []


def test_units_order_the_login_before_the_agent() -> None:
    unit = (TEMPLATES / "consul-login.service").read_text()
    for line in [
        "Before=consul.service",
        "After=network-online.target",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "EnvironmentFile=/etc/consul.d/login.env",
        "ExecStart=/usr/local/sbin/consul-login",
        "ExecStop=/usr/local/sbin/consul-login logout",
        "TimeoutStartSec=16min",
        "TimeoutStopSec=3min",
        # Never given up for good: restarted ever later, without a start limit.
        "Restart=on-failure",
        "RestartSteps=5",
        "RestartMaxDelaySec=5min",
        "StartLimitIntervalSec=0",
    ]:
        assert line in unit.splitlines(), line
    dropin = (TEMPLATES / "consul-login.conf").read_text().splitlines()
    for line in [
        "Wants=consul-login.service",
        "After=consul-login.service",
        "PartOf=consul-login.service",
        "StartLimitIntervalSec=0",
        "Environment=CONSUL_HTTP_TOKEN_FILE=/run/consul-login/agent.token",
    ]:
        assert line in dropin, line
    # A failed login must not fail the agent for good (a Requires= dependency failure is never retried):
    # the agent waits for its tokens by failing its ExecStartPre, which its Restart=on-failure retries.
    assert not any(line.startswith("Requires=") for line in dropin)
    # It waits for this boot's login (agent.token on tmpfs, renamed last), not for a tokens.hcl that a
    # previous boot may have left.
    assert any(line.startswith("ExecStartPre=+") and "test -s /run/consul-login/agent.token" in line for line in dropin)
    assert "Restart=on-failure" in (TEMPLATES / "consul.service").read_text().splitlines()


def fake_consul(vm: Vm, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The stand-in alone, called as consul-login would call the real CLI."""
    return subprocess.run([str(FAKE_CONSUL), *args], env={**vm.env, **env}, capture_output=True, text=True, timeout=30)


def test_the_stand_in_refuses_a_login_without_a_region_as_consul_does(vm: Vm) -> None:
    """command/login/aws.go: no -aws-region, AWS_REGION, AWS_DEFAULT_REGION or shared config region is
    "AWS region not found". These are the flags consul-login passed before it read the region."""
    old_flags = [
        "login",
        f"-http-addr={ADDRS[0]}",
        "-type=aws-iam",
        f"-method={METHODS['agent']}",
        "-aws-auto-bearer-token",
        "-aws-include-entity",
        f"-aws-server-id-header-value={SERVER_ID}",
        f"-token-sink-file={vm.tmp / 'sink'}",
    ]
    refused = fake_consul(vm, *old_flags)
    assert refused.returncode == 1
    assert refused.stderr.strip() == "Error with aws-iam auth method: AWS region not found"
    # Any of the sources aws-sdk-go's session reads makes it a login.
    assert fake_consul(vm, *old_flags, AWS_REGION=REGION).returncode == 0
    assert fake_consul(vm, *old_flags, AWS_DEFAULT_REGION=REGION).returncode == 0
    (vm.tmp / ".aws").mkdir()
    (vm.tmp / ".aws/config").write_text(f"[default]\nregion = {REGION}\n")
    assert fake_consul(vm, *old_flags).returncode == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["login", "-aws-regoin=x"], "flag provided but not defined: -aws-regoin"),
        (["kv", "get", "key", f"-http-addr={ADDRS[0]}"], "Too many arguments (expected 1, got 2)"),
        (["logout", f"-http-addr={ADDRS[0]}", "extra"], "Should have no non-flag arguments."),
        (["acl", "token", "read", f"-http-addr={ADDRS[0]}"], "Must specify the -id parameter"),
        (
            ["login", f"-http-addr={ADDRS[0]}", "-method=m", "-token-sink-file=/x", "-aws-region=r"],
            "Missing '-aws-auto-bearer-token' flag",
        ),
        (["login", f"-http-addr={ADDRS[0]}", "-aws-include-entity=maybe"], 'invalid boolean value "maybe"'),
    ],
)
def test_the_stand_in_parses_flags_as_consuls_cli_does(vm: Vm, args: list[str], error: str) -> None:
    result = fake_consul(vm, *args)
    assert result.returncode == 1
    assert error in result.stderr


def test_the_login_passes_the_instances_region(vm: Vm, imds: type[Imds]) -> None:
    imds.region = "ap-southeast-2"
    assert vm.run().returncode == 0
    logins = [c for c in vm.calls() if c.startswith("login")]
    assert len(logins) == 3 and all("-aws-region=ap-southeast-2" in c.split() for c in logins)


@pytest.mark.parametrize("region", ["", "us-east-1; rm -rf /", "US-EAST-1", "us-east-1\n-token=x"])
def test_a_bad_region_from_the_metadata_service_is_refused(vm: Vm, imds: type[Imds], region: str) -> None:
    imds.region = region
    result = vm.run(LOGIN_DEADLINE_SECONDS="2", LOGIN_RETRY_SECONDS="1")
    assert result.returncode == 1
    assert vm.calls() == [] and vm.written() == []
    if region:
        assert "answered something that is not an AWS region; refusing it" in result.stderr
        assert "rm -rf" not in result.stderr


def test_a_token_without_its_role_is_logged_out_and_the_login_retried(vm: Vm) -> None:
    """agent/consul/auth/binder.go skips a role that does not exist yet: the login succeeds with a token
    that lacks it. consul-login reads it back, destroys it and logs in again."""
    roleless = vm.state / "roleless"
    roleless.write_text("1\n")
    result = vm.run(FAKE_CONSUL_ROLELESS=str(roleless))
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first == (
        f"consul-login: login to {METHODS['agent']} at {ADDRS[0]} failed (attempt 1): the agent token lacks role"
        f" {ROLES['agent']} (a binding rule names it but it does not exist yet?); retrying in 0s"
    )
    # Four tokens were issued: the roleless one is gone, the other three are live and in use.
    issued = (vm.state / "issued").read_text().split()[1::2]
    assert len(issued) == 4 and vm.logged_out() == [issued[0]]
    acl = hcl(vm.config / "tokens.hcl")["acl"][0]["tokens"][0]  # type: ignore[index]
    assert sorted(acl.values()) == sorted(issued[1:])  # type: ignore[union-attr]
    assert_no_secret(vm, result)


def test_a_service_token_without_its_service_identity_is_refused(vm: Vm) -> None:
    result = vm.run(FAKE_CONSUL_SERVICE_IDENTITY="", LOGIN_DEADLINE_SECONDS="2", LOGIN_RETRY_SECONDS="1")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].endswith(
        "the service token lacks the service identity web (a binding rule names it but it does not exist yet?)"
    )
    # Every token issued for the service method was destroyed again; nothing was written.
    service_tokens = [
        t
        for m, t in (line.split() for line in (vm.state / "issued").read_text().splitlines())
        if m == METHODS["service"]
    ]
    assert service_tokens and set(service_tokens) <= set(vm.logged_out())
    assert vm.written() == []


def test_the_previous_boots_tokens_are_logged_out(vm: Vm) -> None:
    """A crash skips ExecStop: the next boot finds the old tokens in tokens.hcl (on disk) and destroys
    them once the new ones are in place (/run is a fresh tmpfs)."""
    assert vm.run().returncode == 0
    old = sorted(vm.issued().values())
    shutil.rmtree(vm.run_dir)  # the reboot: /run is empty again, /etc/consul.d is not
    result = vm.run()
    assert result.returncode == 0, result.stderr
    assert sorted(vm.logged_out()) == old
    new = sorted(vm.issued().values())
    assert set(new).isdisjoint(old)
    live = json.loads((vm.state / "tokens.json").read_text())
    assert sorted(live) == new
    assert_no_secret(vm, result)


def test_two_logins_never_overlap(vm: Vm) -> None:
    """Both run to the end, one after the other (the lock): the second replaces the first's tokens and
    destroys them, so exactly one set is live and it is the one in the files."""
    runs = [
        subprocess.Popen(["bash", str(LOGIN)], env=vm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
    live = json.loads((vm.state / "tokens.json").read_text())
    acl = hcl(vm.config / "tokens.hcl")["acl"][0]["tokens"][0]  # type: ignore[index]
    assert sorted(live) == sorted(acl.values())  # type: ignore[union-attr]
    assert len(vm.logged_out()) == 3


def test_a_held_lock_is_waited_for_then_reported(vm: Vm) -> None:
    lock = Path(vm.env["LOCK_FILE"])
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(["flock", str(lock), "sleep", "30"])
    try:
        time.sleep(0.5)
        result = vm.run(LOGIN_DEADLINE_SECONDS="1")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert result.stderr.strip() == f"consul-login: another consul-login held {lock} for 1s"
    assert vm.calls() == []


def test_a_server_that_accepts_and_stalls_is_timed_out(vm: Vm) -> None:
    result = vm.run(
        FAKE_CONSUL_HANG="login", LOGIN_CALL_TIMEOUT_SECONDS="1", LOGIN_DEADLINE_SECONDS="3", LOGIN_RETRY_SECONDS="0"
    )
    assert result.returncode == 1
    assert "failed (attempt 1): no answer within 1s" in result.stderr


def test_agent_token_is_renamed_last_so_the_agent_never_starts_on_old_tokens(vm: Vm) -> None:
    """consul.service waits for agent.token: it appears only once every other file of this boot's
    login is in place (the renames follow the staging order)."""
    script = LOGIN.read_text()
    stages = re.findall(r'^stage "\$\{(?:token_dir|config_dir)\}/([a-z.]+)"', script, re.M)
    assert stages[-1] == "agent.token" and "tokens.hcl" in stages


def test_a_logout_that_fails_keeps_tokens_hcl_for_the_next_boot(vm: Vm) -> None:
    assert vm.run().returncode == 0
    old = sorted(vm.issued().values())
    result = vm.run("logout", FAKE_CONSUL_DOWN_ADDRS=" ".join(ADDRS))
    assert result.returncode == 0
    assert "kept" in result.stdout and (vm.config / "tokens.hcl").exists()
    assert list(vm.tokens.iterdir()) == []
    # The next boot logs them out once it has its own.
    assert vm.run().returncode == 0
    assert sorted(vm.logged_out()) == old
