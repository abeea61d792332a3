"""A Consul server's boot without secrets in its user data: consul-server-secrets (gossip key and TLS
key from SSM Parameter Store) against a stand-in SSM endpoint on 127.0.0.1, and consul-server-login
(agent token from the aws-iam auth method) against a stand-in consul (tests/fixtures/server)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import hcl2
import pytest

from tests.conftest import systemd_verify, tool
from tests.helpers import CA_PEM, serving

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


# --- Stand-ins for SSM (GetParameter) and the instance metadata service ------------------------
#
# SSM speaks AWS JSON 1.1 (botocore's model, botocore/data/ssm/2014-11-06/service-2.json: protocol
# "json", jsonVersion "1.1", targetPrefix "AmazonSSM"): POST / with X-Amz-Target AmazonSSM.GetParameter,
# a SigV4 signature scoped to <region>/ssm, and a body GetParameterRequest {Name (required, 1..2048
# characters), WithDecryption (boolean)}. It answers GetParameterResult {Parameter: {Name, Type, Value,
# Version, ARN, DataType, LastModifiedDate}}, and without WithDecryption a SecureString's Value is its
# ciphertext (the model's doc of WithDecryption). Errors are {"__type": code, "message": ...} with 400.

REGION = "us-east-1"
STATIC_KEY = "AKIAFAKEFAKEFAKEFAKE"
CREDENTIAL = re.compile(r"AWS4-HMAC-SHA256 Credential=([A-Z0-9]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request, ")


@dataclass
class FakeSsm:
    parameters: dict[str, str]
    failures: list[str] = field(default_factory=list)  # error codes answered first, one per request
    always: str = ""  # an error code answered to every request
    malformed: list[tuple[int, str, bytes]] = field(default_factory=list)  # raw answers given first
    keys: dict[str, str] = field(default_factory=lambda: {STATIC_KEY: ""})  # access key id -> session token
    requests: list[dict] = field(default_factory=list)


def _ssm_handler(state: FakeSsm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def raw(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def answer(self, status: int, body: dict) -> None:
            self.raw(status, "application/x-amz-json-1.1", json.dumps(body).encode())

        def error(self, code: str, message: str) -> None:
            self.answer(400, {"__type": code, "message": message})

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            target = self.headers.get("X-Amz-Target")
            signed = CREDENTIAL.match(self.headers.get("Authorization", ""))
            try:
                body = json.loads(data)
            except ValueError:
                body = None
            state.requests.append(
                {"target": target, "body": body, "headers": {k.lower(): v for k, v in self.headers.items()}}
            )
            if self.path != "/" or self.headers.get("Content-Type") != "application/x-amz-json-1.1":
                return self.error("SerializationException", "not an AWS JSON 1.1 request")
            if target != "AmazonSSM.GetParameter":
                return self.error("UnknownOperationException", f"unknown operation {target}")
            if not signed or not self.headers.get("X-Amz-Date"):
                return self.error("MissingAuthenticationTokenException", "Missing Authentication Token")
            key, _, region, service = signed.groups()
            if (region, service) != (REGION, "ssm"):
                return self.error(
                    "InvalidSignatureException", f"Credential should be scoped to a valid region, not '{region}'."
                )
            if key not in state.keys or state.keys[key] != self.headers.get("X-Amz-Security-Token", ""):
                return self.error(
                    "UnrecognizedClientException", "The security token included in the request is invalid."
                )
            if (
                not isinstance(body, dict)
                or not isinstance(body.get("Name"), str)
                or not 1 <= len(body["Name"]) <= 2048
            ):
                return self.error(
                    "ValidationException", "1 validation error detected: Value at 'name' failed to satisfy constraint"
                )
            if "WithDecryption" in body and not isinstance(body["WithDecryption"], bool):
                return self.error("SerializationException", "WithDecryption is not a boolean")
            if state.malformed:
                return self.raw(*state.malformed.pop(0))
            if state.failures or state.always:
                code = state.failures.pop(0) if state.failures else state.always
                return self.error(code, f"stand-in {code}")
            name = body["Name"]
            if name not in state.parameters:
                return self.error("ParameterNotFound", "")
            value = state.parameters[name]
            if body.get("WithDecryption") is not True:  # a SecureString stays encrypted
                value = base64.b64encode(b"\x01\x02\x02\x00x" + hashlib.sha256(value.encode()).digest()).decode()
            parameter = {
                "Name": name,
                "Type": "SecureString",
                "Value": value,
                "Version": 1,
                "LastModifiedDate": 1.7e9,
                "ARN": f"arn:aws:ssm:{REGION}:123456789012:parameter{name}",
                "DataType": "text",
            }
            return self.answer(200, {"Parameter": parameter})

    return Handler


# IMDSv2, as the servers are configured (components/ec2.py: http_tokens="required"; AWS EC2 user
# guide, "Use the Instance Metadata Service to access instance metadata"): a session token from
# PUT /latest/api/token, whose X-aws-ec2-metadata-token-ttl-seconds header is required and between 1 and
# 21600 (else 400); every GET without a valid token is 401; a PUT carrying X-Forwarded-For is refused
# (403). The role's credentials: GET .../iam/security-credentials/ names the role, then
# .../security-credentials/<role> answers them (404 until the instance profile is served).

IMDS_ROLE = "consul-server-0"
IMDS_CREDS = {"AccessKeyId": "ASIAIMDSIMDSIMDSIMDS", "SecretAccessKey": "imds/secret", "Token": "imds-session-token"}


@dataclass
class FakeImds:
    token: str = "imds-token-" + secrets.token_hex(8)
    not_yet: int = 0  # how many more role listings answer 404 (the instance profile not served yet)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)


def _imds_handler(state: FakeImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def text(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            state.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if self.path != "/latest/api/token":
                return self.text(404, "Not Found")
            if self.headers.get("X-Forwarded-For"):
                return self.text(403, "Forbidden")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return self.text(400, "Missing or Invalid Parameters")
            return self.text(200, state.token)

        def do_GET(self) -> None:
            state.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
            if self.headers.get("X-aws-ec2-metadata-token") != state.token:
                return self.text(401, "Unauthorized")
            if self.path == "/latest/meta-data/iam/security-credentials/":
                if state.not_yet > 0:
                    state.not_yet -= 1
                    return self.text(404, "Not Found")
                return self.text(200, IMDS_ROLE)
            if self.path == f"/latest/meta-data/iam/security-credentials/{IMDS_ROLE}":
                creds = {"Code": "Success", "Type": "AWS-HMAC", "Expiration": "2099-01-01T00:00:00Z", **IMDS_CREDS}
                return self.text(200, json.dumps(creds))
            return self.text(404, "Not Found")

    return Handler


@pytest.fixture
def ssm() -> Iterator[tuple[FakeSsm, str]]:
    state = FakeSsm(parameters={GOSSIP_PARAM: base64.b64encode(secrets.token_bytes(32)).decode(), TLS_PARAM: pem_key()})
    with serving(_ssm_handler(state)) as endpoint:
        yield state, endpoint


@pytest.fixture
def imds() -> Iterator[tuple[FakeImds, str]]:
    state = FakeImds()
    with serving(_imds_handler(state)) as endpoint:
        yield state, endpoint


def run_secrets(
    tmp_path: Path, endpoint: str, deadline: str = "30", retry: str = "0.1", imds: str = ""
) -> subprocess.CompletedProcess:
    """The script as its unit runs it; with `imds`, the role's credentials come from that stand-in."""
    config = tmp_path / "consul.d"
    config.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_SSM": endpoint,
        "GOSSIP_KEY_PARAMETER": GOSSIP_PARAM,
        "TLS_KEY_PARAMETER": TLS_PARAM,
        "SECRETS_DEADLINE_SECONDS": deadline,
        "SECRETS_RETRY_SECONDS": retry,
        "CONSUL_CONFIG_DIR": str(config),
        "CONSUL_GROUP": "root",
    }
    if imds:
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds + "/"
    else:
        env |= {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ACCESS_KEY_ID": STATIC_KEY,
            "AWS_SECRET_ACCESS_KEY": "fake/secret/key",
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
    assert all(r["target"] == "AmazonSSM.GetParameter" for r in state.requests)
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


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ((200, "text/html", b"<html><body>Proxy error</body></html>"), "malformed answer (no Parameter in the answer)"),
        ((502, "text/html", b"<html>Bad gateway</html>"), "(attempt 1)"),
        ((200, "application/x-amz-json-1.1", b""), "malformed answer (no Parameter in the answer)"),
        ((200, "application/x-amz-json-1.1", b"{}"), "malformed answer (no Parameter in the answer)"),
        ((200, "application/x-amz-json-1.1", b'{"Parameter": null}'), "malformed answer (no Parameter"),
        ((200, "application/x-amz-json-1.1", b"[]"), "AttributeError"),  # botocore's parser itself fails
        ((200, "application/x-amz-json-1.1", b'"a string"'), "AttributeError"),
        (
            (
                200,
                "application/x-amz-json-1.1",
                json.dumps({"Parameter": {"Name": GOSSIP_PARAM, "Value": 42}}).encode(),
            ),
            "malformed answer (Parameter.Value is not a non-empty string)",
        ),
        (
            (
                200,
                "application/x-amz-json-1.1",
                json.dumps({"Parameter": {"Name": GOSSIP_PARAM, "Value": None}}).encode(),
            ),
            "malformed answer (Parameter.Value is not a non-empty string)",
        ),
        (
            (
                200,
                "application/x-amz-json-1.1",
                json.dumps({"Parameter": {"Name": GOSSIP_PARAM, "Value": ""}}).encode(),
            ),
            "malformed answer (Parameter.Value is not a non-empty string)",
        ),
        (
            (200, "application/x-amz-json-1.1", json.dumps({"Parameter": {"Name": "/other", "Value": "x"}}).encode()),
            "malformed answer (the answer names another parameter)",
        ),
    ],
    ids=["html-200", "html-502", "empty", "empty-object", "null", "list", "string", "int", "none", "blank", "other"],
)
def test_a_malformed_answer_is_logged_and_retried(
    ssm: tuple[FakeSsm, str], tmp_path: Path, answer: tuple[int, str, bytes], why: str
) -> None:
    state, endpoint = ssm
    state.malformed = [answer]
    result = run_secrets(tmp_path, endpoint)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert line.startswith(f"consul-server-secrets: reading {GOSSIP_PARAM}: ") and why in line
    assert line.endswith("(attempt 1); retrying")
    assert (tmp_path / "consul.d" / "gossip.hcl").exists()
    assert_not_leaked(result, *state.parameters.values())


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SECRETS_DEADLINE_SECONDS", "nan", "is not a finite number of seconds"),
        ("SECRETS_DEADLINE_SECONDS", "inf", "is not a finite number of seconds"),
        ("SECRETS_DEADLINE_SECONDS", "-Infinity", "is not a finite number of seconds"),
        ("SECRETS_DEADLINE_SECONDS", "-1", "must be at least 0 seconds"),
        ("SECRETS_DEADLINE_SECONDS", "ten", "is not a number of seconds"),
        ("SECRETS_RETRY_SECONDS", "NaN", "is not a finite number of seconds"),
        ("SECRETS_RETRY_SECONDS", "0", "must be above 0 seconds"),
        ("SECRETS_RETRY_SECONDS", "-0.5", "must be above 0 seconds"),
    ],
)
def test_a_deadline_or_retry_that_is_not_a_finite_number_of_seconds_is_refused(
    ssm: tuple[FakeSsm, str], tmp_path: Path, variable: str, value: str, message: str
) -> None:
    state, endpoint = ssm
    kwargs = {"deadline": value} if variable == "SECRETS_DEADLINE_SECONDS" else {"retry": value}
    result = run_secrets(tmp_path, endpoint, **kwargs)
    assert result.returncode == 1
    assert f"consul-server-secrets: {variable}={value!r} {message}" in result.stderr
    assert state.requests == [] and list((tmp_path / "consul.d").iterdir()) == []


