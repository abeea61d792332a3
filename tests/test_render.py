"""The offline render: every VM's files, the plan and the mesh diagram, with no secret in sight."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import string
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pulumi
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components import render
from components.spec import PROJECT, stack_name_problem
from components.userdata import decode_user_data, unpack_cloud_config
from tests.conftest import tool
from tests.mocks import CONSUL_TOKEN, GOSSIP_KEY, ROOT


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "components.render", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("render") / "dev"
    result = run_cli("render", "--stack", "dev", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_demo_render_writes_each_vms_files(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = demo
    for vm in ("web", "api"):
        text = (out / vm / "user-data.yaml").read_text()
        assert text.startswith("#cloud-config\n")
        files = unpack_cloud_config(text)
        assert f"/etc/consul.d/service-{vm}.hcl" in files
        # The unpacked tree is exactly what the user data carries, file by file, nothing more.
        on_disk = {
            "/" + str(p.relative_to(out / vm)): p.read_text()
            for p in (out / vm).rglob("*")
            if p.is_file() and not p.name.startswith("user-data")
        }
        assert on_disk == files
    assert stat.S_IMODE((out / "web/usr/local/sbin/consul-redirect-traffic").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "web/etc/envoy/web.env").stat().st_mode) == 0o640


def test_gzip_user_data_is_what_the_yaml_says(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = demo
    b64 = (out / "web/user-data.gz.b64").read_text().strip()
    assert decode_user_data(b64) == (out / "web/user-data.yaml").read_text()


def test_plan_lists_every_resource_with_parent_and_inputs(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = demo
    rows = json.loads((out / "plan.json").read_text())
    by_name = {(r["type"], r["name"]): r for r in rows}
    instance = by_name[("aws:ec2/instance:Instance", "web-instance")]
    assert instance["parent"] == "MeshVm web"
    assert instance["inputs"]["metadataOptions"]["httpTokens"] == "required"
    assert instance["inputs"]["userDataBase64"].startswith("[secret:")
    assert by_name[("consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions", "intentions-api")][
        "inputs"
    ]["sources"] == [{"action": "allow", "description": "web calls api", "name": "web", "type": "consul"}]
    assert by_name[("pulumi:providers:consul", "consul")]["inputs"]["token"] == "[secret]"
    markdown = (out / "plan.md").read_text()
    assert all(f"| {r['name']} |" in markdown for r in rows)
    assert f"stack dev: {len(rows)} resources" in result.stdout


def test_summary_reports_user_data_against_the_limit(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, result = demo
    assert "EC2 limit 16384 bytes" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "bytes gzip" in line]
    # The demo's API gateway is a VM too (components/gateway_vm.py).
    assert [line.split()[0] for line in lines] == ["api", "consul-server-0", "gateway", "web"]
    assert "4  aws:ec2/instance:Instance" in result.stdout


def test_server_files_name_where_their_secrets_come_from_and_hold_none(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = demo
    server = out / "consul-server-0"
    hcl = (server / "etc/consul.d/consul.hcl").read_text()
    assert "bootstrap_expect = 1" in hcl
    # No management token, no gossip key, no private key: SSM at boot and the API bootstrap.
    assert "secret-not-rendered" not in "".join(p.read_text() for p in server.rglob("*") if p.is_file())
    assert not (server / "etc/consul.d/server-key.pem").exists()
    env = (server / "etc/consul.d/secrets.env").read_text()
    assert 'TLS_KEY_PARAMETER="/consul-tproxy-vms/consul-tproxy-vms-dev/consul-server-0/tls-key"' in env
    # "deployer" is never looked up offline: a documentation address stands in for it.
    plan = json.loads((out / "plan.json").read_text())
    https = [r for r in plan if r["name"] == "consul-server-https-0"]
    assert https[0]["inputs"]["cidrIpv4"] == render.DEPLOYER_STAND_IN


def test_diagram_has_one_edge_per_intention(tmp_path: Path) -> None:
    config = render.load_stack_config(ROOT / "Pulumi.dev.yaml")
    config["services"] = {**config["services"], "db": {"port": 5432, "protocol": "tcp"}}
    config["intentions"] = [
        {"source": "web", "destination": "api", "action": "allow"},
        {"source": "api", "destination": "db", "action": "allow"},
        {"source": "web", "destination": "db", "action": "deny"},
    ]
    render.render(config, tmp_path, "dev", echo=lambda _: None)
    mmd = (tmp_path / "mesh.mmd").read_text().splitlines()
    edges = [line.strip() for line in mmd if "-->" in line or ".-x" in line or "-.->" in line]
    # The demo's gateway routes / to web: one more edge, after the intentions.
    assert edges == [
        "web -- allow --> api",
        "api -- allow --> db",
        "web -. deny .-x db",
        'gateway -.->|"route /*"| web',
    ]
    assert "  linkStyle 2 stroke:#c62828,color:#c62828" in mmd
    dot = (tmp_path / "mesh.dot").read_text()
    assert dot.count("->") == 4 and dot.count("style=dashed") == 1


def test_svg_is_drawn_with_graphviz(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tool("dot")
    out, _ = demo
    svg = (out / "mesh.svg").read_text()
    assert "<svg" in svg and ">web<" in svg and ">api<" in svg


def test_no_secret_value_is_ever_written(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.leaky.yaml"
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    # Plain secret values in a stack file (a mistake, but one a user can make) must not leak either.
    doc["config"][f"{PROJECT}:consulHttpAddr"] = "https://10.0.1.10:8501"
    doc["config"][f"{PROJECT}:consulRetryJoin"] = ["10.0.1.10"]
    doc["config"][f"{PROJECT}:consulToken"] = CONSUL_TOKEN
    doc["config"][f"{PROJECT}:consulGossipKey"] = GOSSIP_KEY
    stack.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = run_cli("render", "--config", stack, "--out", out)
    assert result.returncode == 0, result.stderr
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()) + result.stdout
    assert CONSUL_TOKEN not in written and GOSSIP_KEY not in written
    # Nothing secret is in any VM's files at all, not even a placeholder: the VMs log in at boot.
    assert "secret-not-rendered" not in "".join(
        p.read_text(errors="replace") for p in out.glob("*/**/*") if p.is_file()
    )
    login = (out / "web/etc/consul.d/login.env").read_text()
    assert 'GOSSIP_KEY_PATH="consul-tproxy-vms/consul-tproxy-vms-leaky/gossip-key"' in login


def test_bad_config_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.bad.yaml"
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    doc["config"][f"{PROJECT}:services"]["Api_1"] = {"port": 70000}
    stack.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = run_cli("render", "--config", stack, "--out", out)
    assert result.returncode == 1
    assert 'services.Api_1: "Api_1" is not a valid service name' in result.stderr
    assert not out.exists()


def test_unknown_stack_is_an_error(tmp_path: Path) -> None:
    result = run_cli("render", "--stack", "nosuchstack", "--out", tmp_path / "out")
    assert result.returncode == 2 and "no stack config" in result.stderr


def test_duplicate_keys_and_footguns_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = tmp_path / "Pulumi.dup.yaml"
    stack.write_text(
        "config:\n"
        "  consul-tproxy-vms:services: {web: {port: 9090}}\n"
        "  consul-tproxy-vms:adminCidrs: [203.0.113.0/24]\n"
        "  consul-tproxy-vms:adminCidrs: [0.0.0.0/0]\n"
    )
    assert render.main(["render", "--config", str(stack), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "consul-tproxy-vms:adminCidrs: appears twice in the stack file (line 4)" in err
    assert "adminCidrs: 0.0.0.0/0 opens SSH" in err


def test_plan_rows_give_same_named_resources_of_different_types_their_own_parents() -> None:
    mocks = render.PlanMocks()
    for typ, parent in [
        ("aws:iam/role:Role", "urn:...$t:index:MeshVm::a"),
        ("aws:ec2/eip:Eip", "urn:...$t:index:Other::b"),
    ]:
        mocks.resources.append(pulumi.runtime.MockResourceArgs(typ, "same", {}, None, None, True))
        mocks.parent_of[(typ, "same")] = parent
        mocks.parents["same"] = parent  # by name alone, the last one would win for both
    rows = {row["type"]: row["parent"] for row in render.plan_rows(mocks)}
    assert rows == {"aws:iam/role:Role": "MeshVm a", "aws:ec2/eip:Eip": "Other b"}


def test_outputs_are_written_with_secrets_masked_and_numbers_as_integers(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = demo
    outputs = json.loads((out / "outputs.json").read_text())
    assert outputs["consulManagementToken"] == "[secret]" and outputs["consulGossipKey"] == "[secret]"
    assert outputs["services"]["api"]["port"] == 9091 and isinstance(outputs["services"]["api"]["port"], int)
    plan = json.loads((out / "plan.json").read_text())
    ports = [r["inputs"]["fromPort"] for r in plan if "fromPort" in r["inputs"]]
    assert ports and all(isinstance(p, int) for p in ports)
    markdown = (out / "plan.md").read_text()
    assert "Stand-in values:" in markdown and "ami-0123456789abcdef0" in markdown
    assert "..." not in markdown.split("| type |")[1]  # nothing cut short


def test_the_diagram_has_a_title_a_legend_and_the_url_a_caller_uses(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = demo
    mmd = (out / "mesh.mmd").read_text()
    assert "title: Mesh of stack dev" in mmd and "deny" in mmd.splitlines()[1]
    assert "http://api.virtual.consul" in mmd and ":9091" not in mmd
    assert 'label="Mesh of stack dev' in (out / "mesh.dot").read_text()


def test_a_second_render_replaces_the_first_and_removes_a_vm_no_longer_in_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = render.load_stack_config(ROOT / "Pulumi.dev.yaml")
    bigger = {**config, "services": {**config["services"], "extra": {"port": 7000}}}
    render.render(bigger, out, "dev", echo=lambda _: None)
    assert (out / "extra" / "user-data.yaml").is_file()
    render.render(config, out, "dev", echo=lambda _: None)
    assert not (out / "extra").exists() and (out / "plan.json").is_file()
    # On disk: exactly the files the render lists as its own, and the list.
    listed = json.loads((out / render.MANIFEST).read_text())["files"]
    assert set(tree(out)) == {*listed, render.MANIFEST} | folders_of(listed)


def tree(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under `root`: its kind and content (a link's target), to compare before and after."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for base, dirs, names in os.walk(root):
        for name in dirs + names:
            entry = Path(base) / name
            rel = entry.relative_to(root).as_posix()
            if entry.is_symlink():
                found[rel] = ("link", os.readlink(entry))
            elif entry.is_dir():
                found[rel] = ("dir", b"")
            else:
                found[rel] = ("file", entry.read_bytes())
    return found


def folders_of(paths: Iterable[str]) -> set[str]:
    return {parent.as_posix() for p in paths for parent in Path(p).parents if str(parent) != "."}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A render of the demo, to copy: an earlier render's directory."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    render.render(render.load_stack_config(ROOT / "Pulumi.dev.yaml"), out, "dev", echo=lambda _: None)
    return out


def test_a_folder_holding_a_plan_json_is_refused_and_keeps_every_file(tmp_path: Path) -> None:
    # The worst of the second round: such a folder (here a project holding its stack file) was
    # removed whole, because it held a plan.json.
    home = tmp_path / "my-project"
    home.mkdir()
    (home / "plan.json").write_text("[]\n")
    (home / "Pulumi.mine.yaml").write_text((ROOT / "Pulumi.dev.yaml").read_text())
    before = tree(home)
    result = run_cli("render", "--config", home / "Pulumi.mine.yaml", "--out", home)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: --out {home}: holds Pulumi.mine.yaml and is no render's directory")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert tree(home) == before


@pytest.mark.parametrize(
    ("where", "refused"),
    [
        ("notes.txt", "notes.txt is not the earlier render's"),
        ("web/etc/notes.txt", "web/etc/notes.txt is not the earlier render's"),
        ("web/my-folder/", "web/my-folder/ is not the earlier render's"),
        ("plan.md", "plan.md was changed since the render wrote it"),
        ("web/user-data.yaml", "web/user-data.yaml was changed since the render wrote it"),
        ("mesh.mmd@", "mesh.mmd is a symbolic link"),
        ("web/link@", "web/link is a symbolic link"),
    ],
)
def test_an_earlier_render_with_anything_of_the_users_is_refused_naming_it(
    earlier: Path, tmp_path: Path, where: str, refused: str
) -> None:
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    entry = out / where.rstrip("/@")
    if where.endswith("/"):
        entry.mkdir()
        (entry / "keep.txt").write_text("mine")
    elif where.endswith("@"):
        entry.unlink(missing_ok=True)
        entry.symlink_to(victim)
    else:
        with entry.open("a") as f:
            f.write("mine\n")
    before = tree(out)
    with pytest.raises(render.OutRefused, match=re.escape(refused)):
        render.write_render(out, {"plan.json": render.OutFile("[]")})
    assert tree(out) == before and victim.read_text() == "mine"


@pytest.mark.parametrize(
    "listed",
    [{"../victim.txt": "0" * 64}, {"/tmp/victim.txt": "0" * 64}, {"a/./b": "0"}, {"render-files.json": "0"}, []],
)
def test_a_list_of_files_naming_anything_outside_out_is_refused(earlier: Path, tmp_path: Path, listed: object) -> None:
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    (tmp_path / "victim.txt").write_text("mine")
    (out / render.MANIFEST).write_text(json.dumps({"files": listed}))
    before = tree(tmp_path)
    with pytest.raises(render.OutRefused, match="is not a render's list of files"):
        render.write_render(out, {"plan.json": render.OutFile("[]")})
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["file", "link to an earlier render", "dangling link"])
def test_out_must_be_a_directory_not_a_file_or_a_link(earlier: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("mine")
    elif kind == "dangling link":
        out.symlink_to(tmp_path / "nowhere")
    else:
        out.symlink_to(earlier, target_is_directory=True)
    before, rendered = tree(tmp_path), tree(earlier)
    result = run_cli("render", "--stack", "dev", "--out", out)
    assert result.returncode == 2
    why = "is not a directory" if kind == "file" else "is a symbolic link"
    assert result.stderr == f"error: --out {out}: {why}" + (
        ": give a new path, or an earlier render's directory\n"
        if kind == "file"
        else ": give the directory itself, or a new path\n"
    )
    assert tree(tmp_path) == before and tree(earlier) == rendered


def test_out_under_a_file_is_an_error_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("mine")
    assert render.main(["render", "--stack", "dev", "--out", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path / 'file' / 'out'}: Not a directory") and len(err.splitlines()) == 1


ENTRY_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=20).filter(
    lambda n: n not in (".", "..")
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    folder=st.sampled_from(["", "web", "web/etc", "api/etc/consul.d", "consul-server-0/usr"]),
    name=ENTRY_NAMES,
    kind=st.sampled_from(["file", "dir", "link"]),
)
def test_anything_added_to_an_earlier_render_is_refused_and_nothing_is_deleted(
    earlier: Path, tmp_path_factory: pytest.TempPathFactory, folder: str, name: str, kind: str
) -> None:
    out = tmp_path_factory.mktemp("added") / "out"
    shutil.copytree(earlier, out, symlinks=True)
    entry = out / folder / name
    if entry.exists() or entry.is_symlink():
        return  # one of the render's own names: covered by the changed-file cases above
    entry.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        entry.write_text("mine")
    elif kind == "dir":
        entry.mkdir()
    else:
        entry.symlink_to("/etc/passwd")
    before = tree(out)
    with pytest.raises(render.OutRefused, match=re.escape(entry.relative_to(out).as_posix())):
        render.write_render(out, {"plan.json": render.OutFile("[]")})
    assert tree(out) == before


def test_config_and_stack_together_name_the_stack(tmp_path: Path) -> None:
    result = run_cli("render", "--config", ROOT / "Pulumi.dev.yaml", "--stack", "prod", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "# Plan of stack prod" in (tmp_path / "o" / "plan.md").read_text()


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)),
        "config:",
        "  consul-tproxy-vms:services: *i",
    ]
)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("- config\n- services\n", "is not a stack file: it holds a list, not a map with config:"),
        ("just words\n", "is not a stack file: it holds a str, not a map with config:"),
        ("config: [a, b]\n", "config: is a list, not a map of key: value"),
        (
            "config: {consul-tproxy-vms:services: [\n",
            "is not YAML: line 2, column 1: while parsing a flow node, expected the node content",
        ),
        (
            "config:\n  a: 1\n b: 2\n",
            "is not YAML: line 3, column 2: while parsing a block mapping, expected <block end>",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "is not YAML: line 2, column 1: expected a single document in the stream, but found another document",
        ),
        (b"config:\n  consul-tproxy-vms:datacenter: dc\xff\n", "is not UTF-8 text (byte 0xff at offset 42)"),
        (b"\xff\xfec\x00o\x00", "is not UTF-8 text (byte 0xff at offset 0)"),
        ("config:\n  consul-tproxy-vms:datacenter: !!python/name:os.system x\n", "line 2: has the YAML tag"),
        ("config:\n  consul-tproxy-vms:datacenter: !mine dc1\n", "line 2: has the YAML tag !mine"),
        ("config:\n  consul-tproxy-vms:imageGeneration: !!int 3\n", "line 2: has the YAML tag tag:yaml.org,2002:int"),
        ("a: &a [*a]\nconfig:\n  consul-tproxy-vms:services: *a\n", "line 1: uses the YAML alias *a"),
        (BILLION_LAUGHS, "line 2: uses the YAML alias *a: write the value out in full"),
        ("base: &b {x: 1}\nconfig:\n  <<: *b\n", "line 3: uses the YAML alias *b"),
        ("config:\n  <<: {consul-tproxy-vms:datacenter: dc1}\n", "line 2: uses a YAML merge key (<<)"),
        ("config:\n  ? [a, b]\n  : 1\n", "line 2: has a list or a map as a key"),
        ("config: " + "[" * 5000 + "\n", "line 1: is nested more than 50 levels deep"),
        ("config:\n  x: " + "a" * (1 << 20) + "\n", "is larger than 1048576 bytes"),
        (
            "config:\n  consul-tproxy-vms:consulCaPem:\n    secure: v1:AAAA\n",
            "consul-tproxy-vms:consulCaPem: is encrypted (secure:), which the render cannot decrypt offline",
        ),
        (
            "config:\n  consul-tproxy-vms:services:\n    web: {port: 80, command: {secure: v1:AAAA}}\n",
            "consul-tproxy-vms:services: is encrypted (secure:)",
        ),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else repr(v[:20]),
)
def test_a_stack_file_the_render_cannot_read_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, why: str
) -> None:
    # Through main(): an exception would fail the test, as a traceback would reach the user.
    stack = tmp_path / "Pulumi.mine.yaml"
    stack.write_bytes(content.encode() if isinstance(content, str) else content)
    assert render.main(["render", "--config", str(stack), "--out", str(tmp_path / "out")]) == render.USAGE_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {stack}: {why}"), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_secret_keys_only_count_as_set_and_a_secure_lookalike_is_a_plain_object(tmp_path: Path) -> None:
    # Pulumi reads {secure: <string>} alone as a ciphertext; {secure: 1}, or with another key, is a
    # plain object (pulumi/pulumi sdk/go/common/resource/config/object.go isSecureValue).
    stack = tmp_path / "Pulumi.mine.yaml"
    stack.write_text(
        "config:\n"
        "  consul-tproxy-vms:consulToken: {secure: v1:AAAA}\n"
        "  consul-tproxy-vms:consulGossipKey: plain-but-never-kept\n"
        "  consul-tproxy-vms:services: {web: {port: 80}, api: {secure: 1}, db: {secure: x, port: 5432}}\n"
        "  123: not a key of this project\n"
    )
    config = render.load_stack_config(stack)
    assert config["consulToken"] == config["consulGossipKey"] == {"secure": True}
    assert config["services"] == {"web": {"port": 80}, "api": {"secure": 1}, "db": {"secure": "x", "port": 5432}}
    with pytest.raises(render.MeshSpecError, match=r"services\.api\.secure: 1 is not a known key"):
        render.plan_spec(config)


@pytest.mark.parametrize("stack", ["dév", "two\nlines", "my stack", "org/project/dev", "", "x" * 101, "tab\t"])
def test_a_stack_name_pulumi_cannot_have_is_refused_before_anything_is_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stack: str
) -> None:
    out = tmp_path / "out"
    assert render.main(["render", "--config", str(ROOT / "Pulumi.dev.yaml"), "--stack", stack, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: stack {stack!r}: is not a Pulumi stack name: " + (
        "ASCII letters, digits, '-', '_' and '.', 1 to 100 characters (the stack's own name, without "
        "<organization>/<project>/)\n"
    )
    assert not out.exists()
    with pytest.raises(render.MeshSpecError, match="is not a Pulumi stack name"):
        render.render(render.load_stack_config(ROOT / "Pulumi.dev.yaml"), out, stack, echo=lambda _: None)


def test_a_stack_name_from_the_files_name_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stack = tmp_path / "Pulumi.my stack.yaml"
    stack.write_text((ROOT / "Pulumi.dev.yaml").read_text())
    assert render.main(["render", "--config", str(stack), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.endswith("(from the file's name: give --stack)\n")


PULUMI_STACK_CHARACTERS = set(string.ascii_letters + string.digits + "-_.")


@given(st.text(max_size=110))
def test_stack_names_are_checked_by_pulumis_rule(name: str) -> None:
    # pulumi/pulumi sdk/go/common/tokens/stack_name.go ParseStackName: not empty, at most 100
    # characters, each an ASCII letter or digit, '-', '_' or '.'.
    allowed = 0 < len(name) <= 100 and set(name) <= PULUMI_STACK_CHARACTERS
    assert (stack_name_problem(name) is None) == allowed


@given(st.from_regex(r"[A-Za-z0-9_.-]{1,100}", fullmatch=True))
def test_every_stack_name_pulumi_allows_is_accepted(name: str) -> None:
    assert stack_name_problem(name) is None


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.lists(
        st.sampled_from(
            [
                "config:",
                "  ",
                "consul-tproxy-vms:services:",
                "&a",
                "*a",
                "<<:",
                "!!str",
                "!x",
                "? ",
                "[",
                "]",
                "{",
                "}",
                "- ",
                ": ",
                "secure: v1",
                "web",
                "port: 80",
                "\n",
                "\t",
                "'",
                '"',
                "#",
                "---",
                "...",
                "|",
                ">",
            ]
        ),
        max_size=30,
    ).map("".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=YAML_TEXT)
def test_any_stack_file_is_read_or_refused_naming_it(tmp_path: Path, text: str) -> None:
    stack = tmp_path / "Pulumi.fuzz.yaml"
    stack.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        config = render.load_stack_config(stack)
    except render.StackFileError as err:
        assert str(err).startswith(f"{stack}: ") and "\n" not in str(err)
        return
    assert isinstance(config, dict)
    try:
        render.plan_spec(config, "fuzz")
    except render.MeshSpecError as err:
        assert err.problems


def test_a_failing_graphviz_is_a_warning_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(render.shutil, "which", lambda name: "/bin/false" if name == "dot" else None)
    assert render.main(["render", "--stack", "dev", "--out", str(tmp_path / "out")]) == 0
    assert "warning: Graphviz `dot` failed" in capsys.readouterr().err
    assert (tmp_path / "out" / "mesh.dot").is_file() and not (tmp_path / "out" / "mesh.svg").exists()


def test_the_diagrams_draw_l7_rules_and_splits() -> None:
    from components.render import graphviz, mermaid
    from components.spec import load_spec

    spec = load_spec(
        {
            "adminCidrs": ["203.0.113.0/24"],
            "services": {
                "web": {"port": 9090, "upstreams": ["api"]},
                "api": {
                    "port": 9091,
                    "splits": [{"weight": 90, "service": "api"}, {"weight": 10, "service": "canary"}],
                },
                "canary": {"port": 9091},
            },
            "intentions": [
                {
                    "source": "web",
                    "destination": "api",
                    "permissions": [
                        {"action": "deny", "http": {"pathExact": "/admin"}},
                        {"action": "allow", "http": {"methods": ["GET", "HEAD"]}},
                    ],
                },
                {"source": "web", "destination": "canary", "action": "allow"},
            ],
        }
    )
    rules = "L7: deny * =/admin; allow GET,HEAD /*"
    flow = mermaid(spec, "dev").splitlines()
    assert f'  web -.->|"{rules}"| api' in flow
    assert "  web -- allow --> canary" in flow
    assert '  api -.->|"split 10%"| canary' in flow
    assert "  linkStyle 0,2 stroke:#1565c0,color:#1565c0" in flow
    dot = graphviz(spec, "dev").splitlines()
    assert f'  "web" -> "api" [label="{rules}", color="#1565c0", style=dotted];' in dot
    assert '  "api" -> "canary" [label="split 10%", color="#1565c0", style=dotted];' in dot


def test_the_diagrams_draw_the_gateway_and_its_routes() -> None:
    from components.render import graphviz, mermaid
    from components.spec import load_spec

    spec = load_spec(
        {
            "adminCidrs": ["203.0.113.0/24"],
            "services": {"web": {"port": 9090}},
            "gateway": {"port": 8080, "routes": [{"pathPrefix": "/", "service": "web"}]},
        }
    )
    flow = mermaid(spec, "dev").splitlines()
    assert '  gateway[["gateway<br/>API gateway :8080"]]' in flow
    assert '  gateway -.->|"route /*"| web' in flow
    dot = graphviz(spec, "dev").splitlines()
    assert '  "gateway" -> "web" [label="route /*", color="#1565c0", style=dotted];' in dot
    assert '  "gateway" [label="gateway\\nAPI gateway :8080", shape=cds];' in dot


def stack_in_region(tmp_path: Path, region: object, name: str = "Pulumi.dev.yaml") -> Path:
    """The demo stack file with `aws:region` set to `region` (or removed, for None)."""
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    doc["config"].pop("aws:region")
    if region is not None:
        doc["config"]["aws:region"] = region
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_render_runs_in_the_stack_files_region(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert render.main(["render", "--config", str(stack_in_region(tmp_path, "eu-west-2")), "--out", str(out)]) == 0
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    # Every region invoke, zone and ARN is the stack's region: the default is named once, as the default.
    assert written.count("us-east-1") == 1 and "aws:region, else us-east-1;" in written
    plan_md = (out / "plan.md").read_text()
    assert "- account and region: 123456789012 in eu-west-2 (the stack's aws:region" in plan_md
    assert "- availability zones: eu-west-2a, eu-west-2b, eu-west-2c (" in plan_md
    assert "arn:aws:ssm:eu-west-2:123456789012:parameter/" in written
    # The server's boot asks SSM and STS of the stack's region.
    assert 'AWS_REGION="eu-west-2"' in (out / "consul-server-0/etc/consul.d/secrets.env").read_text()


def test_without_aws_region_the_render_stands_in_us_east_1(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert render.main(["render", "--config", str(stack_in_region(tmp_path, None)), "--out", str(out)]) == 0
    assert "- availability zones: us-east-1a, us-east-1b, us-east-1c (" in (out / "plan.md").read_text()


@pytest.mark.parametrize(
    ("region", "why"),
    [
        ("US-EAST-1", "is not an AWS region name"),
        ("us-east", "is not an AWS region name"),
        ("useast1", "is not an AWS region name"),
        ("us-east-1\nx", "is not an AWS region name"),
        ("", "is not an AWS region name"),
        (1, "is not an AWS region name"),
        (["us-east-1"], "is not an AWS region name"),
        # A region of another partition: refused as `pulumi up` refuses it (program.partition_problems).
        ("cn-north-1", "the 'aws-cn' partition is not supported"),
        ("us-gov-west-1", "the 'aws-us-gov' partition is not supported"),
    ],
)
def test_a_bad_region_is_refused_naming_the_key_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], region: object, why: str
) -> None:
    out = tmp_path / "out"
    status = render.main(["render", "--config", str(stack_in_region(tmp_path, region)), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == render.CONFIG_ERROR, err
    assert err.startswith("error: ") and "aws:region: " in err and why in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-2", "ap-southeast-5", "il-central-1", "mx-central-1"])
def test_every_region_of_the_aws_partition_is_accepted(region: str) -> None:
    assert render.check_region(region) == region
    mocks = render.PlanMocks(region)
    assert mocks.zones_of() == [f"{region}a", f"{region}b", f"{region}c"]
    # Every stand-in ARN that names a region names this one (the demo has no group: asked here).
    for typ in ("aws:ec2/launchTemplate:LaunchTemplate", "aws:autoscaling/group:Group", "aws:kms/key:Key"):
        _, state = mocks.new_resource(pulumi.runtime.MockResourceArgs(typ, "api", {}))
        assert state["arn"].startswith("arn:aws:") and f":{region}:123456789012:" in state["arn"], state["arn"]


def test_diff_runs_in_the_stack_files_region_and_refuses_a_change_of_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stack_in_region(tmp_path, "eu-west-2", "before.yaml")
    assert render.main(["diff", "--stack", "dev", str(before), str(before)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no changes"
    after = stack_in_region(tmp_path, "eu-west-1", "after.yaml")
    assert render.main(["diff", "--stack", "dev", str(before), str(after)]) == render.CONFIG_ERROR
    assert "aws:region: changes from 'eu-west-2' to 'eu-west-1'" in capsys.readouterr().err


def test_plan_md_opens_with_an_overview_per_service(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = demo
    text = (out / "plan.md").read_text()
    # The overview comes before the stand-ins and the resource table.
    assert text.index("## Overview") < text.index("## Resources") < text.index("| type | name | parent | inputs |")
    assert "| web | 1 (t3.small) | 9090 | http | api | gateway: allow | - | /* |" in text
    assert "| api | 1 (t3.small) | 9091 | http | - | web: allow | - | - |" in text
    assert "Consul servers: 1 (t3.small), created by this stack, datacenter dc1, Consul " in text


def test_the_overview_names_groups_l7_rules_denies_splits_routes_and_an_existing_cluster() -> None:
    from components.spec import load_spec

    spec = load_spec(
        {
            "adminCidrs": ["203.0.113.0/24"],
            "consulHttpAddr": "https://consul.example.com:8501",
            "consulRetryJoin": ["10.0.0.5"],
            "consulToken": "placeholder",
            "consulCaPem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "services": {
                "web": {"port": 9090, "upstreams": ["api"], "instances": 3, "instanceType": "t3.micro"},
                "api": {
                    "port": 9091,
                    "protocol": "http",
                    "splits": [{"weight": 90, "service": "api"}, {"weight": 10, "service": "canary"}],
                },
                "canary": {"port": 9091},
            },
            "intentions": [
                {
                    "source": "web",
                    "destination": "api",
                    "permissions": [
                        {"action": "deny", "http": {"pathExact": "/admin"}},
                        {"action": "allow", "http": {"methods": ["GET", "HEAD"]}},
                    ],
                },
                {"source": "web", "destination": "canary", "action": "allow"},
                {"source": "canary", "destination": "web", "action": "deny"},
            ],
            "gateway": {
                "port": 8080,
                "routes": [{"pathPrefix": "/", "service": "web"}, {"pathExact": "/status", "service": "api"}],
            },
        }
    )
    lines = render.overview(spec)
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line.startswith("| ")}
    assert (
        rows["web"]
        == "| web | 3 in an Auto Scaling group (t3.micro) | 9090 | http | api | canary: deny; gateway: allow | - | /* |"
    )
    assert rows["api"] == (
        "| api | 1 (t3.small) | 9091 | http | - | web: L7: deny * =/admin; allow GET,HEAD /*; gateway: allow "
        "| api 90%, canary 10% | =/status |"
    )
    assert rows["canary"] == "| canary | 1 (t3.small) | 9091 | http | - | web: allow | - | - |"
    assert "API gateway: gateway, port 8080, open to 203.0.113.0/24." in lines
    assert "Consul servers: an existing cluster at https://consul.example.com:8501; none created." in lines
    # The same spec gives the same lines: the overview is a function of the config alone.
    assert render.overview(spec) == lines


@pytest.mark.parametrize("command", [[], ["render"], ["diff"]])
def test_the_installed_commands_help_names_itself_and_never_python_m(command: list[str]) -> None:
    # The console script pip installs beside this interpreter (pyproject.toml [project.scripts]).
    script = Path(sys.executable).parent / "consul-tproxy-vms-render"
    wide = {**os.environ, "COLUMNS": "400"}  # argparse wraps help at the terminal's width, even inside a name
    result = subprocess.run([script, *command, "--help"], capture_output=True, text=True, timeout=120, env=wide)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {' '.join(['consul-tproxy-vms-render', *command])} ")
    assert "python -m" not in result.stdout and "components.render" not in result.stdout
    if command == ["render"]:
        assert "the stack file's aws:region (us-east-1 when unset)" in result.stdout


def test_no_file_but_the_readme_sends_users_to_python_m_components_render() -> None:
    # The README is the lead's to rewrite; tests may run the module, as they run the checkout.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = [
        path
        for path in tracked
        if path != "README.md"
        and not path.startswith("tests/")
        and (ROOT / path).is_file()
        and "python -m components.render" in (ROOT / path).read_text(errors="replace")
    ]
    assert offenders == []
