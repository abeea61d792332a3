#!/usr/bin/python3
"""consul-server-secrets

Fetches a Consul server's gossip key and TLS private key from AWS SSM Parameter Store (SecureString)
with the instance role, and writes them where the agent reads them, before consul.service starts:
  $CONSUL_CONFIG_DIR/gossip.hcl      encrypt = "<key>"
  $CONSUL_CONFIG_DIR/server-key.pem  the PEM private key
both 0640 root:$CONSUL_GROUP, each written atomically, and nothing at all unless both were read and
are valid. Installed as /usr/local/sbin/consul-server-secrets and run by consul-server-secrets.service.

The user data holds only the parameter names. Right after launch the instance role may not be usable
yet (IMDS credentials not served, IAM still propagating: AccessDeniedException), and an answer may be
malformed (an HTML error page from a proxy, an empty body, `{}`, a Value that is not a string), so
every failure to read is retried, one stderr line each, until the deadline; then the script exits 1
and systemd starts it again after a growing delay (consul-server-secrets.service: Restart=on-failure),
while consul.service waits. The values are never printed.

Read from the environment (EnvironmentFile=/etc/consul.d/secrets.env):
  AWS_REGION, GOSSIP_KEY_PARAMETER, TLS_KEY_PARAMETER
  SECRETS_DEADLINE_SECONDS (600: finite, >= 0), SECRETS_RETRY_SECONDS (5: finite, > 0)
Read by tests: CONSUL_CONFIG_DIR (/etc/consul.d), CONSUL_GROUP (consul), and botocore's own
AWS_ENDPOINT_URL_SSM and static credentials.

Runs with Ubuntu's python3-boto3: the standard library and boto3 only.
"""

from __future__ import annotations

import base64
import binascii
import grp
import math
import os
import re
import sys
import tempfile
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

PROG = "consul-server-secrets"
GOSSIP_KEY_SIZES = (16, 24, 32)
# An unencrypted PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC): the agent has no passphrase.
PEM_KEY = re.compile(
    r"-----BEGIN ((?:RSA |EC )?PRIVATE KEY)-----\r?\n"
    r"([A-Za-z0-9+/=\r\n]+)"
    r"-----END \1-----\s*"
)


class Invalid(Exception):
    """A parameter's value is not what the agent needs (the message never holds the value)."""