def test_the_role_credentials_come_from_imdsv2_once_it_serves_them(
    ssm: tuple[FakeSsm, str], imds: tuple[FakeImds, str], tmp_path: Path
) -> None:
    state, endpoint = ssm
    metadata, imds_endpoint = imds
    state.keys = {IMDS_CREDS["AccessKeyId"]: IMDS_CREDS["Token"]}  # only the role's credentials are valid
    metadata.not_yet = 2  # the instance profile is not served for the first two looks
    result = run_secrets(tmp_path, endpoint, deadline="30", retry="0.2", imds=imds_endpoint)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "retrying" in line] == [
        f"consul-server-secrets: reading {GOSSIP_PARAM}: NoCredentialsError (attempt {n}); retrying" for n in (1, 2)
    ]
    # Every SSM request was signed with the role's session credentials.
    assert all(r["headers"].get("x-amz-security-token") == IMDS_CREDS["Token"] for r in state.requests)
    # IMDSv2 throughout: a token from PUT with a TTL, then every GET with it.
    puts = [h for method, _, h in metadata.requests if method == "PUT"]
    gets = [h for method, _, h in metadata.requests if method == "GET"]
    assert puts and all(1 <= int(h["x-aws-ec2-metadata-token-ttl-seconds"]) <= 21600 for h in puts)
    assert gets and all(h["x-aws-ec2-metadata-token"] == metadata.token for h in gets)
    assert (tmp_path / "consul.d" / "gossip.hcl").exists()


