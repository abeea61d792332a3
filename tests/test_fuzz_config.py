"""Generated stack configs, hostile and plain, through config -> spec -> rendered files.

Each generated config is either refused with a MeshSpecError whose every problem names its key
(and never echoes a secret), or it renders files the real readers take back unchanged: YAML with
every value's type kept, HCL that parses to the same strings, unit files whose settings are exactly
the ones the template writes (no injected line), environment files of plain KEY=value lines. A
sample of the accepted configs also goes through cloud-init's schema and systemd-analyze verify.

The runs are derandomized (a fixed seed per test), so CI sees the same examples every time.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import hcl2
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.spec import PROJECT, TOP_LEVEL_KEYS, MeshSpecError, load_spec
from components.userdata import VmRecipe, render_cloud_config, unpack_cloud_config, vm_files
from tests.conftest import systemd_verify, tool
from tests.helpers import LOGIN
from tests.test_validators import fake_root

SECRET_MARK = "s3cr3t-MARK"
FAST = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# Text that breaks files: line breaks of every kind, quotes, template and specifier characters.
NASTY = st.sampled_from(
    ["\n", "\r", "\v", "\f", "\x85", "\u2028", "\u2029", "\\", '"', "'", "${", "%{", "%", "$", " ", "#", ":", "\t"]
)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=10), NASTY, st.text(max_size=10)),
    st.sampled_from(["on", "off", "yes", "null", "~", "0xffff", "1e3", "true", "0o17", ".inf", "-"]),
    st.text(min_size=300, max_size=2000),
)
ANY_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), HOSTILE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(HOSTILE_TEXT, inner, max_size=3)),
    max_leaves=6,
)


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid four times in five: a config with one bad value among good ones is the interesting case."""
    # Hypothesis favours small integers (0 above all): the rare branch is the last value.
    return st.integers(0, 4).flatmap(lambda i: hostile if i == 4 else valid)


NAME = mostly(
    st.sampled_from(["web", "api", "db", "a" * 63]),
    st.one_of(st.sampled_from(["consul", "consul-server-0"]), HOSTILE_TEXT),
)
PRINTABLE = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=30)
COMMAND = mostly(
    st.builds(lambda a, b: "/opt/app/bin/run " + a + b, PRINTABLE, st.sampled_from(["", "%i", " --x", " '${x}'"])),
    st.one_of(st.builds(lambda a, b: "/opt/app " + a + b, HOSTILE_TEXT, st.sampled_from(["", "\\"])), ANY_VALUE),
)
PATH = mostly(
    st.from_regex(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,30}", fullmatch=True),
    st.one_of(st.builds(lambda a: "/" + a, HOSTILE_TEXT), ANY_VALUE),
)
PACKAGES = mostly(
    st.lists(st.sampled_from(["curl", "on", "null", "0xffff", "1e3", "yes", "curl=7.88*"]), max_size=3),
    st.one_of(st.lists(st.one_of(HOSTILE_TEXT, st.just("consul=1.10.0-1"))), ANY_VALUE),
)
PORT = mostly(
    st.sampled_from([8080, 9090, 3000]), st.one_of(st.integers(-5, 70000), st.sampled_from([22, 8301]), ANY_VALUE)
)


