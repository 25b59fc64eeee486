"""No byte of one upstream exchange ever reaches another client.

A raw-socket upstream (tests/scripted.py) sends each broken response of the
framing audit; after each one, 20 fresh clients must each get their own
response, told apart by the sequence number in its body. The proxy has one
worker, so every request goes through the same connection pool: a connection
poisoned by one exchange would be handed to the next. Every case runs against
both HTTP servers.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import Proxy, write_config
from tests.scripted import LEAKED, ScriptedUpstream

DOMAIN = "framing.test"
SEQUENCE = itertools.count(1000)  # every client of the property test has its own number


@pytest.fixture(scope="module", params=["lbproxy", "gunicorn"])
def setup(request, tmp_path_factory):
    upstream = ScriptedUpstream()
    services = [
        {
            "name": "framing",
            "domain": DOMAIN,
            "hosts": [{"address": "127.0.0.1", "port": upstream.port}],
            # A drip must be cut by the whole-exchange limit, not by the read timeout.
            "timeout": {"connect": 1, "read": 2, "response": 1.5, "idle": 30},
            "retry": {"attempts": 0},
        }
    ]
    config = write_config(tmp_path_factory.mktemp("framing"), services)
    proxy = Proxy(config, workers=1, env={"PROXY_HTTP_SERVER": request.param})
    yield proxy, upstream
    proxy.stop()
    upstream.stop()


def fetch(proxy, seq: int, behaviour: str = "ok", method: str = "GET") -> tuple[int, dict, bytes]:
    """One request on a fresh client connection: (status, headers, body as framed).

    The body is read as the proxy framed it (Content-Length or chunks); a
    connection that ends early gives what arrived.
    """
    request = f"{method} /seq/{seq}/{behaviour} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request)
        return read_response(sock, method)


def read_response(sock, method="GET") -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"no response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        headers.setdefault(name.lower(), []).append(value)
    status = int(status_line.split()[1])
    if method == "HEAD" or status in (204, 304):
        return status, headers, b""
    if "content-length" in headers:
        length = int(headers["content-length"][0])
        while len(rest) < length and (chunk := _recv(sock)):
            rest += chunk
        return status, headers, rest[:length]
    while chunk := _recv(sock):  # chunked, read to the close or the last chunk
        rest += chunk
        if rest.endswith(b"0\r\n\r\n"):
            break
    return status, headers, _dechunk(rest)


def _recv(sock) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionResetError, TimeoutError):
        return b""


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16) if size_line else 0
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body


def twenty_clients_get_their_own(proxy, first: int = 100) -> None:
    time.sleep(0.3)  # late bytes arrive on the pooled connection meanwhile
    for seq in range(first, first + 20):
        status, _, body = fetch(proxy, seq)
        assert (status, body) == (200, f"seq={seq}".encode()), f"client {seq} got {body!r}"


# (behaviour, method, expected status, expected body for client 0 or None to skip)
CASES = [
    ("ok", "GET", 200, b"seq=0"),
    ("late", "GET", 200, b"seq=0"),
    ("extra", "GET", 200, b"seq=0"),
    ("head-body", "HEAD", 200, b""),
    ("204-body", "GET", 204, b""),
    ("304-body", "GET", 304, b""),
    ("early-hints", "GET", 200, b"seq=0"),
    ("reason-cr", "GET", 502, None),
    ("cl-conflict", "GET", 502, None),
    ("cl-plus", "GET", 502, None),
    ("cl-underscore", "GET", 502, None),
    ("cl-list", "GET", 200, b"seq=0"),
    ("cl-te", "GET", 200, b"seq=0"),
    ("chunk-hex-prefix", "GET", 502, None),
    ("chunk-no-crlf", "GET", 502, None),
    ("bare-lf", "GET", 502, None),
    ("switching", "GET", 502, None),
    ("te-gzip", "GET", 502, None),
]


@pytest.mark.parametrize(("behaviour", "method", "status", "body"), CASES)
def test_after_each_broken_response_every_client_gets_its_own(
    setup, behaviour, method, status, body
):
    proxy, _ = setup
    got_status, _, got_body = fetch(proxy, 0, behaviour, method)
    assert got_status == status
    if body is not None:
        assert got_body == body
    assert LEAKED not in got_body
    if status == 502:
        assert got_body.startswith(b"502 Bad Gateway")  # short, no traceback
    twenty_clients_get_their_own(proxy)


def test_a_planted_response_is_never_served_even_chained(setup):
    """The desync of finding 1 repeated: each request leaves a planted response behind."""
    proxy, _ = setup
    for seq in range(5):
        status, _, body = fetch(proxy, seq, "late")
        assert (status, body) == (200, f"seq={seq}".encode())
        time.sleep(0.2)


def test_the_reason_phrase_cannot_split_the_response(setup):
    proxy, _ = setup
    _, headers, _ = fetch(proxy, 0, "reason-cr")
    assert "set-cookie" not in headers


def test_content_length_with_chunked_reaches_the_client_without_the_length(setup):
    proxy, _ = setup
    _, headers, body = fetch(proxy, 7, "cl-te")
    assert body == b"seq=7"
    assert headers.get("content-length") in (None, ["5"])  # never the upstream's 4


def test_identical_content_lengths_are_collapsed_into_one(setup):
    proxy, _ = setup
    _, headers, _ = fetch(proxy, 7, "cl-list")
    assert headers["content-length"] == ["5"]


@pytest.mark.parametrize("behaviour", ["early-eof", "chunked-eof"])
def test_an_early_end_of_the_body_is_never_a_clean_end(setup, behaviour):
    """The head is sent: the client's connection is cut, never a complete-looking body."""
    proxy, _ = setup
    request = f"GET /seq/0/{behaviour} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := _recv(sock):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200")
    if b"content-length: 100" in raw.lower():
        assert len(raw.partition(b"\r\n\r\n")[2]) < 100
    else:
        assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: the client sees the cut
    twenty_clients_get_their_own(proxy)


