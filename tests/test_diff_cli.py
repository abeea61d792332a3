"""`consul-tproxy-vms-render diff`: what a config change does on the next `up`, and an exit status to gate on.

The command runs the lifecycle simulator (components/lifecycle.py, judged in tests/test_day_two.py)
over two stack files; these tests check what it prints and how it exits.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import render
from components.spec import PROJECT
from tests.mocks import ROOT

DEMO_FILE = ROOT / "Pulumi.dev.yaml"
SERVERS = ("consul-server-0-instance",)
VMS = ("api-instance", "gateway-instance", "web-instance")
LINE = re.compile(r"^  wave (\d+) +(\S+)  (\S+)(.*)$")


def demo_doc() -> dict[str, Any]:
    return yaml.safe_load(DEMO_FILE.read_text())


def changed_demo(tmp_path: Path, change: Callable[[dict[str, Any]], None], name: str = "Pulumi.dev.yaml") -> Path:
    """A copy of the demo's stack file with `change` applied to its config (keys without the prefix)."""
    doc = demo_doc()
    prefix = f"{PROJECT}:"
    config = {k.removeprefix(prefix): v for k, v in doc["config"].items() if k.startswith(prefix)}
    change(config)
    doc["config"] = {k: v for k, v in doc["config"].items() if not k.startswith(prefix)}
    doc["config"].update({prefix + k: v for k, v in config.items()})
    (tmp_path / "after").mkdir(exist_ok=True)
    path = tmp_path / "after" / name
    path.write_text(yaml.safe_dump(doc))
    return path


