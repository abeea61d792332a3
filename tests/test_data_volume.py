"""consul-data-volume (a server's data volume as /var/lib/consul) against stand-in disk tools.

The stand-ins (tests/fixtures/data-volume/_stub) parse options as util-linux and e2fsprogs do, refuse
what the real tools refuse, and answer from a world of block devices built here: the root disk (a
partitioned disk, a whole disk, or LVM), an instance-store disk, other EBS volumes, and this server's
volume, whose /dev/disk/by-id link (its NVMe serial) appears only after a few polls, as Pulumi's
attachment does. The last tests replay every call the script made against the real tools on a loop
device, so the stand-ins cannot accept an option the real tools refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.userdata import SCRIPTS
from tests.conftest import need, tool

STUBS = Path(__file__).parent / "fixtures" / "data-volume"
SCRIPT = SCRIPTS / "consul-data-volume.sh"
VOLUME = "vol-0123456789abcdef0"
EBS = "Amazon Elastic Block Store"


def by_id(volume: str) -> str:
    """udev's link for an EBS NVMe disk: nvme-<model>_<serial>, the serial being the id without its dash."""
    return "disk/by-id/nvme-Amazon_Elastic_Block_Store_vol" + volume.removeprefix("vol-")


@dataclass
class Machine:
    tmp: Path
    devices: dict[str, dict] = field(default_factory=dict)
    attach: list[dict] = field(default_factory=list)
    findmnt_silent: bool = False

    @property
    def dev(self) -> Path:
        return self.tmp / "dev"

    @property
    def mount(self) -> Path:
        return self.tmp / "consul"

    def disk(self, name: str, **attrs: object) -> str:
        """A block device /dev/<name> (a file here, so that links to it resolve)."""
        path = self.dev / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self.devices[str(path)] = {"name": str(path), "type": "disk", "model": EBS, **attrs}
        return str(path)

    def link(self, relative: str, target: str, after_sleeps: int = 0) -> None:
        """A udev link to a device, there now or after some polls (an attachment in progress)."""
        path = self.dev / relative
        if after_sleeps:
            self.attach.append({"path": str(path), "target": target, "after_sleeps": after_sleeps})
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    def run(self, wait: int = 60, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        """Boots: runs the script. The world is built at the first boot and kept (changed) after it."""
        world = self.tmp / "world.json"
        if not world.exists():
            world.write_text(
                json.dumps({"devices": self.devices, "attach": self.attach, "findmnt_silent": self.findmnt_silent})
            )
        log = self.tmp / "calls.log"
        log.write_text("")
        full_env = {
            "PATH": f"{STUBS}:{os.environ['PATH']}",
            "STUB_DIR": str(self.tmp),
            "STUB_LOG": str(log),
            "DATA_VOLUME_ID": VOLUME,
            "DATA_DEVICE": "/dev/sdf",
            "CONSUL_DATA_MOUNT": str(self.mount),
            "CONSUL_DATA_DEV_DIR": str(self.dev),
            "CONSUL_DATA_WAIT_SECONDS": str(wait),
            "CONSUL_DATA_POLL_SECONDS": "5",
            "CONSUL_DATA_OWNER": "root:root",
            **env,
        }
        result = subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60)
        return result, log.read_text().splitlines()

    def world(self) -> dict:
        return json.loads((self.tmp / "world.json").read_text())


@pytest.fixture
def nitro(tmp_path: Path) -> Machine:
    """A Nitro server: its root disk (partitioned, / on p1), an instance-store disk, another EBS volume."""
    m = Machine(tmp_path)
    root = m.disk(
        "nvme0n1",
        serial="vol0aaaaaaaaaaaaaaaa",
        pttype="gpt",
        children=[{"name": str(m.dev / "nvme0n1p1"), "type": "part", "fstype": "ext4", "mountpoint": "/"}],
    )
    m.link(by_id("vol-0aaaaaaaaaaaaaaaa"), root)
    m.disk("nvme2n1", model="Amazon EC2 NVMe Instance Storage", serial="AWS1234567890")
    other = m.disk("nvme3n1", serial="vol0bbbbbbbbbbbbbbbb")
    m.link(by_id("vol-0bbbbbbbbbbbbbbbb"), other)
    return m


def data_disk(m: Machine, after_sleeps: int = 2, **attrs: object) -> str:
    path = m.disk("nvme1n1", serial="vol" + VOLUME.removeprefix("vol-"), **attrs)
    m.link(by_id(VOLUME), path, after_sleeps)
    return path


def changed(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith(("mkfs", "mount "))]


