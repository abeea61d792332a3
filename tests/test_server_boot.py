"""A Consul server's boot without secrets in its user data: consul-server-secrets (gossip key and TLS
key from SSM Parameter Store) against a stand-in SSM endpoint on 127.0.0.1, and consul-server-login
(agent token from the aws-iam auth method) against a stand-in consul (tests/fixtures/server)."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hcl2
import pytest

from tests.conftest import tool

pytest.importorskip("boto3", reason="consul-server-secrets needs boto3 (python3-boto3 on the VMs)")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "components" / "templates"
SCRIPTS = ROOT / "scripts"
STUBS = Path(__file__).parent / "fixtures" / "server"
SECRETS_SCRIPT = SCRIPTS / "consul-server-secrets.py"
LOGIN_SCRIPT = SCRIPTS / "consul-server-login.sh"
GOSSIP_PARAM = "/consul-tproxy-vms/dev/gossip-key"
TLS_PARAM = "/consul-tproxy-vms/dev/server-tls-key"


def pem_key(label: str = "PRIVATE KEY") -> str:
    body = base64.b64encode(secrets.token_bytes(480)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


# --- A stand-in for SSM's JSON protocol (AmazonSSM.GetParameter) -------------------------------


@dataclass
class FakeSsm:
    parameters: dict[str, str]
    failures: list[str] = field(default_factory=list)  # error codes answered first, one per request
    always: str = ""  # an error code answered to every request
    requests: list[dict] = field(default_factory=list)


def _handler(state: FakeSsm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            target = self.headers.get("X-Amz-Target")
            state.requests.append(
                {"target": target, "body": body, "signed": "AWS4-HMAC-SHA256" in self.headers.get("Authorization", "")}
            )
            if target != "AmazonSSM.GetParameter":
                return self.answer(400, {"__type": "UnknownOperationException"})
            if state.failures or state.always:
                code = state.failures.pop(0) if state.failures else state.always
                return self.answer(400, {"__type": code, "message": f"stand-in {code}"})
            name = body.get("Name")
            if name not in state.parameters:
                return self.answer(400, {"__type": "ParameterNotFound"})
            value = state.parameters[name]
            return self.answer(200, {"Parameter": {"Name": name, "Type": "SecureString", "Value": value, "Version": 1}})

    return Handler


@pytest.fixture
def ssm() -> Iterator[tuple[FakeSsm, str]]:
    state = FakeSsm(parameters={GOSSIP_PARAM: base64.b64encode(secrets.token_bytes(32)).decode(), TLS_PARAM: pem_key()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_secrets(tmp_path: Path, endpoint: str, deadline: str = "30", retry: str = "0.1") -> subprocess.CompletedProcess:
    config = tmp_path / "consul.d"
    config.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE",
        "AWS_SECRET_ACCESS_KEY": "fake/secret/key",
        "AWS_ENDPOINT_URL_SSM": endpoint,
        "GOSSIP_KEY_PARAMETER": GOSSIP_PARAM,
        "TLS_KEY_PARAMETER": TLS_PARAM,
        "SECRETS_DEADLINE_SECONDS": deadline,
        "SECRETS_RETRY_SECONDS": retry,
        "CONSUL_CONFIG_DIR": str(config),
        "CONSUL_GROUP": "root",
    }
    return subprocess.run([sys.executable, str(SECRETS_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def hcl_string(value: str) -> str:
    """python-hcl2 8 keeps a string's quotes."""
    assert value.startswith('"') and value.endswith('"'), value
    return value[1:-1]


def agent_token(path: Path) -> str:
    return hcl_string(hcl2.loads(path.read_text())["acl"][0]["tokens"][0]["agent"])


def assert_not_leaked(result: subprocess.CompletedProcess, *values: str) -> None:
    out = result.stdout + result.stderr
    for value in values:
        for piece in value.strip().splitlines():  # every line of a PEM, not only the whole
            assert piece not in out