def test_the_ssm_stand_in_refuses_what_ssm_refuses(ssm: tuple[FakeSsm, str]) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    state, endpoint = ssm

    def client(region: str = REGION, key: str = STATIC_KEY):
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key="s", region_name=region)
        return session.client("ssm", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))

    def code(call) -> str:
        with pytest.raises(ClientError) as e:
            call()
        return e.value.response["Error"]["Code"]

    assert code(lambda: client(region="eu-west-1").get_parameter(Name=GOSSIP_PARAM)) == "InvalidSignatureException"
    assert code(lambda: client(key="AKIAUNKNOWNUNKNOWN00").get_parameter(Name=GOSSIP_PARAM)) == (
        "UnrecognizedClientException"
    )
    assert code(lambda: client().get_parameter(Name="/nope", WithDecryption=True)) == "ParameterNotFound"
    assert code(lambda: client().get_parameters(Names=[GOSSIP_PARAM])) == "UnknownOperationException"
    # Without WithDecryption, a SecureString's value is its ciphertext, not the key.
    encrypted = client().get_parameter(Name=GOSSIP_PARAM)["Parameter"]["Value"]
    assert encrypted != state.parameters[GOSSIP_PARAM]
    assert (
        client().get_parameter(Name=GOSSIP_PARAM, WithDecryption=True)["Parameter"]["Value"]
        == (state.parameters[GOSSIP_PARAM])
    )


