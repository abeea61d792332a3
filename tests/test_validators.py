"""What goes onto the VMs, checked by the real tools: cloud-init, shellcheck, systemd-analyze."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from components.userdata import SCRIPTS
from tests.conftest import systemd_verify, tool
from tests.helpers import rendered_vms

CASES = sorted(rendered_vms())


@pytest.mark.parametrize("case", CASES)
def test_cloud_config_passes_cloud_init_schema(case: str, tmp_path: Path) -> None:
    cloud_init = tool("cloud-init")
    path = tmp_path / "user-data.yaml"
    path.write_text(rendered_vms()[case].cloud_config)
    result = subprocess.run([cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_schema_check_is_real() -> None:
    """The validator must be able to fail: a wrong type is reported."""
    cloud_init = tool("cloud-init")
    bad = "#cloud-config\npackage_update: sometimes\nwrite_files: {path: 1}\n"
    result = subprocess.run(
        [cloud_init, "schema", "--config-file", "/dev/stdin"], input=bad, capture_output=True, text=True
    )
    assert result.returncode != 0


def shell_files() -> dict[str, str]:
    found = {str(p): p.read_text() for p in sorted(SCRIPTS.glob("*.sh"))}
    for case, vm in rendered_vms().items():
        for f in vm.files:
            if f.content.startswith(("#!/bin/bash", "#!/bin/sh")):
                found[f"{case}:{f.path}"] = f.content
    return found


def test_there_are_shell_files_to_check() -> None:
    names = shell_files()
    assert any(n.endswith("consul-redirect-traffic") for n in names)
    assert any(n.endswith("consul-cleanup-traffic") for n in names)


@pytest.mark.parametrize("name", sorted(shell_files()))
def test_shell_passes_shellcheck(name: str) -> None:
    shellcheck = tool("shellcheck")
    result = subprocess.run(
        [shellcheck, "--severity=style", "-"], input=shell_files()[name], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    """A root holding the system's own units (targets and the like), the VM's units, and stand-ins
    for every executable the units name: systemd-analyze checks that each one exists."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    for exe in [
        "/bin/sh",
        "/usr/bin/consul",
        "/usr/bin/python3",
        "/bin/kill",
        "/usr/local/sbin/consul-redirect-traffic",
        "/usr/local/sbin/consul-cleanup-traffic",
        "/usr/local/sbin/consul-data-volume",
        "/usr/local/sbin/consul-login",
        "/usr/local/sbin/consul-server-login",
        "/usr/local/sbin/consul-server-secrets",
        "/usr/local/sbin/mesh-imds-guard",
        "/usr/local/sbin/mesh-lifecycle",
        "/opt/billing/bin/server",
    ]:
        target = root / exe.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return root


@pytest.mark.parametrize("case", CASES)
def test_systemd_units_pass_systemd_analyze_verify(case: str, tmp_path: Path) -> None:
    vm = rendered_vms()[case]
    root = fake_root(tmp_path, {f.path: f.content for f in vm.files})
    # verify warns (unknown keys, bad values) without failing: any output is a finding (conftest
    # excuses only keys this machine's systemd is too old for but the VMs' has).
    assert systemd_verify(root, vm.units) == []


def test_systemd_verify_is_real(tmp_path: Path) -> None:
    """The check must be able to fail: a unit with a typo'd key is reported."""
    analyze = tool("systemd-analyze")
    root = fake_root(
        tmp_path, {"/etc/systemd/system/typo.service": "[Service]\nExecStart=/usr/bin/consul\nRestrat=always\n"}
    )
    result = subprocess.run([analyze, "verify", f"--root={root}", "typo.service"], capture_output=True, text=True)
    assert "Unknown key" in result.stderr


def test_verify_lets_through_only_the_newer_keys(tmp_path: Path) -> None:
    """systemd_verify hides nothing else: a misspelt restart key is still reported, the 254 keys are not."""
    unit = "[Service]\nExecStart=/usr/bin/consul\nRestart=on-failure\nRestartSteps=5\nRestartSecs=5\n"
    root = fake_root(tmp_path, {"/etc/systemd/system/typo.service": unit})
    (complaint,) = systemd_verify(root, ["typo.service"])
    assert "Unknown key 'RestartSecs'" in complaint


@pytest.mark.parametrize("case", CASES)
def test_consul_config_files_are_valid_hcl(case: str) -> None:
    """Every .hcl the agent reads parses (python-hcl2), multi-line PEM strings and all."""
    hcl_files = [f for f in rendered_vms()[case].files if f.path.endswith(".hcl")]
    assert hcl_files
    for f in hcl_files:
        parsed = hcl2.loads(f.content)
        assert parsed, f.path


def test_hcl_check_is_real() -> None:
    with pytest.raises(Exception):  # noqa: B017 (the parser raises its own lark errors)
        hcl2.loads('acl {\n  enabled = true\n  tokens { agent = "unterminated }\n}\n')
