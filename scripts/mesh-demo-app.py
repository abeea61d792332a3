#!/usr/bin/env python3
# Demo application of a mesh service, installed as /usr/local/bin/mesh-demo-app.
#
# GET /health answers 200. GET /upstreams calls <uri>/health of each upstream in UPSTREAM_URIS (for
# example http://api.virtual.consul/health), all at once, and answers 200 when every one of them was
# reached, 429 when one was not, with one line per upstream: what it answered or why it failed. Any
# other GET calls each upstream URI itself and answers 200 with what they said, or 502 if one of them
# failed, so `curl http://web.virtual.consul` shows whether the mesh let web reach api.
#
# /upstreams is what the Consul agent's check `<service>-upstreams` calls (service-<name>.hcl): the
# agent's own traffic is not redirected, but this process's calls are, so the probe goes through
# Envoy, DNS and the intentions. Consul reports an HTTP check answering 429 as warning, not critical
# (hashicorp/consul agent/checks/check.go, CheckHTTP.check), so a caller's health never depends on
# its callees'. It calls /health, not /, so a failure further down the chain is not reported here.
#
# Every JSON answer names the VM that served it ("host", its hostname: on EC2 the private DNS name,
# ip-10-42-1-7), so calls to a service of many instances show the mesh spreading them.
#
# Environment: SERVICE_NAME, LISTEN_ADDR (host:port, default 127.0.0.1:9090), UPSTREAM_URIS
# (space-separated).

import json
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("SERVICE_NAME", "demo")
HOST_NAME = socket.gethostname()
HOST, _, PORT = os.environ.get("LISTEN_ADDR", "127.0.0.1:9090").rpartition(":")
UPSTREAMS = os.environ.get("UPSTREAM_URIS", "").split()
TIMEOUT_SECONDS = 5
# Per upstream call of /upstreams, all made at once: under the check's timeout (5s, service.hcl.j2),
# so a hanging upstream makes a 429 (warning), never a timed-out check (critical).
PROBE_TIMEOUT_SECONDS = 3


def call(uri: str, timeout: float = TIMEOUT_SECONDS) -> dict:
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        code, raw = err.code, err.read()
    except OSError as err:
        return {"uri": uri, "code": None, "error": str(err)}
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return {"uri": uri, "code": code, "body": body}


def reached(result: dict) -> bool:
    # The mesh's own answers are not the upstream's: 403 from the destination's Envoy when an
    # intention denies an HTTP call ("RBAC: access denied"), 5xx when Envoy has no healthy endpoint
    # or cannot connect. Any other answer came from the upstream application.
    code = result["code"]
    return code is not None and code < 500 and code != 403


def probe_line(result: dict) -> str:
    seen = result.get("error") or f"HTTP {result['code']} {result['body']}"
    # One line each, short: Consul keeps the last 4 KB of a check's output (agent/checks/check.go).
    return f"{'ok' if reached(result) else 'FAIL'} {result['uri']}: {' '.join(str(seen).split())}"[:300]


def probe() -> tuple[int, str]:
    if not UPSTREAMS:
        return 200, "no upstreams\n"
    uris = [uri.rstrip("/") + "/health" for uri in UPSTREAMS]
    with ThreadPoolExecutor(len(uris)) as pool:
        results = list(pool.map(lambda uri: call(uri, PROBE_TIMEOUT_SECONDS), uris))
    failed = sum(not reached(r) for r in results)
    lines = [f"{len(results) - failed} of {len(results)} upstreams reached through the mesh"]
    return (429 if failed else 200), "\n".join(lines + [probe_line(r) for r in results]) + "\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            self.send(200, {"name": NAME, "host": HOST_NAME, "status": "ok"})
        elif self.path == "/upstreams":
            self.send(*probe())
        else:
            calls = [call(uri) for uri in UPSTREAMS]
            code = 200 if all(c["code"] == 200 for c in calls) else 502
            self.send(code, {"name": NAME, "host": HOST_NAME, "upstream_calls": calls})

    def send(self, code: int, payload: dict | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=2) + "\n"
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer((HOST, int(PORT)), Handler).serve_forever()