def test_the_imds_stand_in_refuses_what_imdsv2_refuses(imds: tuple[FakeImds, str]) -> None:
    import urllib.error
    import urllib.request

    metadata, endpoint = imds

    def status(method: str, path: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(endpoint + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    roles = "/latest/meta-data/iam/security-credentials/"
    assert status("GET", roles, {}) == 401  # IMDSv1 (no token): refused
    assert status("GET", roles, {"X-aws-ec2-metadata-token": "forged"}) == 401
    assert status("PUT", "/latest/api/token", {}) == 400  # the TTL header is required
    assert status("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "0"}) == 400
    assert status("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21601"}) == 400
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
    assert status("PUT", "/latest/api/token", {**ttl, "X-Forwarded-For": "10.0.0.1"}) == 403
    assert status("PUT", "/latest/api/token", ttl) == 200
    assert status("GET", roles, {"X-aws-ec2-metadata-token": metadata.token}) == 200


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

    def run(
        self, *args: str, failures: int = 0, hangs: int = 0, deadline: str = "30", **overrides: str | None
    ) -> subprocess.CompletedProcess:
        """The script as its unit runs it; `overrides` change (None: remove) its environment."""
        (self.tmp / "failures").write_text(str(failures))
        (self.tmp / "hangs").write_text(str(hangs))
        ca = self.tmp / "ca.pem"
        ca.write_text(CA_PEM)
        env: dict[str, str | None] = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.tmp),  # no shared AWS config of the machine running the tests
            "LOGIN_METHOD": METHOD,
            "LOGIN_SERVER_ID": "consul.example.internal",
            "AWS_REGION": REGION,
            "CONSUL_HTTP_ADDR": "https://127.0.0.1:8501",
            "CONSUL_CACERT": str(ca),
            "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
            "LOGIN_DEADLINE_SECONDS": deadline,
            "LOGIN_RETRY_SECONDS": "0.1",
            "LOGIN_CALL_TIMEOUT_SECONDS": "1",
            "CONSUL_BIN": str(STUBS / "consul"),
            "CONSUL_CONFIG_DIR": str(self.config),
            "TOKEN_DIR": str(self.token_dir),
            "CONSUL_GROUP": "root",
            "RELOAD_COMMAND": f"{STUBS / 'reload'} consul.service",
            "FAKE_CONSUL_LOG": str(self.tmp / "consul.log"),
            "FAKE_CONSUL_FAILURES": str(self.tmp / "failures"),
            "FAKE_CONSUL_HANGS": str(self.tmp / "hangs"),
            "FAKE_CONSUL_TOKEN": self.token,
            "FAKE_CONSUL_TOKENS": str(self.tmp / "logged-out"),
            "FAKE_CONSUL_REGIONS": str(self.tmp / "regions"),
            "FAKE_RELOAD_LOG": str(self.tmp / "reload.log"),
        } | overrides
        result = subprocess.run(
            ["bash", str(LOGIN_SCRIPT), *args],
            env={k: v for k, v in env.items() if v is not None},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert self.token not in result.stdout + result.stderr
        return result


@pytest.fixture
def login(tmp_path: Path) -> Login:
    config = tmp_path / "consul.d"
    config.mkdir()
    for name in ("consul.log", "reload.log", "logged-out", "regions"):
        (tmp_path / name).write_text("")
    return Login(tmp_path, config, tmp_path / "run" / "consul-login", str(uuid.uuid4()))


def test_login_retries_until_the_method_exists_then_writes_the_token_and_reloads(login: Login) -> None:
    result = login.run(failures=2)
    assert result.returncode == 0, result.stderr
    expected = (
        f"login -type=aws-iam -method={METHOD} -aws-auto-bearer-token -aws-include-entity -aws-region={REGION} "
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


def test_every_login_carries_the_region(login: Login) -> None:
    assert login.run(failures=1).returncode == 0
    assert (login.tmp / "regions").read_text().splitlines() == [REGION, REGION]


@pytest.mark.parametrize(
    ("region", "message"),
    [
        (None, "AWS_REGION is not set (see /etc/consul.d/login.env)"),
        ("", "AWS_REGION is not set (see /etc/consul.d/login.env)"),
        ("us-east-1 -token=x", "is not an AWS region"),
        ("US-EAST-1", "is not an AWS region"),
    ],
)
def test_a_login_environment_without_a_region_is_refused(login: Login, region: str | None, message: str) -> None:
    result = login.run(AWS_REGION=region)
    assert result.returncode != 0 and message in result.stderr
    assert login.calls == [] and list(login.config.iterdir()) == []


def test_a_login_that_hangs_is_cut_off_and_retried(login: Login) -> None:
    result = login.run(hangs=1)
    assert result.returncode == 0, result.stderr
    retries = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert retries == [f"consul-server-login: login with {METHOD} (attempt 1): no answer within 1s; retrying"]
    assert len(login.calls) == 2 and agent_token(login.config / "tokens.hcl") == login.token


def test_a_logout_that_hangs_is_cut_off_and_the_files_removed(login: Login) -> None:
    assert login.run().returncode == 0
    result = login.run("logout", hangs=1)
    assert result.returncode == 0
    assert "logout failed (ignored): no answer within 1s" in result.stderr
    assert list(login.config.iterdir()) == [] and list(login.token_dir.iterdir()) == []


def test_a_reload_that_hangs_is_cut_off(login: Login) -> None:
    result = login.run(RELOAD_COMMAND="sleep 600")
    assert result.returncode == 1
    assert "'sleep 600' failed (no answer within 1s): the agent uses the token from its next start" in result.stderr
    assert agent_token(login.config / "tokens.hcl") == login.token  # written for the next start


# The stand-in consul refuses what Consul 1.22's CLI refuses (tests/fixtures/server/consul cites each check).
LOGIN_ARGS = [
    "login",
    "-type=aws-iam",
    f"-method={METHOD}",
    "-aws-auto-bearer-token",
    "-aws-include-entity",
    "-aws-server-id-header-value=consul.example.internal",
]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        # The login of consul-server-login before this change: no region anywhere.
        ([*LOGIN_ARGS, "-token-sink-file=SINK"], {}, "Error with aws-iam auth method: AWS region not found"),
        (
            [*LOGIN_ARGS, "-aws-regoin=us-east-1", "-token-sink-file=SINK"],
            {},
            "flag provided but not defined: -aws-regoin",
        ),
        ([*LOGIN_ARGS, "-token-sink-file=SINK", "extra"], {"AWS_REGION": REGION}, "Should have no non-flag arguments."),
        (["login", "extra", f"-method={METHOD}"], {}, "Should have no non-flag arguments."),  # flags end at "extra"
        ([*LOGIN_ARGS[:2], "-aws-auto-bearer-token", "-token-sink-file=SINK"], {}, "Missing required '-method' flag"),
        (LOGIN_ARGS, {}, "Missing required '-token-sink-file' flag"),
        (
            ["login", f"-method={METHOD}", "-aws-region=us-east-1", "-token-sink-file=SINK"],
            {},
            "Missing '-aws-auto-bearer-token' flag",
        ),
        ([*LOGIN_ARGS, "-bearer-token-file=/x", "-token-sink-file=SINK"], {}, "Cannot use '-bearer-token-file'"),
        ([*LOGIN_ARGS, "-aws-include-entity=yes", "-token-sink-file=SINK"], {}, 'invalid boolean value "yes"'),
        ([*LOGIN_ARGS, "-token-sink-file"], {}, "flag needs an argument: -token-sink-file"),
        (
            [*LOGIN_ARGS, "-token-sink-file=SINK"],
            {"AWS_REGION": REGION, "CONSUL_CACERT": "/nonexistent/ca.pem"},
            "Error loading CA File",
        ),
        (["logout"], {}, "Error destroying token: Unexpected response code: 403 (ACL not found)"),
        (["logout", "-token-file=/nonexistent"], {}, "Error loading token file"),
        (["logout", "-aws-region=us-east-1"], {}, "flag provided but not defined: -aws-region"),
        (["logout", "TOKEN"], {}, "Should have no non-flag arguments."),
    ],
)
def test_the_consul_stand_in_refuses_what_consul_refuses(
    tmp_path: Path, argv: list[str], env: dict[str, str], message: str
) -> None:
    sink = tmp_path / "sink"
    argv = [a.replace("SINK", str(sink)) for a in argv]
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CONSUL_HTTP_ADDR": "https://127.0.0.1:8501"}
    result = subprocess.run(
        [str(STUBS / "consul"), *argv], env=base | {"FAKE_CONSUL_TOKEN": "t"} | env, capture_output=True, text=True
    )
    assert result.returncode == 1 and message in result.stderr
    assert not sink.exists()


