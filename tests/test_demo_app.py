"""The demo app shipped onto VMs, run for real on loopback: web calls api, and reports a failure."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from components.userdata import SCRIPTS, vm_files
from tests.helpers import recipe

APP = SCRIPTS / "mesh-demo-app.py"


@cache
def shipped_app() -> Path:
    """The app as a demo VM gets it (comment lines removed): what these tests run."""
    (text,) = [f.content for f in vm_files(recipe()) if f.path == "/usr/local/bin/mesh-demo-app"]
    path = Path(tempfile.mkdtemp(prefix="mesh-demo-app-")) / "mesh-demo-app"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def demo_app(name: str, upstreams: str = "") -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "SERVICE_NAME": name, "LISTEN_ADDR": f"127.0.0.1:{port}", "UPSTREAM_URIS": upstreams}
    proc = subprocess.Popen([sys.executable, str(shipped_app())], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # bounded wait for the listener
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


HOST = socket.gethostname()


def get(port: int, path: str = "/") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_web_calls_api_and_reports_what_it_said() -> None:
    with demo_app("api") as api, demo_app("web", f"http://127.0.0.1:{api}") as web:
        # Each answer names the VM that served it: a service of many instances shows which one did.
        assert get(web, "/health") == (200, {"name": "web", "host": socket.gethostname(), "status": "ok"})
        code, body = get(web)
        assert code == 200 and body["host"] == socket.gethostname()
        (call,) = body["upstream_calls"]
        assert call["code"] == 200 and call["body"]["name"] == "api"
        assert call["body"]["host"] == socket.gethostname()


def test_a_refused_upstream_is_a_502() -> None:
    dead = free_port()
    with demo_app("web", f"http://127.0.0.1:{dead}") as web:
        code, body = get(web)
        assert code == 502
        assert body["upstream_calls"][0]["code"] is None


def get_text(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_upstream_probe_answers_200_when_every_upstream_answers() -> None:
    with demo_app("api") as api, demo_app("db") as db:
        uris = f"http://127.0.0.1:{api} http://127.0.0.1:{db}/"
        with demo_app("web", uris) as web:
            code, text = get_text(web, "/upstreams")
    assert code == 200
    lines = text.splitlines()
    assert lines[0] == "2 of 2 upstreams reached through the mesh"
    # Each upstream's /health, not its /: a failure further down the chain is not the caller's.
    assert lines[1] == f"ok http://127.0.0.1:{api}/health: HTTP 200 {{'name': 'api', 'host': {HOST!r}, 'status': 'ok'}}"
    assert lines[2] == f"ok http://127.0.0.1:{db}/health: HTTP 200 {{'name': 'db', 'host': {HOST!r}, 'status': 'ok'}}"


def test_the_upstream_probe_answers_429_naming_the_upstream_that_failed() -> None:
    """429 is what Consul's HTTP check records as warning (agent/checks/check.go, CheckHTTP)."""
    dead = free_port()
    with demo_app("api") as api, demo_app("web", f"http://127.0.0.1:{api} http://127.0.0.1:{dead}") as web:
        code, text = get_text(web, "/upstreams")
        assert get(web, "/health")[0] == 200  # its own health is untouched
    assert code == 429
    lines = text.splitlines()
    assert lines[0] == "1 of 2 upstreams reached through the mesh"
    assert lines[1].startswith(f"ok http://127.0.0.1:{api}/health: HTTP 200")
    assert lines[2].startswith(f"FAIL http://127.0.0.1:{dead}/health: ") and "Connection refused" in lines[2]


def test_an_upstream_the_mesh_refuses_is_not_reached() -> None:
    """An HTTP 403 (Envoy's "RBAC: access denied" for a denied intention) or a 5xx is not an answer of the app."""
    path = str(shipped_app())
    spec = importlib.util.spec_from_loader("mesh_demo_app", importlib.machinery.SourceFileLoader("mesh_demo_app", path))
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert not app.reached({"uri": "u", "code": 403, "body": "RBAC: access denied"})
    assert not app.reached({"uri": "u", "code": 503, "body": "no healthy upstream"})
    assert not app.reached({"uri": "u", "code": None, "error": "timed out"})
    assert app.reached({"uri": "u", "code": 404, "body": "not found"})  # the upstream app answered
    assert (
        app.probe_line({"uri": "u", "code": 403, "body": "RBAC: access denied"})
        == "FAIL u: HTTP 403 RBAC: access denied"
    )


def test_without_upstreams_the_probe_passes() -> None:
    with demo_app("api") as api:
        assert get_text(api, "/upstreams") == (200, "no upstreams\n")