@st.composite
def services(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 19:
        return draw(ANY_VALUE)
    result: dict[Any, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        service: dict[str, Any] = {"port": draw(PORT)}
        for key, strategy in [
            ("command", COMMAND),
            ("healthCheckPath", PATH),
            ("packages", PACKAGES),
            ("upstreams", st.lists(NAME, max_size=2)),
            ("protocol", mostly(st.sampled_from(["http", "tcp", "grpc"]), ANY_VALUE)),
            (
                "excludeOutboundCidrs",
                mostly(
                    st.lists(st.sampled_from(["10.0.0.0/8", "240.0.0.0/5", "0.0.0.0/0"])),
                    st.lists(st.sampled_from(["fd00::/8", "x", "10.0.0.1/8"]), min_size=1),
                ),
            ),
            ("excludeInboundPorts", st.lists(PORT, max_size=2)),
            ("instanceType", mostly(st.just("t3.small"), HOSTILE_TEXT)),
            ("prot", ANY_VALUE),
        ]:
            if draw(st.integers(0, 3)) == 3 if key == "prot" else draw(st.booleans()):
                service[key] = draw(strategy)
        result[draw(mostly(NAME, st.integers(0, 3)))] = service if draw(st.integers(0, 19)) < 19 else draw(ANY_VALUE)
    return result


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {"services": draw(services()), "adminCidrs": ["203.0.113.0/24"]}
    names = [n for n in config["services"] if isinstance(n, str)] if isinstance(config["services"], dict) else []
    if draw(st.booleans()):
        ends = mostly(st.sampled_from(names or ["web"]), ANY_VALUE)
        config["intentions"] = draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"source": ends, "destination": ends, "action": st.one_of(st.just("allow"), ANY_VALUE)}
                    ),
                    max_size=3,
                ),
                ANY_VALUE,
            )
        )
    for key, strategy in [
        ("datacenter", st.one_of(st.just("dc1"), HOSTILE_TEXT)),
        ("consulVersion", st.one_of(st.sampled_from(["1.22.1", "1.21.4", "1.19.0"]), HOSTILE_TEXT)),
        ("envoyVersion", st.one_of(st.sampled_from(["1.35.3", "1.31.0", "1.38.0"]), HOSTILE_TEXT)),
        ("sshKeyName", HOSTILE_TEXT),
        ("adminCidrs", st.lists(st.sampled_from(["deployer", "0.0.0.0/0", "2001:db8::/32", "10.0.0.1/8"]))),
        ("zoneCount", ANY_VALUE),
        ("consul_token", st.just(SECRET_MARK)),
        ("ConsulToken", st.just(SECRET_MARK)),
        ("consulGossipKey", st.just(SECRET_MARK)),
    ]:
        if draw(st.integers(0, 7)) == 7:
            config[key] = draw(strategy)
    return config


def recipes(config: dict[str, Any]) -> list[VmRecipe] | None:
    """The VMs of an accepted config, or None when the spec refuses it (after checking the refusal)."""
    try:
        spec = load_spec(config)
    except MeshSpecError as err:
        assert err.problems
        keys = {*TOP_LEVEL_KEYS, *config}
        for problem in err.problems:
            # Every problem names its key first: a config key, or a path below one.
            head = re.split(r"[.\[:]", problem, maxsplit=1)[0]
            assert head in {str(k) for k in keys}, problem
            assert SECRET_MARK not in problem, problem
        assert SECRET_MARK not in str(err)
        return None
    return [
        VmRecipe(svc, spec.datacenter, spec.consul_version, spec.envoy_version, ("10.0.1.10",), LOGIN)
        for svc in spec.services.values()
    ]


UNIT_KEYS = {
    "Description",
    "Wants",
    "After",
    "Requires",
    "DynamicUser",
    "Environment",
    "ExecStart",
    "Restart",
    "RestartSec",
    "NoNewPrivileges",
    "IPAddressDeny",
    "AmbientCapabilities",
    "CapabilityBoundingSet",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "StateDirectory",
    "WantedBy",
}


def unit_settings(text: str) -> list[str]:
    """The keys of a unit file as systemd reads it: \\r, \\v and \\f are no line breaks for it, but
    a backslash at the end of a line joins the next (systemd.syntax(7))."""
    joined = re.sub(r"\\\n", " ", text)
    keys = []
    for line in joined.split("\n"):
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            keys.append(line.split("=", 1)[0])
    return keys


def hcl_unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(
        r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)",
        lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], chr(int(m[1][1:], 16)) if len(m[1]) > 1 else m[1]),
        body,
    )