class Malformed(Exception):
    """An answer that is not what SSM's GetParameter returns (the message never holds the answer)."""


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def env_seconds(name: str, default: float, positive: bool = False) -> float:
    """A number of seconds from the environment: finite (float() also reads "nan" and "inf", with which
    the retry loop would never end or never wait), not negative, and above 0 where asked."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{PROG}: {name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise SystemExit(f"{PROG}: {name}={raw!r} is not a finite number of seconds")
    if value < 0 or (positive and value == 0):
        raise SystemExit(f"{PROG}: {name}={raw!r} must be {'above' if positive else 'at least'} 0 seconds")
    return value


def required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise SystemExit(f"{PROG}: {name} is not set (see /etc/consul.d/secrets.env)")
    return value


def ssm_client(region: str):  # noqa: ANN201 (boto3 clients have no importable type)
    # One attempt per call, short timeouts: the retry loop below owns retrying, so each failure is
    # logged and the deadline holds. A fresh client per attempt also re-resolves credentials, which a
    # client created before IMDS served the role's would never do.
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10)
    return boto3.session.Session().client("ssm", region_name=region, config=config)


def parameter_value(answer: object, name: str) -> str:
    """Parameter.Value of a GetParameter answer, as botocore's SSM model describes it (GetParameterResult:
    Parameter, a structure whose Name is the one asked for and whose Value is a string of at least one
    character), or Malformed."""
    parameter = answer.get("Parameter") if isinstance(answer, dict) else None
    if not isinstance(parameter, dict):
        raise Malformed("no Parameter in the answer")
    if parameter.get("Name") != name:
        raise Malformed("the answer names another parameter")
    value = parameter.get("Value")
    if not isinstance(value, str) or not value:
        raise Malformed("Parameter.Value is not a non-empty string")
    return value


def read(client, name: str) -> str:  # noqa: ANN001 (boto3 clients have no importable type)
    """One GetParameter call: the decrypted value, or an exception whose class or code says why."""
    return parameter_value(client.get_parameter(Name=name, WithDecryption=True), name)


def failure(e: Exception) -> str:
    """Why a read failed, in words that never hold the answer or the value."""
    if isinstance(e, ClientError):
        return e.response.get("Error", {}).get("Code") or "UnknownError"
    if isinstance(e, Malformed):
        return f"malformed answer ({e})"
    # BotoCoreError (connection errors, timeouts, no credentials yet) and whatever else botocore
    # raises on a body it cannot parse (a JSON list or string: AttributeError): the class name.
    return type(e).__name__


def fetch(region: str, names: list[str], deadline_seconds: float, retry_seconds: float) -> dict[str, str] | None:
    """Each parameter's decrypted value, or None if the deadline passed first."""
    deadline = time.monotonic() + deadline_seconds
    values: dict[str, str] = {}
    attempt = 0
    while True:
        attempt += 1
        try:
            client = ssm_client(region)
        except Exception as e:  # the client itself (e.g. no region): retried like a read
            log(f"creating the SSM client: {failure(e)} (attempt {attempt}); retrying")
        else:
            for name in names:
                if name in values:
                    continue
                try:
                    values[name] = read(client, name)
                except Exception as e:  # every failure is logged by its name and retried
                    log(f"reading {name}: {failure(e)} (attempt {attempt}); retrying")
                    break
        if len(values) == len(names):
            return values
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(retry_seconds, remaining))


def check_gossip_key(value: str) -> str:
    key = value.strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("is not base64") from None
    if len(raw) not in GOSSIP_KEY_SIZES:
        raise Invalid(f"decodes to {len(raw)} bytes, not 16, 24 or 32")
    return key


def check_tls_key(value: str) -> str:
    key = value.strip() + "\n"
    if not PEM_KEY.fullmatch(key):
        raise Invalid("is not an unencrypted PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    return key


def write_atomically(path: str, content: str, gid: int) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            os.fchown(f.fileno(), 0, gid)
            os.fchmod(f.fileno(), 0o640)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def main() -> int:
    region = required("AWS_REGION")  # botocore itself reads only AWS_DEFAULT_REGION
    gossip_name = required("GOSSIP_KEY_PARAMETER")
    tls_name = required("TLS_KEY_PARAMETER")
    deadline_seconds = env_seconds("SECRETS_DEADLINE_SECONDS", 600)
    retry_seconds = env_seconds("SECRETS_RETRY_SECONDS", 5, positive=True)
    config_dir = os.environ.get("CONSUL_CONFIG_DIR") or "/etc/consul.d"
    group = os.environ.get("CONSUL_GROUP") or "consul"
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log(f"group {group} does not exist; nothing written")
        return 1

    values = fetch(region, list(dict.fromkeys([gossip_name, tls_name])), deadline_seconds, retry_seconds)
    if values is None:
        log(f"could not read {gossip_name} and {tls_name} within {deadline_seconds:g}s; nothing written")
        return 1

    try:
        gossip_key = check_gossip_key(values[gossip_name])
    except Invalid as e:
        log(f"refusing {gossip_name}: the gossip key {e}; nothing written")
        return 1
    try:
        tls_key = check_tls_key(values[tls_name])
    except Invalid as e:
        log(f"refusing {tls_name}: the value {e}; nothing written")
        return 1

    write_atomically(os.path.join(config_dir, "server-key.pem"), tls_key, gid)
    write_atomically(os.path.join(config_dir, "gossip.hcl"), f'encrypt = "{gossip_key}"\n', gid)
    log(f"wrote gossip.hcl and server-key.pem in {config_dir} (from {gossip_name}, {tls_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
