"""The installable package: a wheel built from the checkout renders a VM's files outside it.

The wheel is built without build isolation (setuptools from the test's own environment) and
installed without its dependencies into a fresh venv outside the checkout, which reaches the
dependencies already installed here through a .pth file: offline, and nothing of the checkout is
on its path. The installed copy must render byte for byte what the checkout renders.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from components.spec import load_service
from components.userdata import Login, VmRecipe, render_cloud_config
from tests.mocks import ROOT

RENDER = """
import json, sys
from consul_tproxy_vms.spec import load_service
from consul_tproxy_vms.userdata import Login, VmRecipe, render_cloud_config, SCRIPTS, TEMPLATES
import consul_tproxy_vms
recipe = VmRecipe(load_service("web", {"port": 9090}), "dc1", "1.22.1", "1.35.3", ("10.0.1.10",),
                  Login("p", "p", ("https://10.0.1.10:8501",)))
print(json.dumps({"text": render_cloud_config(recipe), "package": consul_tproxy_vms.__file__,
                  "scripts": str(SCRIPTS), "templates": str(TEMPLATES)}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("consul_tproxy_vms-*.whl")
    return built


def test_the_wheel_carries_the_package_its_templates_and_scripts(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "consul_tproxy_vms/userdata.py" in names and "consul_tproxy_vms/testing.py" in names
    for template in (ROOT / "components" / "templates").iterdir():
        assert f"consul_tproxy_vms/templates/{template.name}" in names
    for script in (ROOT / "scripts").iterdir():
        assert f"consul_tproxy_vms/scripts/{script.name}" in names
    assert not any(name.startswith(("components/", "tests/")) for name in names)


def test_an_installed_copy_renders_what_the_checkout_renders(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The dependencies (pulumi, jinja2, ...) from this environment, the package from the wheel alone.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    away = tmp_path / "elsewhere"
    away.mkdir()
    result = subprocess.run(
        [str(python), "-I", "-c", RENDER], cwd=away, capture_output=True, text=True, check=True, timeout=120
    )
    installed = json.loads(result.stdout)
    # The installed package, not the checkout's editable one: its files are in the venv.
    assert installed["package"].startswith(str(venv)) and installed["scripts"].startswith(str(venv))
    recipe = VmRecipe(
        load_service("web", {"port": 9090}),
        "dc1",
        "1.22.1",
        "1.35.3",
        ("10.0.1.10",),
        Login("p", "p", ("https://10.0.1.10:8501",)),
    )
    assert installed["text"] == render_cloud_config(recipe)