def diff(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[str], str]:
    status = render.main(["diff", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def groups(lines: list[str]) -> dict[str, list[tuple[int, str, str, str]]]:
    """The printed plan: action -> its lines as (wave, type, name, detail), in printed order."""
    found: dict[str, list[tuple[int, str, str, str]]] = {}
    action = ""
    for line in lines[2:]:
        if line.endswith(":") and not line.startswith(" "):
            action = line[:-1]
            found[action] = []
        elif (match := LINE.match(line)) is not None:
            found[action].append((int(match[1]), match[2], match[3], match[4].strip()))
    return found


def names(rows: list[tuple[int, str, str, str]]) -> list[str]:
    return [name for _, _, name, _ in rows]


def test_the_demo_against_itself_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, _ = diff(capsys, DEMO_FILE, DEMO_FILE)
    assert status == 0
    assert lines == [f"stack dev: {DEMO_FILE} -> {DEMO_FILE}", "no changes"]


def test_adding_a_service_creates_its_resources_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    after = changed_demo(tmp_path, lambda c: c["services"].update(cart={"port": 9093}))
    status, lines, _ = diff(capsys, DEMO_FILE, after)
    assert status == 0
    plan = groups(lines)
    # Besides its own resources, only the mesh gate's expectations change (it now awaits cart too).
    assert set(plan) == {"create", "update"}
    assert names(plan["update"]) == ["mesh-ready"]
    assert all("cart-" in name for name in names(plan["create"]))  # defaults-cart-defaults too
    assert "cart-instance" in names(plan["create"])
    assert lines[1] == f"0 to replace, 1 to update, {len(plan['create'])} to create, 0 to delete"
    # The instance comes after its profile, which comes after its role.
    wave = {name: w for w, _, name, _ in plan["create"]}
    assert wave["cart-role"] < wave["cart-profile"] < wave["cart-instance"]


def test_a_consul_upgrade_replaces_the_servers_then_the_vms(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    after = changed_demo(tmp_path, lambda c: c.update(consulVersion="1.22.2"))
    status, lines, err = diff(capsys, DEMO_FILE, after)
    assert status == render.CHANGES_REFUSED == 3, err
    plan = groups(lines)
    assert "delete" not in plan and "create" not in plan
    replaced = {name: (w, detail) for w, _, name, detail in plan["replace"]}
    assert set(SERVERS + VMS) <= set(replaced)
    assert max(replaced[s][0] for s in SERVERS) < min(replaced[vm][0] for vm in VMS)
    # A server's instance gives its network interface back first; a mesh VM's is made anew first.
    assert replaced["consul-server-0-instance"][1] == "delete-before-replace  (userDataBase64)"
    assert replaced["web-instance"][1] == "create-before-delete  (userDataBase64)"
    # Each group is printed in wave order, and the output is the same on every run.
    for rows in plan.values():
        assert rows == sorted(rows, key=lambda row: (row[0], row[1], row[2]))
    assert diff(capsys, DEMO_FILE, after)[1] == lines


def test_an_intention_flip_updates_in_place(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def deny(config: dict[str, Any]) -> None:
        config["intentions"][0]["action"] = "deny"

    after = changed_demo(tmp_path, deny)
    status, lines, _ = diff(capsys, DEMO_FILE, after)
    assert status == 0
    plan = groups(lines)
    assert set(plan) == {"update"}
    assert "intentions-api" in names(plan["update"])
    # A CI job that wants to hear of every change asks for it.
    assert diff(capsys, DEMO_FILE, after, "--fail-on", "any-change")[0] == 3


def test_removing_a_service_deletes_it_after_what_needs_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    before = changed_demo(tmp_path, lambda c: c["services"].update(cart={"port": 9093}))
    status, lines, _ = diff(capsys, before, DEMO_FILE)
    assert status == 3
    plan = groups(lines)
    wave = {name: w for w, _, name, _ in plan["delete"]}
    assert wave["cart-instance"] < wave["cart-profile"] < wave["cart-role"]
    # Deletes come last: after every other step.
    assert min(wave.values()) > max(w for w, _, _, _ in plan["update"])
    # Gating on replacements alone lets a delete through.
    assert diff(capsys, before, DEMO_FILE, "--fail-on", "replace")[0] == 0
    assert diff(capsys, before, DEMO_FILE, "--fail-on", "replace", "--fail-on", "delete")[0] == 3


def test_an_upgrade_passes_a_gate_on_deletes_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    after = changed_demo(tmp_path, lambda c: c.update(consulVersion="1.22.2"))
    assert diff(capsys, DEMO_FILE, after, "--fail-on", "delete")[0] == 0


def not_a_mapping(path: Path) -> None:
    path.write_text("- a\n- list\n")


def not_yaml(path: Path) -> None:
    path.write_text("config: [unclosed\n")


def not_utf8(path: Path) -> None:
    path.write_bytes(b"config:\n  consul-tproxy-vms:datacenter: \xff\n")


def alias_bomb(path: Path) -> None:
    path.write_text("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nconfig: [*c, *c]\n")


def a_folder(path: Path) -> None:
    path.mkdir()


def missing(path: Path) -> None:
    pass


@pytest.mark.parametrize("make", [not_a_mapping, not_yaml, not_utf8, alias_bomb, a_folder, missing])
@pytest.mark.parametrize("side", ["before", "after"])
def test_an_unusable_file_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Callable[[Path], None], side: str
) -> None:
    bad = tmp_path / "Pulumi.dev.yaml"
    make(bad)
    files = (bad, DEMO_FILE) if side == "before" else (DEMO_FILE, bad)
    status, lines, err = diff(capsys, *files)
    assert status == render.USAGE_ERROR == 2
    assert lines == []
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: "), err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--stack", "my stack"), "error: "),
        ((), "error: neither file is named Pulumi.<stack>.yaml: give --stack"),
    ],
)
def test_a_stack_name_it_cannot_use_is_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    after = tmp_path / "after.yaml"
    after.write_text(DEMO_FILE.read_text())
    status, lines, err = diff(capsys, tmp_path / "before.yaml", after, *args)
    assert status == 2 and lines == []
    assert err.count("\n") == 1 and err.startswith(message), err


def test_an_invalid_config_is_status_1_naming_the_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    after = changed_demo(tmp_path, lambda c: c["services"]["web"].update(port="http"))
    status, lines, err = diff(capsys, DEMO_FILE, after)
    assert status == render.CONFIG_ERROR == 1 and lines == []
    assert "services.web.port" in err and "Traceback" not in err


def test_the_installed_command_gates_a_ci_job(tmp_path: Path) -> None:
    """As a CI job runs it: a process, its status and its help, no traceback."""
    after = changed_demo(tmp_path, lambda c: c.update(consulVersion="1.22.2"))
    result = subprocess.run(
        [sys.executable, "-m", "components.render", "diff", DEMO_FILE, after],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    assert "consul-server-0-instance" in result.stdout and "Traceback" not in result.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "components.render", "diff", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert usage.stdout.startswith("usage: consul-tproxy-vms-render diff ")
    assert "python -m" not in usage.stdout
    top = subprocess.run(
        [sys.executable, "-m", "components.render", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert top.stdout.startswith("usage: consul-tproxy-vms-render ") and "python -m" not in top.stdout