def test_a_dripping_upstream_is_cut_by_the_response_timeout(setup):
    proxy, _ = setup
    request = f"GET /seq/0/drip HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := _recv(sock):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200")
    assert len(raw.partition(b"\r\n\r\n")[2]) < 1000
    assert time.monotonic() - started < 4  # timeout.response is 1.5 s; read is 2 s per byte
    twenty_clients_get_their_own(proxy)


def test_framing_errors_are_counted_as_upstream_protocol(setup):
    proxy, _ = setup
    fetch(proxy, 0, "cl-plus")
    time.sleep(1.5)  # the access log is flushed once a second
    lines = [json.loads(line) for line in proxy.output().splitlines() if line.startswith("{")]
    assert any(
        line["outcome"] == "upstream_protocol" and line["status"] == 502 for line in lines
    ), proxy.output()[-2000:]


pieces = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "ok",
                "ok",
                "late",
                "extra",
                "head-body",
                "204-body",
                "cl-plus",
                "chunk-no-crlf",
                "early-hints",
                "reason-cr",
                "early-eof",
            ]
        ),
        st.booleans(),  # concurrently with the next one
    ),
    min_size=2,
    max_size=8,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces)
def test_random_interleavings_never_cross_exchanges(setup, steps):
    """Valid and broken responses mixed, some concurrent: each client gets its own or an error.

    One race is left out, as it is inherent to HTTP/1.1 and to every proxy: a
    complete response that an upstream plants on an idle connection *while*
    the next request is on its way is, as far as anyone can tell, that
    request's response. So a "late" step runs alone, and the next one waits
    until the planted bytes have arrived (then they must be caught, never
    served).
    """
    proxy, _ = setup
    seen: list[tuple[int, str, int, bytes]] = []

    def one(seq: int, behaviour: str) -> None:
        method = "HEAD" if behaviour == "head-body" else "GET"
        try:
            status, _, body = fetch(proxy, seq, behaviour, method)
        except AssertionError:
            status, body = 0, b""
        seen.append((seq, behaviour, status, body))

    threads: list[threading.Thread] = []
    for behaviour, concurrent in steps:
        if behaviour == "late":  # alone: nothing in flight before it, nothing until its bytes came
            for waiting in threads:
                waiting.join(15)
            threads = []
        thread = threading.Thread(target=one, args=(next(SEQUENCE), behaviour))
        thread.start()
        threads.append(thread)
        if behaviour == "late" or not concurrent:
            for waiting in threads:
                waiting.join(15)
            threads = []
        if behaviour == "late":
            time.sleep(0.3)
    for waiting in threads:
        waiting.join(15)
    for seq, _behaviour, status, body in seen:
        found = body[4:].split(b"-")[0] if body.startswith(b"seq=") else b""
        assert found in (b"", str(seq).encode()), f"client {seq} got another's body: {body!r}"
        assert LEAKED not in body
        assert status in (0, 200, 204, 502, 504)
    twenty_clients_get_their_own(proxy, first=next(SEQUENCE) * 100)