def check_rendered(recipe: VmRecipe) -> str:
    text = render_cloud_config(recipe)
    doc = yaml.safe_load(text)
    # YAML keeps every value and its type.
    for entry in doc["packages"]:
        assert all(isinstance(part, str) for part in entry), entry
    files = {f.path: f.content for f in vm_files(recipe)}
    assert unpack_cloud_config(text) == files
    svc = recipe.service
    agent = hcl2.loads(files["/etc/consul.d/consul.hcl"])
    assert hcl_unquote(agent["datacenter"]) == recipe.datacenter
    service = hcl2.loads(files[f"/etc/consul.d/service-{svc.name}.hcl"])["service"][0]
    check = service["check"][0]
    if svc.app.health_check_path:
        assert hcl_unquote(check["http"]) == f"http://127.0.0.1:{svc.port}{svc.app.health_check_path}"
    unit = files["/etc/systemd/system/mesh-app.service"]
    # Exactly the settings the template writes for a plain command: no line added, none swallowed.
    plain = replace(svc, app=replace(svc.app, command="/bin/true") if svc.app.command else svc.app)
    expected = unit_settings(
        {f.path: f.content for f in vm_files(replace(recipe, service=plain))}["/etc/systemd/system/mesh-app.service"]
    )
    assert unit_settings(unit) == expected, unit
    assert set(expected) <= UNIT_KEYS
    for line in files[f"/etc/envoy/{svc.name}.env"].splitlines():
        assert line.startswith("#") or re.fullmatch(r'[A-Z_]+=("[^"\\$`]*"|[^\s"\\$`]+)', line), line
    return text


@FAST
@given(config=configs())
def test_every_config_is_refused_with_named_keys_or_renders_files_their_readers_accept(config: dict[str, Any]) -> None:
    for recipe in recipes(config) or []:
        check_rendered(recipe)


@st.composite
def one_hostile_value(draw: st.DrawFn) -> dict[str, Any]:
    """A good config with one value replaced by hostile text: where an escaping gap shows."""
    service: dict[str, Any] = {"port": 8080, "command": "/opt/app/bin/run", "healthCheckPath": "/health"}
    key = draw(st.sampled_from(["command", "healthCheckPath", "packages", "instanceType"]))
    text = draw(st.builds(lambda a, b, c: a + b + c, PRINTABLE, NASTY, PRINTABLE))
    service[key] = {
        "command": "/opt/app/bin/run " + text,
        "healthCheckPath": "/" + text,
        "packages": [text],
        "instanceType": "t3." + text,
    }[key]
    config: dict[str, Any] = {"services": {"web": service}, "adminCidrs": ["203.0.113.0/24"]}
    if draw(st.booleans()):
        config["datacenter"] = "dc" + text
    return config


@FAST
@given(config=one_hostile_value())
def test_one_hostile_value_in_a_good_config_is_refused_or_rendered_safely(config: dict[str, Any]) -> None:
    for recipe in recipes(config) or []:
        check_rendered(recipe)


@st.composite
def accepted_apps(draw: st.DrawFn) -> dict[str, Any]:
    """Configs the spec accepts, with the most hostile values it lets through."""
    printable = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=60)
    command = draw(st.builds(lambda a: "/opt/billing/bin/server " + a, printable).filter(lambda c: c.isprintable()))
    path = draw(st.from_regex(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,40}", fullmatch=True))
    return {
        "services": {
            "billing": {
                "port": 8080,
                "command": command.rstrip("\\"),
                "healthCheckPath": path.replace("${", "").replace("%{", ""),
                "packages": draw(st.lists(st.sampled_from(["on", "null", "0xffff", "curl=7.88*"]), max_size=3)),
            }
        },
        "adminCidrs": ["203.0.113.0/24"],
    }


@SLOW
@given(config=accepted_apps())
def test_accepted_hostile_values_pass_cloud_init_and_systemd(config: dict[str, Any], tmp_path_factory: Any) -> None:
    cloud_init = tool("cloud-init")
    (recipe,) = recipes(config) or []
    text = check_rendered(recipe)
    tmp = Path(tmp_path_factory.mktemp("fuzz"))
    (tmp / "user-data.yaml").write_text(text)
    schema = subprocess.run(
        [cloud_init, "schema", "--config-file", str(tmp / "user-data.yaml")], capture_output=True, text=True
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr
    files = {f.path: f.content for f in vm_files(recipe)}
    root = fake_root(tmp, files)
    # mesh-app.service requires the metadata guard: verify reads both.
    assert systemd_verify(root, ["mesh-app.service"]) == []


def test_the_unit_check_sees_an_injected_line() -> None:
    """The guard removed: a command with \\r... written raw would add a setting of its own."""
    unit = "[Service]\nExecStart=/opt/app\r\nExecStartPre=+/bin/sh -c id\n"
    assert "ExecStartPre" in unit_settings(unit)
    assert not set(unit_settings(unit)) <= UNIT_KEYS


def test_project_prefix_is_not_part_of_keys() -> None:
    assert not PROJECT.startswith("services")