def test_a_new_empty_volume_is_waited_for_formatted_and_mounted(nitro: Machine) -> None:
    data = data_disk(nitro, after_sleeps=2)
    result, calls = nitro.run()
    assert result.returncode == 0, result.stderr
    assert calls.count("sleep 5") == 2  # the volume appeared on the third look
    assert changed(calls) == [
        f"mkfs.ext4 -q -L consul-data -- {data}",  # this volume: not root, instance store or another volume
        f"mount -t ext4 -o noatime -- {data} {nitro.mount}",
    ]
    assert nitro.world()["devices"][data]["mountpoints"] == [str(nitro.mount)]
    assert f"volume {VOLUME} ({data}) mounted on {nitro.mount}" in result.stdout


def test_a_volume_with_data_is_mounted_as_it_is(nitro: Machine) -> None:
    data = data_disk(nitro, after_sleeps=0, fstype="ext4", label="consul-data")
    result, calls = nitro.run()
    assert result.returncode == 0, result.stderr
    assert changed(calls) == [f"mount -t ext4 -o noatime -- {data} {nitro.mount}"]


def test_a_restart_with_the_volume_mounted_mounts_nothing_again(nitro: Machine) -> None:
    data_disk(nitro, after_sleeps=0, fstype="ext4", mountpoint=str(nitro.tmp / "consul"))
    nitro.mount.mkdir()
    result, calls = nitro.run()
    assert result.returncode == 0, result.stderr
    assert changed(calls) == []


def test_a_xen_instance_finds_the_volume_at_its_attachment_name(tmp_path: Path) -> None:
    """Xen disks have no serial: the volume is the device attached as /dev/sdf, which the kernel calls xvdf."""
    m = Machine(tmp_path)
    m.disk("xvda", fstype="ext4", mountpoint="/")  # a whole-disk root
    xvdf = str(m.dev / "xvdf")
    m.devices[xvdf] = {"name": xvdf, "type": "disk"}
    m.attach.append({"path": xvdf, "target": None, "after_sleeps": 1})  # the node appears once attached
    result, calls = m.run()
    assert result.returncode == 0, result.stderr
    assert calls.count("sleep 5") == 1
    assert changed(calls) == [f"mkfs.ext4 -q -L consul-data -- {xvdf}", f"mount -t ext4 -o noatime -- {xvdf} {m.mount}"]


# --- Hostile machines: the root disk is never taken -------------------------------------------


@pytest.mark.parametrize(
    "root",
    [
        pytest.param({"fstype": "ext4", "mountpoint": "/"}, id="whole-disk-root"),
        pytest.param(
            {
                "pttype": "gpt",
                "children": [
                    {"name": "/dev/nvme0n1p2", "type": "part", "fstype": "LVM2_member"},
                    {"name": "/dev/mapper/ubuntu--vg-root", "type": "lvm", "fstype": "ext4", "mountpoint": "/"},
                ],
            },
            id="lvm-root",
        ),
    ],
)
@pytest.mark.parametrize("findmnt_silent", [False, True], ids=["findmnt-answers", "findmnt-silent"])
def test_the_root_disk_is_never_taken_while_the_volume_is_not_attached(
    tmp_path: Path, root: dict, findmnt_silent: bool
) -> None:
    """The only other EBS disk is the root: elimination would take it; the volume's id never does."""
    m = Machine(tmp_path, findmnt_silent=findmnt_silent)
    root_dev = m.disk("nvme0n1", serial="vol0aaaaaaaaaaaaaaaa", **root)
    m.link(by_id("vol-0aaaaaaaaaaaaaaaa"), root_dev)
    result, calls = m.run(wait=10)
    assert result.returncode == 1
    assert changed(calls) == []
    assert f"volume {VOLUME} is not attached after 10s" in result.stderr
    assert by_id(VOLUME) in result.stderr and "consul stays stopped" in result.stderr


@pytest.mark.parametrize(
    ("disk", "why"),
    [
        pytest.param({"fstype": "ext4", "mountpoint": "/"}, "is mounted on /", id="mounted-as-root"),
        pytest.param(
            {"pttype": "gpt", "children": [{"name": "/dev/nvme1n1p1", "type": "part", "mountpoint": "/"}]},
            "has partitions or holders",
            id="partitioned",
        ),
        pytest.param(
            {"children": [{"name": "/dev/mapper/vg-data", "type": "lvm", "fstype": "xfs"}]},
            "has partitions or holders",
            id="lvm-member",
        ),
        pytest.param({"fstype": "xfs"}, "holds 'xfs', not ext4", id="other-filesystem"),
        pytest.param({"pttype": "dos"}, "holds 'an unknown signature', not ext4", id="empty-partition-table"),
        pytest.param({"type": "part"}, "is a 'part', not a whole disk", id="a-partition"),
        pytest.param({"unreadable": True}, "cannot read", id="unreadable"),
    ],
)
def test_a_device_in_use_or_not_prepared_by_the_script_is_neither_formatted_nor_mounted(
    nitro: Machine, disk: dict, why: str
) -> None:
    data_disk(nitro, after_sleeps=0, **disk)
    result, calls = nitro.run()
    assert result.returncode == 1
    assert why in result.stderr and "consul stays stopped" in result.stderr
    assert changed(calls) == []


