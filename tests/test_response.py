"""Reading the upstream's response: the lean header parser, and streaming back."""

from __future__ import annotations

import pytest

from app.config import Host, Timeout
from app.errors import UpstreamProtocolError
from app.forward import Forwarder
from app.request import ProxyRequest
from app.response import InvalidUpstreamHeader, parse_header_lines
from app.session import make_session
from tests.processes import RawServer


def test_header_lines_keep_order_repeats_and_case():
    lines = [b"Set-Cookie: a=1\r\n", b"X-A:  v \r\n", b"set-cookie: b=2\r\n", b"\r\n"]
    assert parse_header_lines(lines) == [("Set-Cookie", "a=1"), ("X-A", "v"), ("set-cookie", "b=2")]


def test_folded_lines_are_joined_with_a_space():
    lines = [b"X-Long: part one\r\n", b"\t part two\r\n", b"X-B: b\r\n", b"\r\n"]
    assert parse_header_lines(lines) == [("X-Long", "part one part two"), ("X-B", "b")]


def test_obs_text_is_kept_as_latin_1():
    assert parse_header_lines([b"X-T: caf\xe9\r\n"]) == [("X-T", "café")]


@pytest.mark.parametrize(
    "line", [b"no colon here\r\n", b"Bad Name: v\r\n", b"X-A: a\x00b\r\n", b": empty name\r\n"]
)
def test_invalid_header_lines_are_refused(line):
    with pytest.raises(InvalidUpstreamHeader):
        parse_header_lines([line])


def send(reply: bytes):
    server = RawServer("reply", reply)
    try:
        forwarder = Forwarder(make_session(1, 1))
        request = ProxyRequest("GET", "/", "x.test", {"Host": "x.test"}, None)
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


def test_an_invalid_upstream_header_is_a_502_kind_of_error():
    with pytest.raises(UpstreamProtocolError, match="invalid header line"):
        send(b"HTTP/1.1 200 OK\r\nBroken header line\r\nContent-Length: 0\r\n\r\n")


def test_the_upstream_closing_after_a_response_is_read_as_http_client_does():
    from app.response import _will_close

    assert _will_close(11, {}) is False
    assert _will_close(11, {"connection": "Close"}) is True
    assert _will_close(10, {}) is True
    assert _will_close(10, {"connection": "Keep-Alive"}) is False
    assert _will_close(10, {"keep-alive": "timeout=5"}) is False
    assert _will_close(10, {"proxy-connection": "keep-alive"}) is False