def test_the_consul_stand_in_finds_the_region_where_the_aws_sdk_does(tmp_path: Path) -> None:
    """-aws-region, else AWS_REGION, else the shared config (aws-sdk-go v1, SharedConfigEnable)."""
    config = tmp_path / ".aws" / "config"
    config.parent.mkdir()
    config.write_text("[default]\nregion = eu-west-3\n")
    sink = tmp_path / "sink"
    regions = tmp_path / "regions"
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "FAKE_CONSUL_TOKEN": "t",
        "FAKE_CONSUL_REGIONS": str(regions),
    }
    for extra, env in [([], {}), ([], {"AWS_REGION": "ap-south-1"}), (["-aws-region=us-west-2"], {"AWS_REGION": "x"})]:
        argv = [*LOGIN_ARGS, *extra, f"-token-sink-file={sink}"]
        assert subprocess.run([str(STUBS / "consul"), *argv], env=base | env, capture_output=True).returncode == 0
    assert regions.read_text().splitlines() == ["eu-west-3", "ap-south-1", "us-west-2"]


def test_login_script_passes_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    for path in (LOGIN_SCRIPT, STUBS / "reload"):
        result = subprocess.run([shellcheck, "--severity=style", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


# --- The units --------------------------------------------------------------------------------

UNITS = {
    "/etc/systemd/system/consul.service": TEMPLATES / "consul.service",
    "/etc/systemd/system/consul.service.d/secrets.conf": TEMPLATES / "consul-server-secrets.conf",
    "/etc/systemd/system/consul-server-secrets.service": TEMPLATES / "consul-server-secrets.service",
    "/etc/systemd/system/consul-server-login.service": TEMPLATES / "consul-server-login.service",
    "/etc/systemd/system/consul-data.service": TEMPLATES / "consul-data.service",
    "/etc/systemd/system/consul.service.d/data-volume.conf": TEMPLATES / "consul-data-volume.conf",
}


def server_root(tmp_path: Path, overrides: dict[str, str] | None = None) -> Path:
    # Imported here: test_validators renders every VM on import, which needs the whole program.
    from tests.test_validators import fake_root

    files = {path: source.read_text() for path, source in UNITS.items()} | (overrides or {})
    root = fake_root(tmp_path, files)
    for exe in (
        "/usr/local/sbin/consul-server-secrets",
        "/usr/local/sbin/consul-server-login",
        "/usr/local/sbin/consul-data-volume",
    ):
        target = root / exe.lstrip("/")
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return root


def verify(root: Path) -> list[str]:
    return systemd_verify(
        root, ["consul.service", "consul-server-secrets.service", "consul-server-login.service", "consul-data.service"]
    )


def test_server_units_and_drop_in_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify(server_root(tmp_path)) == []


def test_the_drop_in_is_read_by_verify(tmp_path: Path) -> None:
    """verify must see the drop-in: a typo in it is reported."""
    drop_in = "[Unit]\nRequires=consul-server-secrets.service\nAfterr=consul-server-secrets.service\n"
    complaints = "\n".join(
        verify(server_root(tmp_path, {"/etc/systemd/system/consul.service.d/secrets.conf": drop_in}))
    )
    assert "Unknown key" in complaints and "secrets.conf" in complaints


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
        # Restarted until the keys are read, never given up on; straight back to activating, so
        # consul.service's start job waits instead of failing with it.
        "Restart=on-failure",
        "RestartMode=direct",
        "RestartSec=10s",
        "RestartSteps=5",
        "RestartMaxDelaySec=5min",
        "StartLimitIntervalSec=0",
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
        # Never given up on: restarted with a growing delay until the agent has its token.
        "Restart=on-failure",
        "RestartSec=10s",
        "RestartSteps=5",
        "RestartMaxDelaySec=5min",
        "StartLimitIntervalSec=0",
    } <= keys(TEMPLATES / "consul-server-login.service")
    # The data volume is waited for again and again too, with Consul's start job pending meanwhile.
    assert {
        "EnvironmentFile=/etc/consul.d/data-volume.env",
        "Restart=on-failure",
        "RestartMode=direct",
        "StartLimitIntervalSec=0",
    } <= keys(TEMPLATES / "consul-data.service")


def test_secrets_script_uses_only_the_standard_library_and_boto3() -> None:
    imports = re.findall(r"^(?:from|import) (\w+)", SECRETS_SCRIPT.read_text(), re.MULTILINE)
    third_party = {name for name in imports if name not in sys.stdlib_module_names and name != "__future__"}
    assert third_party <= {"boto3", "botocore"}
