"""examples/consumer stands alone: copied out of the checkout, with its own venv and the package
installed as a wheel (not this checkout's editable install), its own tests pass.

The consumer's tests themselves are in examples/consumer/tests/ (pytest runs them here too, through
testpaths). This one only proves they need nothing from the checkout. It stays offline: the new venv
reaches pulumi, the providers and pytest through a .pth file naming this venv's site-packages, and
installs consul-tproxy-vms from a copy of the checkout with --no-deps --no-build-isolation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "consumer"
# What a copy of the checkout or of the example leaves out: environments, build output, caches.
NOT_COPIED = shutil.ignore_patterns(
    "venv", ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "out"
)


def run(*args: str | Path, cwd: Path, timeout: int = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_the_consumer_example_works_copied_out_of_the_checkout(tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(ROOT)
    # The package's source as a user's clone would have it; pip builds there, not in this checkout.
    source = tmp_path / "consul-tproxy-vms"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    project = tmp_path / "my-consumer"
    shutil.copytree(EXAMPLE, project, ignore=NOT_COPIED)

    # Without its own pip and setuptools: the ones reached through the .pth file (this venv's,
    # setuptools pinned in requirements.txt) build the wheel, offline.
    run(sys.executable, "-m", "venv", "--without-pip", "venv", cwd=project)
    python = project / "venv" / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=project).strip())
    (site / "zz_offline_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # requirements.txt as a user outside this repository has it: the package's line points at its
    # source (here the copy; for real use the git tag), the rest is already there (pytest).
    requirements = project / "requirements.txt"
    lines = requirements.read_text().splitlines()
    assert "../.." in lines, "requirements.txt installs the package from the checkout by path"
    assert any("consul-tproxy-vms @ git+https://github.com/" in line for line in lines)
    requirements.write_text(
        "\n".join(f"consul-tproxy-vms @ {source.as_uri()}" if line == "../.." else line for line in lines) + "\n"
    )
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-r", requirements, cwd=project)

    where = run(python, "-c", "import consul_tproxy_vms; print(consul_tproxy_vms.__file__)", cwd=project).strip()
    assert Path(where).is_relative_to(site), where  # the wheel install, not the checkout's editable one

    out = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=project, timeout=180)
    assert " passed" in out and " failed" not in out and " error" not in out, out