def test_our_mount_point_mounted_from_another_device_is_refused(nitro: Machine) -> None:
    data_disk(nitro, after_sleeps=0, fstype="ext4")
    nitro.mount.mkdir()
    other = nitro.disk("nvme4n1", fstype="ext4", mountpoint=str(nitro.mount))
    result, calls = nitro.run()
    assert result.returncode == 1
    assert f"already mounted from '{other}'" in result.stderr
    assert changed(calls) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATA_VOLUME_ID": ""}, "DATA_VOLUME_ID='' is not an EBS volume id"),
        ({"DATA_VOLUME_ID": "vol-0123/../../sda"}, "is not an EBS volume id"),
        ({"DATA_VOLUME_ID": "vol-0123456789ABCDEF0"}, "is not an EBS volume id"),
        ({"DATA_DEVICE": "/dev/sda"}, "DATA_DEVICE='/dev/sda' is not a device name"),
        ({"DATA_DEVICE": "/dev/nvme1n1"}, "is not a device name"),
    ],
)
def test_a_bad_environment_file_is_refused_before_any_disk_is_looked_at(
    nitro: Machine, env: dict[str, str], message: str
) -> None:
    data_disk(nitro, after_sleeps=0)
    result, calls = nitro.run(**env)
    assert result.returncode == 1 and message in result.stderr
    assert calls == []


def test_script_passes_shellcheck() -> None:
    result = subprocess.run([tool("shellcheck"), "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# --- The stand-ins refuse what the real tools refuse ----------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lsblk", "--nodeps", "--bogus", "/dev/x"], "lsblk: unrecognized option '--bogus'"),
        (["lsblk", "-dnqo", "TYPE", "/dev/x"], "lsblk: invalid option -- 'q'"),
        (["lsblk", "-no", "NAME,BOGUS", "/dev/x"], "lsblk: unknown column: BOGUS"),
        (["blkid", "-z", "/dev/x"], "blkid: invalid option -- 'z'"),
        (["findmnt", "--mount-point", "/x"], "findmnt: unrecognized option '--mount-point'"),
        (["mkfs.ext4", "-Z", "/dev/x"], "mkfs.ext4: invalid option -- 'Z'"),
        (["mount", "--bogus", "/dev/x", "/x"], "mount: unrecognized option '--bogus'"),
    ],
)
def test_stand_ins_refuse_options_the_real_tools_refuse(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "world.json").write_text(json.dumps({"devices": {}}))
    env = {"PATH": os.environ["PATH"], "STUB_DIR": str(tmp_path), "STUB_LOG": str(tmp_path / "log")}
    result = subprocess.run([str(STUBS / argv[0]), *argv[1:]], env=env, capture_output=True, text=True)
    assert result.returncode == 1 and message in result.stderr


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    need(os.geteuid() == 0, "replaying the disk tools needs root (a loop device, mount)")
    losetup = tool("losetup")
    image = tmp_path / "volume.img"
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    found = subprocess.run([losetup, "-f", "--show", str(image)], capture_output=True, text=True)
    need(found.returncode == 0, f"no loop device: {found.stderr.strip()}")
    device = found.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["umount", str(tmp_path / "real-mount")], capture_output=True)
        subprocess.run([losetup, "-d", device], capture_output=True)


def test_every_call_the_script_makes_is_accepted_by_the_real_tools(nitro: Machine, loop_device: str) -> None:
    """Replays the script's calls of a first boot and of a restart against util-linux and e2fsprogs."""
    data = data_disk(nitro, after_sleeps=1)
    _, first = nitro.run()
    _, restart = nitro.run()  # the volume is mounted now: the restart's calls (findmnt) too
    real_mount = nitro.tmp / "real-mount"
    real_mount.mkdir()
    replayed = 0
    for call in [*first, *restart]:
        name, *args = call.split(" ")
        if name == "sleep":
            assert args == ["5"]
            continue
        args = [loop_device if a == data else str(real_mount) if a == str(nitro.mount) else a for a in args]
        result = subprocess.run([shutil.which(name) or name, *args], capture_output=True, text=True)
        assert "option" not in result.stderr and "unknown column" not in result.stderr, (call, result.stderr)
        # 0, or blkid's 2 (no signature yet) and mountpoint's 32 (not mounted yet): answers, not usage errors.
        assert result.returncode in (0, 2, 32), (call, result.returncode, result.stderr)
        replayed += 1
    assert changed(restart) == []  # the restart found the volume mounted: nothing formatted or mounted again
    assert {c.split(" ")[0] for c in first + restart} >= {"lsblk", "blkid", "mkfs.ext4", "mount", "findmnt"}
    assert replayed >= 10
