"""HashiCorp's apt key: fetched at boot by bootcmd, trusted only under the pinned fingerprint.

The script the user data carries (scripts/hashicorp-apt-key.sh, taken from the rendered cloud-config,
comments removed as shipped) runs for real with gpg against a local HTTP stand-in of
https://apt.releases.hashicorp.com/gpg. The stand-in serves HashiCorp's real key
(tests/fixtures/apt/hashicorp-archive-keyring.asc), another key made here, or both.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from components.userdata import HASHICORP_KEY_FINGERPRINT, HASHICORP_KEYRING, SCRIPTS, render_cloud_config
from tests.conftest import tool
from tests.helpers import recipe, serving

HASHICORP_KEY = Path(__file__).parent / "fixtures" / "apt" / "hashicorp-archive-keyring.asc"
# Warn this long before HashiCorp's key expires: its successor's fingerprint must be pinned by then.
WARN_DAYS = 90


def key_records(path: Path) -> list[list[str]]:
    result = subprocess.run(
        [tool("gpg"), "--batch", "--show-keys", "--with-colons", str(path)], capture_output=True, text=True, check=True
    )
    return [line.split(":") for line in result.stdout.splitlines()]


def primaries(path: Path) -> list[str]:
    records = key_records(path)
    return [records[i + 1][9] for i, r in enumerate(records) if r[0] == "pub"]


def test_the_pinned_fingerprint_is_hashicorps_key() -> None:
    assert primaries(HASHICORP_KEY) == [HASHICORP_KEY_FINGERPRINT]
    assert f"fingerprint={HASHICORP_KEY_FINGERPRINT}\n" in (SCRIPTS / "hashicorp-apt-key.sh").read_text()


def test_hashicorps_key_is_not_about_to_expire() -> None:
    (pub,) = [r for r in key_records(HASHICORP_KEY) if r[0] == "pub"]
    expires = int(pub[6])  # 2028-01-09 for the key of 2023
    days_left = (expires - time.time()) / 86400
    assert days_left > WARN_DAYS, (
        f"HashiCorp's apt key expires in {days_left:.0f} days: check its successor's fingerprint on HashiCorp's "
        "security page, pin it in scripts/hashicorp-apt-key.sh and userdata.HASHICORP_KEY_FINGERPRINT, and "
        f"replace {HASHICORP_KEY.name}"
    )


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key that is not HashiCorp's, as an attacker's answer would carry."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    gpg = tool("gpg")
    subprocess.run(
        [gpg, "--batch", "--passphrase", "", "--quick-gen-key", "attacker@example.com", "ed25519"],
        env=env,
        check=True,
        capture_output=True,
    )
    out = home / "other.asc"
    out.write_bytes(subprocess.run([gpg, "--armor", "--export"], env=env, check=True, capture_output=True).stdout)
    # Key generation starts a gpg-agent for this home: it must not outlive the tests.
    subprocess.run([tool("gpgconf"), "--kill", "gpg-agent"], env=env, check=True, capture_output=True)
    return out


@dataclass
class KeyServer:
    """The stand-in of https://apt.releases.hashicorp.com/gpg: serves `body`, fails `failures` times first."""

    body: bytes = b""
    failures: int = 0
    requests: list[str] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    served = KeyServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append(self.path)
            code, body = (500, b"") if served.failures > 0 else (200, served.body)
            served.failures -= 1
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base:
        served.url = f"{base}/gpg"
        yield served


def shipped_script() -> str:
    """The bootcmd as the user data carries it."""
    (script,) = yaml.safe_load(render_cloud_config(recipe()))["bootcmd"]
    return script


def run(server: KeyServer, keyring: Path, attempts: int = 3) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HASHICORP_KEY_URL": server.url,
        "HASHICORP_KEYRING": str(keyring),
        "HASHICORP_KEY_ATTEMPTS": str(attempts),
        "HASHICORP_KEY_RETRY_SECONDS": "0",
    }
    return subprocess.run(["sh", "-c", shipped_script()], env=env, capture_output=True, text=True, timeout=60)


def test_the_user_data_trusts_the_repository_under_the_fetched_key_alone() -> None:
    doc = yaml.safe_load(render_cloud_config(recipe()))
    source = doc["apt"]["sources"]["hashicorp"]
    assert source == {"source": f"deb [signed-by={HASHICORP_KEYRING}] https://apt.releases.hashicorp.com $RELEASE main"}
    assert "BEGIN PGP" not in render_cloud_config(recipe())  # no key embedded: 3 KB of user data saved
    assert "HASHICORP_KEY_URL:-https://apt.releases.hashicorp.com/gpg" in shipped_script()


def test_hashicorps_key_is_trusted(key_server: KeyServer, tmp_path: Path) -> None:
    key_server.body = HASHICORP_KEY.read_bytes()
    keyring = tmp_path / "keyrings" / "hashicorp.gpg"
    result = run(key_server, keyring)
    assert result.returncode == 0, result.stderr
    assert primaries(keyring) == [HASHICORP_KEY_FINGERPRINT]
    # A later boot keeps the keyring and asks nothing.
    assert run(key_server, keyring).returncode == 0
    assert len(key_server.requests) == 1


def test_another_key_is_refused(key_server: KeyServer, other_key: Path, tmp_path: Path) -> None:
    key_server.body = other_key.read_bytes()
    keyring = tmp_path / "hashicorp.gpg"
    result = run(key_server, keyring)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"hashicorp-apt-key: {key_server.url} did not serve the key {HASHICORP_KEY_FINGERPRINT}; refusing to trust it"
    )
    assert not keyring.exists()


def test_an_extra_key_in_the_answer_is_not_trusted(key_server: KeyServer, other_key: Path, tmp_path: Path) -> None:
    key_server.body = other_key.read_bytes() + HASHICORP_KEY.read_bytes()
    keyring = tmp_path / "hashicorp.gpg"
    assert run(key_server, keyring).returncode == 0
    assert primaries(keyring) == [HASHICORP_KEY_FINGERPRINT]


def test_an_unreachable_key_is_retried_then_reported(key_server: KeyServer, tmp_path: Path) -> None:
    key_server.body, key_server.failures = HASHICORP_KEY.read_bytes(), 2
    assert run(key_server, tmp_path / "a.gpg", attempts=3).returncode == 0
    key_server.requests.clear()
    key_server.failures = 5
    result = run(key_server, tmp_path / "b.gpg", attempts=3)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"{key_server.url} did not answer after 3 attempts")
    assert len(key_server.requests) == 3


def test_the_script_is_posix_sh() -> None:
    """bootcmd runs under /bin/sh (dash on Ubuntu)."""
    script = SCRIPTS / "hashicorp-apt-key.sh"
    result = subprocess.run(
        [tool("shellcheck"), "-s", "sh", "--severity=style", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
