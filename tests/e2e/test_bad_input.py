"""Bad input: each gets a 4xx or a clean close, and the workers live on.

Every test runs against both HTTP servers a worker can use: lbproxy's own
(app/http/server.py, the default) and gunicorn's (PROXY_HTTP_SERVER=gunicorn).
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.processes import Proxy, start_mock, write_config


@pytest.fixture(scope="module", params=["lbproxy", "gunicorn"])
def proxy(request, tmp_path_factory):
    mock = start_mock("bad-input")
    services = [
        {"name": "m", "domain": "m.test", "hosts": [{"address": "127.0.0.1", "port": mock.port}]}
    ]
    limits = {
        "max_body_size": 1000,
        "max_header_count": 20,
        "max_header_size": 1024,
        "max_request_line": 1024,
        "client_timeout": 2,
    }
    config = write_config(tmp_path_factory.mktemp("bad"), services, limits=limits)
    server = Proxy(config, workers=2, env={"PROXY_HTTP_SERVER": request.param})
    server.http_server = request.param
    deadline = time.monotonic() + 10
    while len(server.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.workers = sorted(server.children())
    yield server
    server.stop()
    mock.stop()


@pytest.fixture(autouse=True)
def workers_live_on(proxy):
    yield
    assert sorted(proxy.children()) == proxy.workers, "a worker died"
    answer = requests.get(proxy.url, headers={"Host": "m.test"}, timeout=5)
    assert answer.status_code == 200


def exchange(proxy, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes; the answer up to the server's close."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def status(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1."), raw[:80]
    return int(raw.split(b" ", 2)[1])


def test_malformed_request_line(proxy):
    assert status(exchange(proxy, b"GARBAGE\r\n\r\n")) == 400
    assert status(exchange(proxy, b"GET /\x01 HTTP/1.1\r\nHost: m.test\r\n\r\n")) == 400


def test_content_length_with_transfer_encoding_is_refused_and_closed(proxy):
    smuggle = (
        b"POST / HTTP/1.1\r\nHost: m.test\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: m.test\r\n\r\n"
    )
    raw = exchange(proxy, smuggle)
    assert status(raw) == 400
    assert raw.count(b"HTTP/1.1") == 1  # closed: the smuggled request was never read


def test_duplicate_content_length_is_refused(proxy):
    raw = exchange(
        proxy,
        b"POST / HTTP/1.1\r\nHost: m.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    assert status(raw) == 400


@pytest.mark.parametrize("value", [b"a\rb", b"a\nX-Injected: 1", b"a\x00b"])
def test_cr_lf_and_nul_in_header_values_are_refused(proxy, value):
    raw = exchange(proxy, b"GET / HTTP/1.1\r\nHost: m.test\r\nX-A: " + value + b"\r\n\r\n")
    assert status(raw) == 400
    assert b"X-Injected" not in raw


def test_too_many_headers_is_431(proxy):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    raw = exchange(proxy, b"GET / HTTP/1.1\r\nHost: m.test\r\n" + headers + b"\r\n")
    assert status(raw) == 431


def test_an_oversized_header_is_refused(proxy):
    raw = exchange(proxy, b"GET / HTTP/1.1\r\nHost: m.test\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n")
    assert status(raw) in (400, 431)


def test_an_oversized_request_line_is_refused(proxy):
    raw = exchange(proxy, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: m.test\r\n\r\n")
    assert status(raw) in (400, 414)


def test_an_oversized_body_is_413(proxy):
    raw = exchange(
        proxy,
        b"POST / HTTP/1.1\r\nHost: m.test\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
        + b"x" * 5000,
    )
    assert status(raw) == 413
    chunk = b"%x\r\n%s\r\n" % (800, b"y" * 800)
    raw = exchange(
        proxy,
        b"POST / HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\nConnection: close"
        b"\r\n\r\n" + chunk * 3 + b"0\r\n\r\n",
    )
    assert status(raw) == 413


def test_missing_host_is_400(proxy):
    assert status(exchange(proxy, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")) == 400


@pytest.mark.parametrize("host", [b"a b", b"[::1", b"m.test:port", b"user@m.test"])
def test_invalid_host_is_400(proxy, host):
    raw = exchange(proxy, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert status(raw) == 400


def test_absolute_form_to_an_unconfigured_host_is_404(proxy):
    raw = exchange(
        proxy, b"GET http://evil.test/ HTTP/1.1\r\nHost: m.test\r\nConnection: close\r\n\r\n"
    )
    assert status(raw) == 404


def test_a_client_sending_headers_slowly_is_cut_off_and_holds_no_worker(proxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: m.test\r\n")
    started = time.monotonic()
    closed_after = None
    try:
        for i in range(20):  # one header every 0.5 s, never the end of the headers
            fast = time.monotonic()
            answer = requests.get(proxy.url, headers={"Host": "m.test"}, timeout=5)
            assert answer.status_code == 200 and time.monotonic() - fast < 0.5
            sock.sendall(b"X-Slow-%d: 1\r\n" % i)
            time.sleep(0.5)
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - started
    finally:
        sock.close()
    assert closed_after is not None, "the slow client was never cut off"
    assert closed_after < 5  # client_timeout is 2 s


def test_the_worker_class_is_the_one_asked_for(proxy):
    expected = {
        "lbproxy": "app.process.worker.LbproxyServerWorker",
        "gunicorn": "app.process.worker.GunicornServerWorker",
    }
    assert f"Using worker: {expected[proxy.http_server]}" in proxy.output()


def test_an_unsupported_transfer_coding_is_refused(proxy):
    raw = exchange(proxy, b"POST / HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: gzip\r\n\r\nabc")
    assert status(raw) in (400, 501)
    assert raw.count(b"HTTP/1.1") == 1


def test_a_second_host_header_is_refused(proxy):
    raw = exchange(proxy, b"GET / HTTP/1.1\r\nHost: m.test\r\nHost: evil.test\r\n\r\n")
    assert status(raw) == 400


# --- framing audit, client side (findings 6-8, the early 413) -----------------

CHUNKED_POST = b"POST / HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "trailers",
    [
        b"GET /smuggled HTTP/1.1\r\nHost: m.test\r\n\r\n",  # a request taken for a trailer
        b"X: y\n\r\n",  # a bare LF
        b"not a header line\r\n\r\n",
        b"Content-Length: 5\r\n\r\n",  # framing in a trailer
    ],
)
def test_invalid_trailers_are_refused(proxy, trailers):
    raw = exchange(proxy, CHUNKED_POST + b"3\r\nabc\r\n0\r\n" + trailers)
    assert status(raw) == 400
    assert raw.count(b"HTTP/1.1 ") == 1  # nothing served after it: no smuggled request


def test_valid_trailers_are_read_and_dropped(proxy):
    raw = exchange(proxy, CHUNKED_POST + b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n", timeout=3)
    assert status(raw) == 200
    assert b"X-Checksum" not in raw.partition(b"\r\n\r\n")[2]


def test_http_1_0_with_transfer_encoding_is_served_then_closed(proxy):
    raw = exchange(
        proxy,
        b"POST / HTTP/1.0\r\nHost: m.test\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /second HTTP/1.0\r\nHost: m.test\r\nConnection: keep-alive\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.") == 1  # closed after the first response: the second never read
    assert status(raw) in (200, 400)


def test_absolute_form_without_host_is_400(proxy):
    raw = exchange(proxy, b"GET http://m.test/ HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status(raw) == 400


def test_an_over_limit_chunked_upload_cut_mid_chunk_gets_413_at_once(proxy):
    """The limit is 1000 bytes: the upload passes it, then stalls inside a chunk."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(CHUNKED_POST + b"%x\r\n" % 4000 + b"y" * 1500)
        started = time.monotonic()
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if proxy.http_server == "lbproxy":
        assert status(raw) == 413
        assert time.monotonic() - started < 1.5  # not the client timeout (2 s)
        return
    # gunicorn's server holds the connection to read the rest of the body and
    # then resets it, so the client may never see the 413: the proxy's own
    # refusal, in the access log, is what must come at once.
    time.sleep(1.2)  # the access log is flushed once a second
    refusals = [
        json.loads(line)
        for line in proxy.output().splitlines()
        if '"outcome":"body_too_large"' in line and '"request_bytes":1001' in line
    ]
    assert refusals and refusals[-1]["duration_ms"] < 500
