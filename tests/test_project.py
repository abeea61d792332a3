"""The project files agree with the code: config schema and defaults, pinned requirements."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from components.spec import DEFAULTS, PROJECT, REQUIRED, SECRET_KEYS, TOP_LEVEL_KEYS
from tests.mocks import ROOT

STRUCTURED = {"services", "intentions", "gateway"}  # Pulumi's project schema cannot type objects
# Secrets have no default, and a declared key without a default would be required of every stack.
COMMENTED = STRUCTURED | set(SECRET_KEYS)


def project() -> dict:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_project_name_and_runtime() -> None:
    doc = project()
    assert doc["name"] == PROJECT
    assert doc["runtime"]["name"] == "python"


def test_every_key_is_declared_typed_and_described_with_the_programs_default() -> None:
    declared = project()["config"]
    assert set(declared) == TOP_LEVEL_KEYS - COMMENTED
    for key, decl in declared.items():
        assert decl["type"] in ("string", "integer", "boolean", "array"), key
        assert decl["description"].strip(), key
        if decl["type"] == "array":
            assert decl["items"]["type"] == "string", key
        assert key not in REQUIRED, key
        # Under mocks Pulumi applies no defaults: the program must apply the same ones.
        assert decl["default"] == DEFAULTS[key], key


def test_structured_keys_are_documented_in_the_project_file() -> None:
    text = (ROOT / "Pulumi.yaml").read_text()
    for key in COMMENTED:
        assert re.search(rf"^#\s+{key}:", text, re.M), key


def requirement_lines() -> list[str]:
    text = (ROOT / "requirements.txt").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#") and line != "-e ."]


def test_requirements_are_pinned() -> None:
    lines = requirement_lines()
    names = {line.split("==")[0].lower() for line in lines}
    assert {"pulumi", "pulumi-aws", "pulumi-consul", "jinja2"} <= names
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", line) for line in lines), lines
    # The project's own package is installed from the checkout (editable), so tests and examples
    # import it as users do: consul_tproxy_vms.
    assert "-e ." in (ROOT / "requirements.txt").read_text().splitlines()


def test_the_pins_satisfy_the_packages_own_dependency_ranges() -> None:
    pins = {line.split("==")[0].lower(): Version(line.split("==")[1]) for line in requirement_lines()}
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        assert dependency.name.lower() in pins, dependency
        assert pins[dependency.name.lower()] in dependency.specifier, (dependency, pins[dependency.name.lower()])


def test_readme_documents_every_config_key_and_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for key in TOP_LEVEL_KEYS:
        assert f"`{key}`" in readme, key
    assert "venv/bin/python -m pytest" in readme
    assert "pulumi up" in readme
