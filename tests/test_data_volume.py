"""consul-data-volume (a server's data volume as /var/lib/consul) against stand-in disk tools.

The stand-ins (tests/fixtures/data-volume) log each call and answer as lsblk, blkid and friends do
on a Nitro instance: the root disk, an instance-store disk, and the EBS data volume appearing after
a few polls, as Pulumi's attachment does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from components.userdata import SCRIPTS

STUBS = Path(__file__).parent / "fixtures" / "data-volume"
SCRIPT = SCRIPTS / "consul-data-volume.sh"


def run(tmp_path: Path, signature: int, polls: int = 2, labelled: str = "", wait: int = 60) -> tuple[int, list[str]]:
    (tmp_path / "signature").write_text(str(signature))
    (tmp_path / "polls").write_text(str(polls))
    (tmp_path / "labelled").write_text(labelled)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {
        "PATH": f"{STUBS}:{os.environ['PATH']}",
        "STUB_DIR": str(tmp_path),
        "STUB_LOG": str(log),
        "CONSUL_DATA_MOUNT": str(tmp_path / "consul"),
        "CONSUL_DATA_WAIT_SECONDS": str(wait),
        "CONSUL_DATA_POLL_SECONDS": "5",
    }
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    return result.returncode, log.read_text().splitlines()


def test_a_new_empty_volume_is_waited_for_formatted_and_mounted(tmp_path: Path) -> None:
    code, calls = run(tmp_path, signature=2, polls=2)
    assert code == 0
    assert calls.count("sleep 5") == 2  # the volume appeared on the third look
    assert "mkfs.ext4 -q -L consul-data /dev/nvme1n1" in calls  # the EBS disk, not root or instance store
    assert f"mount -o noatime /dev/nvme1n1 {tmp_path / 'consul'}" in calls


def test_a_volume_with_data_is_mounted_as_it_is(tmp_path: Path) -> None:
    code, calls = run(tmp_path, signature=0, labelled="/dev/nvme1n1")
    assert code == 0
    assert not any(c.startswith("mkfs") for c in calls)
    assert f"mount -o noatime /dev/nvme1n1 {tmp_path / 'consul'}" in calls


def test_an_unreadable_volume_is_never_formatted(tmp_path: Path) -> None:
    code, calls = run(tmp_path, signature=4, labelled="/dev/nvme1n1")
    assert code == 1
    assert not any(c.startswith(("mkfs", "mount ")) for c in calls)


def test_no_volume_in_time_fails_without_mounting(tmp_path: Path) -> None:
    code, calls = run(tmp_path, signature=2, polls=100, wait=10)
    assert code == 1
    assert not any(c.startswith(("mkfs", "mount ")) for c in calls)
