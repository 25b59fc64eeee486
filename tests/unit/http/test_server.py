"""lbproxy's HTTP/1.1 server, one connection at a time over a socket pair.

The connection logic runs for real (its socket, its reads and writes); the
gunicorn worker around it is a small stand-in with the attributes it reads.
The real worker runs in the end-to-end and bad-input tests.
"""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from app.http.framing import HeadLimits
from app.http.server import Server

LIMITS = HeadLimits(request_line=200, header_count=10, header_size=200)


class Worker:
    """What the server reads of gunicorn's worker: alive, nr, max_requests."""

    def __init__(self, max_requests: int = 10**9):
        self.alive = True
        self.nr = 0
        self.max_requests = max_requests


def echo(environ, start_response):
    """The request as the app saw it, as JSON with a Content-Length."""
    body = environ["wsgi.input"].read()
    seen = {key: value for key, value in environ.items() if isinstance(value, str)}
    seen["body"] = body.decode("latin-1")
    payload = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Length", str(len(payload)))])
    return [payload]


def exchange(app, data: bytes, worker=None, timeout=2.0, shut=True) -> bytes:
    """Serve one connection that sends ``data``; what came back up to the close."""
    ours, theirs = socket.socketpair()
    environ = {"SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SCRIPT_NAME": ""}
    server = Server(app, environ, LIMITS, timeout, worker or Worker())
    thread = threading.Thread(target=server.serve, args=(ours, ("127.0.0.1", 4321)))
    thread.start()
    theirs.settimeout(5)
    theirs.sendall(data)
    if shut:
        theirs.shutdown(socket.SHUT_WR)
    chunks = []
    while chunk := theirs.recv(65536):
        chunks.append(chunk)
    thread.join(5)
    theirs.close()
    assert not thread.is_alive()
    return b"".join(chunks)


def responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split Content-Length-framed responses: (status line, headers, body)."""
    found = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        length = int(headers.get("Content-Length", len(raw)))
        found.append((status, headers, raw[:length]))
        raw = raw[length:]
    return found


def test_pipelined_requests_on_one_connection_keep_their_bytes():
    raw = exchange(
        echo,
        b"\r\nGET /a%7eb%2fc?q=%41 HTTP/1.1\r\nHost: web.test\r\nX-A: 1\r\nx-a: 2\r\n"
        b"X_Under: dropped\r\n\r\n"
        b"POST /p HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n"
        b"Content-Type: t/x\r\n\r\nhello",
    )
    (status1, headers1, body1), (status2, _, body2) = responses(raw)
    assert status1 == status2 == "HTTP/1.1 200 OK"
    assert headers1["Server"] == "lbproxy" and "Date" in headers1
    assert "Connection" not in headers1  # HTTP/1.1 keep-alive needs no header
    first, second = json.loads(body1), json.loads(body2)
    assert first["RAW_URI"] == "/a%7eb%2fc?q=%41"
    assert (first["PATH_INFO"], first["QUERY_STRING"]) == ("/a~b/c", "q=%41")
    assert (first["HTTP_HOST"], first["HTTP_X_A"]) == ("web.test", "1,2")
    assert "HTTP_X_UNDER" not in first  # as gunicorn and nginx: underscores are dropped
    assert (first["REMOTE_ADDR"], first["SERVER_PROTOCOL"]) == ("127.0.0.1", "HTTP/1.1")
    assert (second["REQUEST_METHOD"], second["body"]) == ("POST", "hello")
    assert (second["CONTENT_LENGTH"], second["CONTENT_TYPE"]) == ("5", "t/x")


def test_an_absolute_form_target_gives_its_path():
    raw = exchange(echo, b"GET http://web.test/x%20y?z HTTP/1.1\r\nHost: web.test\r\n\r\n")
    seen = json.loads(responses(raw)[0][2])
    assert (seen["RAW_URI"], seen["PATH_INFO"]) == ("http://web.test/x%20y?z", "/x y")


def test_a_chunked_body_is_read_de_chunked_and_the_connection_goes_on():
    raw = exchange(
        echo,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    (_, _, first), (_, _, second) = responses(raw)
    assert json.loads(first)["body"] == "hello world"
    assert json.loads(second)["RAW_URI"] == "/next"


@pytest.mark.parametrize(
    "body", [b"5\r\nhello\r\n", b"5\r\nhelloXX0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n"]
)
def test_a_broken_chunked_body_reaches_the_app_as_an_error_and_ends_the_connection(body):
    errors = []

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read()
        except Exception as error:  # the app decides what the client gets
            errors.append(error)
        start_response("400 Bad Request", [("Content-Length", "0")])
        return [b""]

    raw = exchange(
        app,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body,
    )
    assert len(errors) == 1
    assert raw.startswith(b"HTTP/1.1 400") and b"Connection: close" in raw


def test_100_continue_is_sent_only_when_the_app_reads_the_body():
    raw = exchange(
        echo, b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    )
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")

    def refuse(environ, start_response):
        start_response("413 Content Too Large", [("Content-Length", "0")])
        return []

    raw = exchange(
        refuse, b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert raw.startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in raw
    # The unread body would be read as the next request: the connection ends.
    assert b"Connection: close\r\n" in raw


def streaming(status: str, parts: list[bytes], headers=()):
    def app(environ, start_response):
        start_response(status, list(headers))
        yield from parts

    return app


def test_a_body_without_length_is_chunked_for_http_1_1_and_ends_at_close_for_1_0():
    raw = exchange(streaming("200 OK", [b"ab", b"", b"cde"]), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.endswith(b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
    raw = exchange(streaming("200 OK", [b"ab", b"cde"]), b"GET / HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in raw
    assert raw.endswith(b"\r\n\r\nabcde")


def test_http_1_0_keep_alive_is_answered_in_kind():
    raw = exchange(echo, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
    answers = responses(raw)
    assert len(answers) == 2
    assert all(headers["Connection"] == "keep-alive" for _, headers, _ in answers)


def test_bodyless_responses_send_no_body_and_an_empty_one_says_so():
    app = streaming("200 OK", [b"ignored"], [("Content-Length", "7")])
    raw = exchange(app, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.endswith(b"Content-Length: 7\r\n\r\n")
    raw = exchange(streaming("204 No Content", [b"ignored"]), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.endswith(b"\r\n\r\n") and b"chunked" not in raw
    raw = exchange(streaming("200 OK", []), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.endswith(b"Content-Length: 0\r\n\r\n")


def test_a_body_longer_or_shorter_than_announced_closes_the_connection():
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2
    raw = exchange(streaming("200 OK", [b"abc", b"def"], [("Content-Length", "4")]), request)
    assert raw.endswith(b"\r\n\r\nabcd") and raw.count(b"HTTP/1.1 200") == 1
    raw = exchange(streaming("200 OK", [b"ab"], [("Content-Length", "4")]), request)
    assert raw.endswith(b"\r\n\r\nab") and raw.count(b"HTTP/1.1 200") == 1
    # The length is found whatever the name's case, among other fields.
    headers = [("X-A", "1"), ("content-LENGTH", "3"), ("X-B", "2")]
    raw = exchange(streaming("200 OK", [b"abcdef"], headers), request)
    assert raw.endswith(b"\r\n\r\nabc") and raw.count(b"HTTP/1.1 200") == 1


def test_the_server_decides_the_framing_headers():
    headers = [("Connection", "close"), ("Transfer-Encoding", "gzip"), ("Keep-Alive", "x")]
    raw = exchange(streaming("200 OK", [b"x"], headers), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b"gzip" not in raw and b"Keep-Alive" not in raw
    assert b"Transfer-Encoding: chunked" in raw


def test_an_app_error_before_the_response_is_a_500_and_after_it_a_cut():
    def broken(environ, start_response):
        raise RuntimeError("boom")

    raw = exchange(broken, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2)
    assert raw.startswith(b"HTTP/1.1 500") and raw.count(b"HTTP/1.1") == 1
    assert b"boom" not in raw  # no traceback or message reaches the client

    def breaks_midway(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])
        yield b"12345"
        raise OSError("upstream reset")

    raw = exchange(breaks_midway, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2)
    assert raw.endswith(b"\r\n\r\n12345") and raw.count(b"HTTP/1.1") == 1


def test_a_header_with_cr_or_lf_from_the_app_never_reaches_the_wire():
    app = streaming("200 OK", [b"x"], [("X-A", "a\r\nSet-Cookie: evil=1")])
    raw = exchange(app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500") and b"evil" not in raw


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nX-A : b\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 300 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (b"GET / HTTP/3.0\r\n\r\n", b"505"),
    ],
)
def test_a_refused_request_gets_its_status_and_a_closed_connection(request_bytes, status):
    worker = Worker()
    raw = exchange(echo, request_bytes + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", worker)
    assert raw.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close\r\n" in raw and raw.count(b"HTTP/1.1 ") == 1
    assert worker.nr == 0  # the app never saw it


def test_an_over_long_head_is_refused_before_it_has_all_arrived():
    # No end of head ever comes: the limits alone end it.
    raw = exchange(echo, b"GET /" + b"a" * 1000, shut=False)
    assert raw.startswith(b"HTTP/1.1 414")
    raw = exchange(echo, b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 1000, shut=False)
    assert raw.startswith(b"HTTP/1.1 431")


def test_an_idle_or_slow_client_is_closed_at_the_timeout():
    raw = exchange(echo, b"GET / HTTP/1.1\r\nHost: h\r\n", timeout=0.3, shut=False)
    assert raw == b""


def test_a_stopping_worker_closes_after_the_request_in_hand():
    worker = Worker(max_requests=2)
    raw = exchange(echo, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 3, worker)
    first, second = responses(raw)
    assert "Connection" not in first[1] and second[1]["Connection"] == "close"
    assert worker.alive is False and worker.nr == 2


def test_each_response_is_closed_once_after_its_last_byte_was_sent():
    """The app ends (counts and logs) a request in close(): app/observe/end.py."""
    events = []

    class Body:
        def __iter__(self):
            for part in (b"abc", b"de"):
                events.append(part)
                yield part

        def close(self):
            events.append("close")

    def app(environ, start_response):
        start_response("201 Created", [])
        return Body()

    raw = exchange(app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2)
    assert raw.count(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") == 2
    assert events == [b"abc", b"de", "close"] * 2


def test_a_body_cut_short_by_the_client_is_an_error_for_the_app():
    errors = []

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read(10)
        except Exception as error:
            errors.append(type(error).__name__)
        start_response("400 Bad Request", [("Content-Length", "0")])
        return []

    exchange(app, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    assert errors == ["IncompleteMessage"]


def test_wsgi_input_reads_lines_too():
    lines = []

    def app(environ, start_response):
        lines.extend(environ["wsgi.input"])
        start_response("200 OK", [("Content-Length", "0")])
        return []

    exchange(app, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\nab\ncd\nef")
    assert lines == [b"ab\n", b"cd\n", b"ef"]


def test_a_failing_close_ends_only_the_connection():
    class Failing:
        def __iter__(self):
            return iter([b"ok"])

        def close(self):
            raise RuntimeError("close failed")

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return Failing()

    worker = Worker()
    raw = exchange(app, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2, worker)
    assert raw.endswith(b"\r\n\r\nok") and raw.count(b"HTTP/1.1 200") == 1
    assert worker.alive  # the worker goes on


def test_a_refused_request_is_reported_to_the_app_with_the_bytes_sent():
    reported = []

    def app(environ, start_response):  # never called: the request is refused first
        raise AssertionError

    app.refused_by_server = lambda environ, status, sent: reported.append(
        (environ["REMOTE_ADDR"], status, sent)
    )
    worker = Worker()
    raw = exchange(app, b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 300 + b"\r\n\r\n", worker)
    assert raw.startswith(b"HTTP/1.1 431")
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert reported == [("127.0.0.1", 431, len(body))] and body.startswith(b"431")
    assert exchange(app, b"", worker) == b"" and len(reported) == 1  # a silent close is not


def passing(headers, parts: list[bytes]):
    """An app that hands the server ``headers`` themselves, not a copy."""

    def app(environ, start_response):
        start_response("200 OK", headers)
        return parts

    return app


def rendered(head_text: str, request_id: str = "id-1"):
    """The headers a proxied response hands the server (app/upstream/response.py)."""
    from app.http.framing import parse_response_head
    from app.upstream.response import client_headers

    return client_headers(parse_response_head(head_text, "GET"), request_id)


UPSTREAM_HEAD = (
    "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    'Connection: keep-alive\r\nETag: "e1"\r\nX-Spaced:   two  words  '
)


def test_a_proxied_response_s_lines_are_written_as_the_upstream_sent_them():
    from app.http.framing import RenderedFields

    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 2
    headers = rendered(UPSTREAM_HEAD)
    assert type(headers) is RenderedFields and headers.intact()
    raw = exchange(passing(headers, [b"abc"]), request)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[3:]  # after the status line, Server and Date
    # The upstream's own lines (its spacing kept), without what the proxy
    # decides (Connection) or writes itself (Server), then the proxy's.
    assert lines == [
        "Content-Type: text/plain",
        'ETag: "e1"',
        "X-Spaced:   two  words  ",
        "Content-Length: 3",
        "X-Request-Id: id-1",
    ]
    assert body.startswith(b"abcHTTP/1.1 200") and raw.count(b"HTTP/1.1 200") == 2  # kept alive
    # The same fields as a plain list make the same head, spacing aside.
    plain = exchange(passing(list(headers), [b"abc"]), request)
    plain = plain.replace(b"X-Spaced: two  words", b"X-Spaced:   two  words  ")
    assert re.sub(rb"Date: [^\r]*", b"", plain) == re.sub(rb"Date: [^\r]*", b"", raw)


def test_a_proxied_response_s_headers_changed_after_they_were_made_are_written_as_changed():
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    headers = rendered(UPSTREAM_HEAD)
    headers.append(("Set-Cookie", "a=1"))  # as affinity does (app/wsgi.py)
    headers[0] = ("Content-Type", "text/html")
    assert not headers.intact()
    raw = exchange(passing(headers, [b"abc"]), request)
    assert b"Set-Cookie: a=1\r\n" in raw and b"Content-Type: text/html\r\n" in raw
    assert b"text/plain" not in raw and b"X-Spaced: two  words\r\n" in raw
    headers = rendered(UPSTREAM_HEAD)
    headers[:] = [("Transfer-Encoding", "gzip"), *headers]  # a framing field: the server's
    raw = exchange(passing(headers, [b"abc"]), request)
    assert b"gzip" not in raw and raw.endswith(b"\r\n\r\nabc")
