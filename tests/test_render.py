"""The offline render: every VM's files, the plan and the mesh diagram, with no secret in sight."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest
import yaml

from components import render
from components.spec import PROJECT
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
    edges = [line.strip() for line in mmd if "-->" in line or ".-x" in line]
    assert edges == ["web -- allow --> api", "api -- allow --> db", "web -. deny .-x db"]
    assert "  linkStyle 2 stroke:#c62828,color:#c62828" in mmd
    dot = (tmp_path / "mesh.dot").read_text()
    assert dot.count("->") == 3 and dot.count("style=dashed") == 1


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


def test_a_second_render_replaces_the_first_and_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = render.load_stack_config(ROOT / "Pulumi.dev.yaml")
    render.render(config, out, "dev", echo=lambda _: None)
    (out / "stale-vm").mkdir()
    render.render(config, out, "dev", echo=lambda _: None)
    assert not (out / "stale-vm").exists() and (out / "plan.json").is_file()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_cli("render", "--stack", "dev", "--out", foreign).returncode == 1
    assert (foreign / "notes.txt").read_text() == "mine"


def test_config_and_stack_together_name_the_stack(tmp_path: Path) -> None:
    result = run_cli("render", "--config", ROOT / "Pulumi.dev.yaml", "--stack", "prod", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "# Plan of stack prod" in (tmp_path / "o" / "plan.md").read_text()
