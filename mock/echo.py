"""A WSGI echo server: it answers with what it received, and who it is.

The JSON answer holds the method, the raw path and query, the headers, the
body, a timestamp and the instance's identity, so balancing is visible from
outside. Query parameters ask it for behaviour (they are echoed too):

  delay=SECONDS     wait before answering (gevent sleep: other requests go on)
  status=CODE       answer with this status
  location=URL      add a Location header (with status=302, a redirect)
  set_cookie=C      add a Set-Cookie line; repeat for several
  gzip=1            gzip the answer, with Content-Encoding: gzip
  echo=raw          answer with the request body itself, byte for byte
  size=BYTES        answer with this many bytes of filler instead of JSON
  chunked=1         stream the answer without Content-Length (chunked)
"""

from __future__ import annotations

import gzip
import json
import os
import time
from datetime import UTC, datetime
from http import HTTPStatus
from urllib.parse import parse_qs

FILLER = b"0123456789abcdef" * 4096  # 64 KiB


class EchoApp:
    def __init__(self, name: str, port: int, status: int = 200):
        self.name = name
        self.port = port
        self.status = status  # this instance's answer unless ?status= says otherwise
        self.served = 0  # requests this worker answered: lets tests see what reached it

    def __call__(self, environ, start_response):
        self.served += 1
        controls = parse_qs(environ.get("QUERY_STRING", ""))
        delay = float(_first(controls, "delay", "0"))
        if delay > 0:
            time.sleep(delay)  # patched by gevent in the worker: yields, never blocks
        body = environ["wsgi.input"].read()

        if _first(controls, "echo") == "raw":
            payload, content_type = body, "application/octet-stream"
        elif "size" in controls:
            payload, content_type = _filler(int(_first(controls, "size"))), "text/plain"
        else:
            payload, content_type = self.describe(environ, body), "application/json"

        headers = [("Content-Type", content_type), ("X-Mock-Instance", self.name)]
        headers += [("Set-Cookie", cookie) for cookie in controls.get("set_cookie", [])]
        if "location" in controls:
            headers.append(("Location", _first(controls, "location")))
        if _first(controls, "gzip") == "1":
            payload = gzip.compress(payload)
            headers.append(("Content-Encoding", "gzip"))

        status = int(_first(controls, "status", str(self.status)))
        start_response(f"{status} {_reason(status)}", headers + _framing(controls, payload))
        if _first(controls, "chunked") == "1":
            return (payload[i : i + 8192] for i in range(0, len(payload), 8192))
        return [payload]

    def describe(self, environ, body: bytes) -> bytes:
        path, _, query = environ.get("RAW_URI", environ.get("PATH_INFO", "/")).partition("?")
        answer = {
            "instance": self.name,
            "port": self.port,
            "pid": os.getpid(),
            "served": self.served,
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "query": query,
            "headers": request_headers(environ),
            "body": body.decode("utf-8", errors="replace"),
            "body_length": len(body),
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        return json.dumps(answer, indent=1).encode() + b"\n"


def request_headers(environ) -> dict[str, str]:
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").title()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").title()] = environ[key]
    return headers


def _first(controls: dict, key: str, default: str = "") -> str:
    return controls.get(key, [default])[0]


def _filler(size: int) -> bytes:
    return (FILLER * (size // len(FILLER) + 1))[:size]


def _framing(controls: dict, payload: bytes) -> list[tuple[str, str]]:
    if _first(controls, "chunked") == "1":
        return []
    return [("Content-Length", str(len(payload)))]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
