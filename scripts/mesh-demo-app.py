#!/usr/bin/env python3
"""Demo application of a mesh service, installed as /usr/local/bin/mesh-demo-app.

GET /health answers 200. GET /upstreams calls <uri>/health of each upstream in UPSTREAM_URIS (for
example http://api.virtual.consul/health), all at once, and answers 200 when every one of them was
reached, 429 when one was not, with one line per upstream: what it answered or why it failed. Any
other GET calls each upstream URI itself and answers 200 with what they said, or 502 if one of them
failed, so `curl http://web.virtual.consul` shows whether the mesh let web reach api.

/upstreams is what the Consul agent's check `<service>-upstreams` calls (service-<name>.hcl): the
agent's own traffic is not redirected, but this process's calls are, so the probe goes through
Envoy, DNS and the intentions. Consul reports an HTTP check answering 429 as warning, not critical
(hashicorp/consul agent/checks/check.go, CheckHTTP.check), so a caller's health never depends on
its callees'. It calls /health, not /, so a failure further down the chain is not reported here.

Environment: SERVICE_NAME, LISTEN_ADDR (host:port, default 127.0.0.1:9090), UPSTREAM_URIS
(space-separated).
"""

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("SERVICE_NAME", "demo")
HOST, _, PORT = os.environ.get("LISTEN_ADDR", "127.0.0.1:9090").rpartition(":")
UPSTREAMS = os.environ.get("UPSTREAM_URIS", "").split()
TIMEOUT_SECONDS = 5
# Per upstream call of /upstreams, all made at once: well under the check's timeout (5s in
# service.hcl.j2), so a hanging upstream makes a 429 (warning), never a timed-out check (critical).
PROBE_TIMEOUT_SECONDS = 3
# What the mesh answers for a call it refused or could not deliver, rather than the upstream app:
# 403 from the destination's Envoy when an intention denies an HTTP call ("RBAC: access denied"),
# 5xx when Envoy has no healthy endpoint or cannot connect. Any other answer came from the upstream.
NOT_REACHED = (403,)
# Consul keeps at most 4 KB of a check's output (agent/checks/check.go, DefaultBufSize).
MAX_LINE = 300


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
    code = result["code"]
    return code is not None and code < 500 and code not in NOT_REACHED


def probe_line(result: dict) -> str:
    if result["code"] is None:
        seen = result["error"]
    else:
        body = result["body"] if isinstance(result["body"], str) else json.dumps(result["body"])
        seen = f"HTTP {result['code']} {body.strip()}"
    line = f"{'ok' if reached(result) else 'FAIL'} {result['uri']}: {' '.join(seen.split())}"
    return line[:MAX_LINE]


def probe() -> tuple[int, str]:
    """Call every upstream's /health at once: 200 if each was reached, else 429; one line each."""
    if not UPSTREAMS:
        return 200, "no upstreams\n"
    uris = [uri.rstrip("/") + "/health" for uri in UPSTREAMS]
    with ThreadPoolExecutor(max_workers=len(uris)) as pool:
        results = list(pool.map(lambda uri: call(uri, PROBE_TIMEOUT_SECONDS), uris))
    failed = sum(not reached(r) for r in results)
    head = f"{len(results) - failed} of {len(results)} upstreams reached through the mesh"
    return (429 if failed else 200), "\n".join([head, *(probe_line(r) for r in results)]) + "\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            self.send_json(200, {"name": NAME, "status": "ok"})
            return
        if self.path == "/upstreams":
            self.send_text(*probe())
            return
        calls = [call(uri) for uri in UPSTREAMS]
        code = 200 if all(c["code"] == 200 for c in calls) else 502
        self.send_json(code, {"name": NAME, "upstream_calls": calls})

    def send_json(self, code: int, payload: dict) -> None:
        self.send_body(code, "application/json", json.dumps(payload, indent=2).encode() + b"\n")

    def send_text(self, code: int, text: str) -> None:
        self.send_body(code, "text/plain; charset=utf-8", text.encode())

    def send_body(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer((HOST, int(PORT)), Handler).serve_forever()