def test_secrets_are_read_decrypted_and_written_0640_root_group(ssm: tuple[FakeSsm, str], tmp_path: Path) -> None:
    state, endpoint = ssm
    result = run_secrets(tmp_path, endpoint)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "consul.d"
    assert sorted(p.name for p in config.iterdir()) == ["gossip.hcl", "server-key.pem"]  # no temp files left
    gossip = (config / "gossip.hcl").read_text()
    assert gossip == f'encrypt = "{state.parameters[GOSSIP_PARAM]}"\n'
    assert hcl_string(hcl2.loads(gossip)["encrypt"]) == state.parameters[GOSSIP_PARAM]
    assert (config / "server-key.pem").read_text() == state.parameters[TLS_PARAM]
    for name in ("gossip.hcl", "server-key.pem"):
        st = (config / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert {r["body"]["Name"] for r in state.requests} == {GOSSIP_PARAM, TLS_PARAM}
    assert all(r["target"] == "AmazonSSM.GetParameter" and r["signed"] for r in state.requests)
    assert all(r["body"]["WithDecryption"] is True for r in state.requests)
    assert_not_leaked(result, *state.parameters.values())


def test_transient_failures_are_logged_and_retried(ssm: tuple[FakeSsm, str], tmp_path: Path) -> None:
    state, endpoint = ssm
    state.failures = ["ThrottlingException", "AccessDeniedException", "InternalServerError"]
    result = run_secrets(tmp_path, endpoint)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert lines == [
        f"consul-server-secrets: reading {GOSSIP_PARAM}: ThrottlingException (attempt 1); retrying",
        f"consul-server-secrets: reading {GOSSIP_PARAM}: AccessDeniedException (attempt 2); retrying",
        f"consul-server-secrets: reading {GOSSIP_PARAM}: InternalServerError (attempt 3); retrying",
    ]
    assert len(state.requests) == 5  # one request per failure: botocore's own retries are off
    assert (tmp_path / "consul.d" / "gossip.hcl").exists()
    assert_not_leaked(result, *state.parameters.values())


def test_access_denied_until_the_deadline_writes_nothing(ssm: tuple[FakeSsm, str], tmp_path: Path) -> None:
    state, endpoint = ssm
    state.always = "AccessDeniedException"
    # A few seconds: each attempt makes a new boto3 client, which takes a while under load.
    result = run_secrets(tmp_path, endpoint, deadline="3", retry="0.2")
    assert result.returncode == 1
    assert list((tmp_path / "consul.d").iterdir()) == []
    assert result.stderr.count("AccessDeniedException") >= 2
    assert "within 3s; nothing written" in result.stderr


def test_an_unreachable_endpoint_is_retried_until_the_deadline(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_secrets(tmp_path, f"http://127.0.0.1:{port}", deadline="3", retry="0.2")
    assert result.returncode == 1
    assert "EndpointConnectionError (attempt 1); retrying" in result.stderr
    assert list((tmp_path / "consul.d").iterdir()) == []


@pytest.mark.parametrize(
    ("parameter", "value", "why"),
    [
        (GOSSIP_PARAM, base64.b64encode(secrets.token_bytes(15)).decode(), "decodes to 15 bytes"),
        (GOSSIP_PARAM, "not base64 at all: " + secrets.token_hex(8), "is not base64"),
        (TLS_PARAM, pem_key("CERTIFICATE"), "is not an unencrypted PEM private key"),
        (TLS_PARAM, pem_key("ENCRYPTED PRIVATE KEY"), "is not an unencrypted PEM private key"),
        (TLS_PARAM, "secret-" + secrets.token_hex(16), "is not an unencrypted PEM private key"),
    ],
)
def test_invalid_values_are_refused_and_never_printed(
    ssm: tuple[FakeSsm, str], tmp_path: Path, parameter: str, value: str, why: str
) -> None:
    state, endpoint = ssm
    state.parameters[parameter] = value
    result = run_secrets(tmp_path, endpoint)
    assert result.returncode == 1
    assert f"refusing {parameter}" in result.stderr and why in result.stderr
    assert list((tmp_path / "consul.d").iterdir()) == []  # not even the other, valid one
    assert len(state.requests) == 2  # a wrong value is not retried
    assert_not_leaked(result, *state.parameters.values())


# --- consul-server-login against a stand-in consul ---------------------------------------------

METHOD = "consul-tproxy-vms-dev-server"


@dataclass
class Login:
    tmp: Path
    config: Path
    token_dir: Path
    token: str

    @property
    def calls(self) -> list[str]:
        return (self.tmp / "consul.log").read_text().splitlines()

    @property
    def reloads(self) -> list[str]:
        return (self.tmp / "reload.log").read_text().splitlines()

    @property
    def logged_out(self) -> list[str]:
        return (self.tmp / "logged-out").read_text().splitlines()

    def run(self, *args: str, failures: int = 0, deadline: str = "30") -> subprocess.CompletedProcess:
        (self.tmp / "failures").write_text(str(failures))
        env = {
            "PATH": os.environ["PATH"],
            "LOGIN_METHOD": METHOD,
            "LOGIN_SERVER_ID": "consul.example.internal",
            "CONSUL_HTTP_ADDR": "https://127.0.0.1:8501",
            "CONSUL_CACERT": "/etc/consul.d/ca.pem",
            "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
            "LOGIN_DEADLINE_SECONDS": deadline,
            "LOGIN_RETRY_SECONDS": "0.1",
            "CONSUL_BIN": str(STUBS / "consul"),
            "CONSUL_CONFIG_DIR": str(self.config),
            "TOKEN_DIR": str(self.token_dir),
            "CONSUL_GROUP": "root",
            "RELOAD_COMMAND": f"{STUBS / 'reload'} consul.service",
            "FAKE_CONSUL_LOG": str(self.tmp / "consul.log"),
            "FAKE_CONSUL_FAILURES": str(self.tmp / "failures"),
            "FAKE_CONSUL_TOKEN": self.token,
            "FAKE_CONSUL_TOKENS": str(self.tmp / "logged-out"),
            "FAKE_RELOAD_LOG": str(self.tmp / "reload.log"),
        }
        result = subprocess.run(["bash", str(LOGIN_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)
        assert self.token not in result.stdout + result.stderr
        return result


@pytest.fixture
def login(tmp_path: Path) -> Login:
    config = tmp_path / "consul.d"
    config.mkdir()
    for name in ("consul.log", "reload.log", "logged-out"):
        (tmp_path / name).write_text("")
    return Login(tmp_path, config, tmp_path / "run" / "consul-login", str(uuid.uuid4()))


def test_login_retries_until_the_method_exists_then_writes_the_token_and_reloads(login: Login) -> None:
    result = login.run(failures=2)
    assert result.returncode == 0, result.stderr
    expected = (
        f"login -type=aws-iam -method={METHOD} -aws-auto-bearer-token -aws-include-entity "
        f"-aws-server-id-header-value=consul.example.internal -token-sink-file={login.token_dir}/.login."
    )
    assert len(login.calls) == 3 and all(call.startswith(expected) for call in login.calls)
    failures = [line for line in result.stderr.splitlines() if "retrying" in line]
    error = f'Error logging in: Unexpected response code: 403 (auth method "{METHOD}" not found)'
    assert failures == [f"consul-server-login: login with {METHOD} (attempt {n}): {error}; retrying" for n in (1, 2)]
    tokens = login.config / "tokens.hcl"
    assert agent_token(tokens) == login.token
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o640 and tokens.stat().st_gid == 0
    token_file = login.token_dir / "agent.token"
    assert token_file.read_text().strip() == login.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(login.token_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in login.token_dir.iterdir()) == ["agent.token"]  # no sink left behind
    assert sorted(p.name for p in login.config.iterdir()) == ["tokens.hcl"]
    assert login.reloads == ["reload consul.service"]

    # A restart of the unit in the same boot: nothing to do, no second login, no second reload.
    again = login.run()
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert len(login.calls) == 3 and login.reloads == ["reload consul.service"]


def test_a_fresh_boot_logs_in_again_and_destroys_the_previous_boots_token(login: Login) -> None:
    old = str(uuid.uuid4())
    (login.config / "tokens.hcl").write_text(f'acl {{\n  tokens {{\n    agent = "{old}"\n  }}\n}}\n')
    result = login.run()  # TOKEN_DIR is empty, as tmpfs is after a reboot (or a crash skipped ExecStop)
    assert result.returncode == 0, result.stderr
    assert old not in result.stdout + result.stderr
    assert agent_token(login.config / "tokens.hcl") == login.token
    assert login.reloads == ["reload consul.service"]
    assert login.logged_out == [old]
    assert sorted(p.name for p in login.token_dir.iterdir()) == ["agent.token"]


@pytest.mark.parametrize("token", ["", "not-a-uuid-" + secrets.token_hex(8)])
def test_no_valid_token_by_the_deadline_writes_nothing(login: Login, token: str) -> None:
    if token:
        login.token = token  # a login that "succeeds" with garbage is not trusted
        failures = 0
    else:
        failures = 1000
    # A deadline of a few seconds: under load one stand-in call can take most of a second, and the
    # test must not depend on how many fit (bash's SECONDS also ticks in whole seconds).
    result = login.run(failures=failures, deadline="3")
    assert result.returncode == 1
    assert f"no token from {METHOD} after 3s" in result.stderr
    assert len(login.calls) >= 2  # retried until the deadline
    assert list(login.config.iterdir()) == []
    assert list(login.token_dir.iterdir()) == []
    assert login.reloads == []


def test_logout_destroys_the_token_removes_the_files_and_is_idempotent(login: Login) -> None:
    assert login.run().returncode == 0
    result = login.run("logout")
    assert result.returncode == 0, result.stderr
    assert login.logged_out == [login.token]
    assert login.calls[-1] == f"logout -token-file={login.token_dir}/agent.token"
    assert list(login.config.iterdir()) == [] and list(login.token_dir.iterdir()) == []
    calls = len(login.calls)
    assert login.run("logout").returncode == 0
    assert len(login.calls) == calls  # nothing left to log out


def test_login_script_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    for path in (LOGIN_SCRIPT, STUBS / "consul", STUBS / "reload"):
        result = subprocess.run([shellcheck, "--severity=style", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


# --- The units --------------------------------------------------------------------------------

UNITS = {
    "/etc/systemd/system/consul.service": TEMPLATES / "consul.service",
    "/etc/systemd/system/consul.service.d/secrets.conf": TEMPLATES / "consul-server-secrets.conf",
    "/etc/systemd/system/consul-server-secrets.service": TEMPLATES / "consul-server-secrets.service",
    "/etc/systemd/system/consul-server-login.service": TEMPLATES / "consul-server-login.service",
}


def server_root(tmp_path: Path, overrides: dict[str, str] | None = None) -> Path:
    # Imported here: test_validators renders every VM on import, which needs the whole program.
    from tests.test_validators import fake_root

    files = {path: source.read_text() for path, source in UNITS.items()} | (overrides or {})
    root = fake_root(tmp_path, files)
    for exe in ("/usr/local/sbin/consul-server-secrets", "/usr/local/sbin/consul-server-login"):
        target = root / exe.lstrip("/")
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess:
    analyze = tool("systemd-analyze")
    units = ["consul.service", "consul-server-secrets.service", "consul-server-login.service"]
    return subprocess.run([analyze, "verify", f"--root={root}", *units], capture_output=True, text=True)


def test_server_units_and_drop_in_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    result = verify(server_root(tmp_path))
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stderr


def test_the_drop_in_is_read_by_verify(tmp_path: Path) -> None:
    """verify must see the drop-in: a typo in it is reported."""
    drop_in = "[Unit]\nRequires=consul-server-secrets.service\nAfterr=consul-server-secrets.service\n"
    result = verify(server_root(tmp_path, {"/etc/systemd/system/consul.service.d/secrets.conf": drop_in}))
    assert "Unknown key" in result.stderr and "secrets.conf" in result.stderr


def test_unit_wiring() -> None:
    def keys(path: Path) -> set[str]:
        return {line.strip() for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")}

    secrets_unit = keys(TEMPLATES / "consul-server-secrets.service")
    assert {
        "Type=oneshot",
        "RemainAfterExit=yes",
        "Wants=network-online.target",
        "After=network-online.target",
        "Before=consul.service",
        "EnvironmentFile=/etc/consul.d/secrets.env",
        "ExecStart=/usr/bin/python3 /usr/local/sbin/consul-server-secrets",
        "TimeoutStartSec=11min",
        "WantedBy=multi-user.target",
    } <= secrets_unit
    assert keys(TEMPLATES / "consul-server-secrets.conf") == {
        "Requires=consul-server-secrets.service",
        "After=consul-server-secrets.service",
    }
    # exec, not oneshot: an hour-long wait for the auth method must not hold back multi-user.target.
    assert {
        "Type=exec",
        "RemainAfterExit=yes",
        "After=consul.service",
        "Requires=consul.service",
        "EnvironmentFile=/etc/consul.d/login.env",
        "ExecStart=/usr/local/sbin/consul-server-login",
        "ExecStop=/usr/local/sbin/consul-server-login logout",
        "WantedBy=multi-user.target",
    } <= keys(TEMPLATES / "consul-server-login.service")


def test_secrets_script_uses_only_the_standard_library_and_boto3() -> None:
    imports = re.findall(r"^(?:from|import) (\w+)", SECRETS_SCRIPT.read_text(), re.MULTILINE)
    third_party = {name for name in imports if name not in sys.stdlib_module_names and name != "__future__"}
    assert third_party <= {"boto3", "botocore"}
