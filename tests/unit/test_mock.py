"""The echo mock, called as a WSGI app."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys

from mock.echo import EchoApp


def call(query="", body=b"", method="POST", **headers):
    environ = {
        "REQUEST_METHOD": method,
        "RAW_URI": "/p%7e" + (f"?{query}" if query else ""),
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        **{"HTTP_" + k.upper(): v for k, v in headers.items()},
    }
    captured = {}

    def start_response(status, response_headers):
        captured.update(status=status, headers=response_headers)

    chunks = list(EchoApp("m1", 9001)(environ, start_response))
    return captured["status"], captured["headers"], b"".join(chunks)


def test_echo_describes_the_request_and_the_instance():
    status, headers, body = call("a=%41", b"hello", X_TRACE="t1")
    answer = json.loads(body)
    assert status == "200 OK"
    assert ("X-Mock-Instance", "m1") in headers
    assert answer["instance"] == "m1" and answer["port"] == 9001
    assert (answer["method"], answer["path"], answer["query"]) == ("POST", "/p%7e", "a=%41")
    assert answer["headers"]["X-Trace"] == "t1"
    assert (answer["body"], answer["body_length"]) == ("hello", 5)
    assert answer["timestamp"].endswith("+00:00")


def test_controls_status_cookies_location_gzip():
    query = "status=302&location=/x&set_cookie=a%3D1&set_cookie=b%3D2&gzip=1"
    status, headers, body = call(query)
    assert status == "302 Found"
    assert [v for k, v in headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert ("Location", "/x") in headers and ("Content-Encoding", "gzip") in headers
    assert json.loads(gzip.decompress(body))["instance"] == "m1"


def test_raw_echo_filler_and_chunked():
    assert call("echo=raw", b"\x00\xffbytes")[2] == b"\x00\xffbytes"
    _, headers, body = call("size=100000&chunked=1")
    assert len(body) == 100000 and not any(k == "Content-Length" for k, _ in headers)


def test_served_counts_requests():
    app = EchoApp("m", 1)
    environ = {"REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO(b""), "QUERY_STRING": ""}
    app(dict(environ), lambda *a: None)
    body = b"".join(app(dict(environ), lambda *a: None))
    assert json.loads(body)["served"] == 2


def test_the_command_line_works_without_docstrings():
    """The mock image runs with PYTHONOPTIMIZE=2, which drops __doc__."""
    done = subprocess.run([sys.executable, "-OO", "-m", "mock", "--help"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Start one mock instance." in done.stdout
