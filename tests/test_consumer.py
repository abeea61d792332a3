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
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

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


PACKAGE = "consul-tproxy-vms"


def requirement_lines(project: Path) -> list[str]:
    """The requirement lines of a project's requirements.txt, comments and blank lines left out."""
    text = (project / "requirements.txt").read_text()
    return [line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_example_copied_out_requires_the_release_not_the_checkout(tmp_path: Path) -> None:
    """Copied anywhere, `pip install -r requirements.txt` needs no edit: every line is a requirement
    (no path, no pip option that could reach into the checkout), the package pinned to the git tag
    of this version. Nothing is installed here: the tag is on GitHub, out of reach offline."""
    project = tmp_path / "my-consumer"
    shutil.copytree(EXAMPLE, project, ignore=NOT_COPIED)
    lines = requirement_lines(project)
    for line in lines:
        assert not line.startswith(("-", ".", "/", "file:")), f"requirements.txt: {line!r} is not a requirement"
        assert not (project / line).exists(), f"requirements.txt: {line!r} names a path"
    (package,) = [Requirement(line) for line in lines if Requirement(line).name == PACKAGE]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert package.url is not None and package.url.startswith("git+https://github.com/")
    assert package.url.endswith(f"/consul-tproxy-vms@v{version}"), package.url


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

    # The package from the copy of the checkout, installed explicitly (the example's requirements.txt
    # names the git release, which is offline out of reach); then the rest of requirements.txt.
    pip = (python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation")
    run(*pip, source, cwd=project)
    others = [line for line in requirement_lines(project) if Requirement(line).name != PACKAGE]
    assert others, "requirements.txt holds the consumer's own dependencies too"
    run(*pip, *others, cwd=project)

    where = run(python, "-c", "import consul_tproxy_vms; print(consul_tproxy_vms.__file__)", cwd=project).strip()
    assert Path(where).is_relative_to(site), where  # the wheel install, not the checkout's editable one

    out = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=project, timeout=180)
    assert " passed" in out and " failed" not in out and " error" not in out, out
