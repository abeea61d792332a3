"""HashiCorp's apt signing key, embedded in every VM's user data, checked with gpg."""

from __future__ import annotations

import subprocess
import time

from components.userdata import HASHICORP_KEY_FILE, HASHICORP_KEY_FINGERPRINT, TEMPLATES
from tests.conftest import tool

# Refresh the embedded key (https://apt.releases.hashicorp.com/gpg) this long before it expires.
WARN_DAYS = 90


def key_records() -> list[list[str]]:
    gpg = tool("gpg")
    result = subprocess.run(
        [gpg, "--show-keys", "--with-colons", str(TEMPLATES / HASHICORP_KEY_FILE)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split(":") for line in result.stdout.splitlines()]


def test_the_embedded_key_is_hashicorps_by_fingerprint() -> None:
    records = key_records()
    # The first fingerprint record follows the primary key ("pub").
    assert records[0][0] == "pub"
    fingerprints = [r[9] for r in records if r[0] == "fpr"]
    assert fingerprints[0] == HASHICORP_KEY_FINGERPRINT


def test_the_embedded_key_is_not_about_to_expire() -> None:
    (pub,) = [r for r in key_records() if r[0] == "pub"]
    expires = int(pub[6])  # 2028-01-09 for the key of 2023
    days_left = (expires - time.time()) / 86400
    assert days_left > WARN_DAYS, (
        f"HashiCorp's apt key expires in {days_left:.0f} days: fetch https://apt.releases.hashicorp.com/gpg, "
        f"check its fingerprint on HashiCorp's security page and replace components/templates/{HASHICORP_KEY_FILE}"
    )


def test_a_different_key_fails_the_fingerprint_check(tmp_path: object) -> None:
    """The check can fail: gpg reads the key's own fingerprint, not a label beside it."""
    fingerprints = [r[9] for r in key_records() if r[0] == "fpr"]
    assert len(fingerprints) == 2 and fingerprints[1] != HASHICORP_KEY_FINGERPRINT  # the subkey's own
