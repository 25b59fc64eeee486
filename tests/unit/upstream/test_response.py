"""Reading the upstream's response: the strict head reader, and streaming back."""

from __future__ import annotations

import pytest

from app.config import Host, Timeout
from app.errors import UpstreamFramingError
from app.http.framing import ProtocolError, parse_response_head
from app.http.request import ProxyRequest
from app.upstream.forward import Forwarder
from app.upstream.pool import Pools
from app.upstream.response import client_headers
from tests.processes import RawServer


def head(*lines: str, method: str = "GET"):
    return parse_response_head("\r\n".join(lines), method)


def test_header_lines_keep_order_repeats_and_case():
    parsed = head("HTTP/1.1 200 OK", "Set-Cookie: a=1", "X-A:  v ", "set-cookie: b=2")
    assert parsed.headers == [("Set-Cookie", "a=1"), ("X-A", "v"), ("set-cookie", "b=2")]


def test_folded_lines_are_joined_with_a_space():
    parsed = head("HTTP/1.1 200 OK", "X-Long: part one", "\t part two", "X-B: b")
    assert parsed.headers == [("X-Long", "part one part two"), ("X-B", "b")]


def test_obs_text_is_kept_as_latin_1():
    assert head("HTTP/1.1 200 OK", "X-T: caf\xe9").headers == [("X-T", "café")]


@pytest.mark.parametrize(
    "line", ["no colon here", "Bad Name: v", "X-A: a\x00b", ": empty name", "X-A: a\rb"]
)
def test_invalid_header_lines_are_refused(line):
    with pytest.raises(ProtocolError):
        head("HTTP/1.1 200 OK", line)


def send(reply: bytes, method: str = "GET"):
    server = RawServer("reply", reply)
    try:
        forwarder = Forwarder(Pools(maxsize=1))
        request = ProxyRequest(method, "/", "x.test", [("Host", "x.test")], None)
        response = forwarder.send(Host("127.0.0.1", server.port), request, Timeout(read=2))
        body = b"".join(response)
        response.close()
        return response, body
    finally:
        server.stop()


def test_a_real_exchange_with_chunks_and_repeated_headers():
    response, body = send(
        b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert (response.status, body) == (201, b"hello world")
    assert response.headers == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


def test_a_100_continue_is_skipped_and_a_body_read_to_close():
    response, body = send(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nuntil the end"
    )
    assert (response.status, body) == (200, b"until the end")


def test_every_interim_response_is_skipped():
    response, body = send(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    )
    assert (response.status, body) == (200, b"final")
    assert ("Link", "</style.css>; rel=preload") not in response.headers


def test_an_invalid_upstream_header_is_a_502_kind_of_error():
    with pytest.raises(UpstreamFramingError, match="invalid header line"):
        send(b"HTTP/1.1 200 OK\r\nBroken header line\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    ("lines", "keep_alive"),
    [
        (["HTTP/1.1 200 OK", "Content-Length: 0"], True),
        (["HTTP/1.1 200 OK", "Connection: x, Close", "Content-Length: 0"], False),
        (["HTTP/1.0 200 OK", "Content-Length: 0"], False),
        (["HTTP/1.0 200 OK", "Connection: Keep-Alive", "Content-Length: 0"], True),
        (["HTTP/1.1 200 OK"], False),  # a body until close
        (["HTTP/1.1 204 No Content"], True),
    ],
)
def test_the_upstream_keeps_the_connection_open_only_when_it_says_so(lines, keep_alive):
    assert head(*lines).keep_alive is keep_alive


def test_client_headers_carry_one_checked_content_length():
    assert client_headers(head("HTTP/1.1 200 OK", "Content-Length: 4, 4", "Content-Length: 4")) == [
        ("Content-Length", "4")
    ]
    chunked = head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked", "Content-Length: 4")
    assert client_headers(chunked) == []
    assert client_headers(head("HTTP/1.1 204 No Content", "Content-Length: 0")) == []
    assert client_headers(head("HTTP/1.1 200 OK", "Content-Length: 9", method="HEAD")) == [
        ("Content-Length", "9")
    ]
    assert client_headers(head("HTTP/1.1 304 Not Modified")) == []


def test_a_head_of_plain_lines_keeps_them_for_the_server():
    from app.http.framing import RenderedFields, field_block

    headers = client_headers(
        head(
            "HTTP/1.1 200 OK",
            "X-A: 1",
            "Connection: keep-alive, X-B",
            "X-B: 2",
            "Content-Length: 4",
        ),
        "rid",
    )
    assert type(headers) is RenderedFields
    assert headers == [("X-A", "1"), ("Content-Length", "4"), ("X-Request-Id", "rid")]
    assert headers.names == ["x-a", "content-length", "x-request-id"] and headers.length == 4
    assert headers.block == field_block(headers)  # the same lines as the server would make
    # A head the line-by-line reader read (a fold, a tab, obs-text) gives a plain list.
    folded = client_headers(head("HTTP/1.1 200 OK", "X-A: 1", " more", "Content-Length: 4"))
    assert type(folded) is list and folded == [("X-A", "1 more"), ("Content-Length", "4")]
    # A request id that could split a line goes the plain way, which the
    # server's one check (field_block) refuses: never a CR or LF into a block.
    evil = client_headers(head("HTTP/1.1 200 OK", "X-A: 1"), "id\r\nX-Evil: 1")
    assert type(evil) is list
    with pytest.raises(ValueError):
        field_block(evil)
