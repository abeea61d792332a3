"""The demo app shipped onto VMs, run for real on loopback: web calls api, and reports a failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from components.userdata import SCRIPTS

APP = SCRIPTS / "mesh-demo-app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def demo_app(name: str, upstreams: str = "") -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "SERVICE_NAME": name, "LISTEN_ADDR": f"127.0.0.1:{port}", "UPSTREAM_URIS": upstreams}
    proc = subprocess.Popen([sys.executable, str(APP)], env=env, stderr=subprocess.DEVNULL)
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


def get(port: int, path: str = "/") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_web_calls_api_and_reports_what_it_said() -> None:
    with demo_app("api") as api, demo_app("web", f"http://127.0.0.1:{api}") as web:
        assert get(web, "/health") == (200, {"name": "web", "status": "ok"})
        code, body = get(web)
        assert code == 200
        (call,) = body["upstream_calls"]
        assert call["code"] == 200 and call["body"]["name"] == "api"


def test_a_refused_upstream_is_a_502() -> None:
    dead = free_port()
    with demo_app("web", f"http://127.0.0.1:{dead}") as web:
        code, body = get(web)
        assert code == 502
        assert body["upstream_calls"][0]["code"] is None
