#!/usr/bin/env python3
"""Demo application of a mesh service, installed as /usr/local/bin/mesh-demo-app.

GET /health answers 200. Any other GET calls each upstream in UPSTREAM_URIS (for example
http://api.virtual.consul) and answers 200 with what they said, or 502 if one of them failed,
so `curl http://web.virtual.consul` shows whether the mesh let web reach api.

Environment: SERVICE_NAME, LISTEN_ADDR (host:port, default 127.0.0.1:9090), UPSTREAM_URIS
(space-separated).
"""

import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("SERVICE_NAME", "demo")
HOST, _, PORT = os.environ.get("LISTEN_ADDR", "127.0.0.1:9090").rpartition(":")
UPSTREAMS = os.environ.get("UPSTREAM_URIS", "").split()
TIMEOUT_SECONDS = 5


def call(uri: str) -> dict:
    try:
        with urllib.request.urlopen(uri, timeout=TIMEOUT_SECONDS) as resp:
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


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            self.send_json(200, {"name": NAME, "status": "ok"})
            return
        calls = [call(uri) for uri in UPSTREAMS]
        code = 200 if all(c["code"] == 200 for c in calls) else 502
        self.send_json(code, {"name": NAME, "upstream_calls": calls})

    def send_json(self, code: int, payload: dict) -> None:
        body = json.dumps(payload, indent=2).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer((HOST, int(PORT)), Handler).serve_forever()
