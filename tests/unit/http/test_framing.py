"""The request parser: what it accepts, what it refuses, and with which status."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.http.framing import (
    HeaderFieldsTooLarge,
    HeadLimits,
    ProtocolError,
    RequestLineTooLong,
    UnsupportedTransferCoding,
    UnsupportedVersion,
    chunk_size,
    field_block,
    parse_request_head,
    send_all,
)

LIMITS = HeadLimits(request_line=100, header_count=5, header_size=50)


def parse(*lines: str, limits: HeadLimits = LIMITS):
    """Parse a head; a Host line is added where a 1.1 request would need one."""
    if not any(line.lower().startswith("host:") for line in lines[1:]):
        lines = (lines[0], "Host: t", *lines[1:])
    return parse_request_head("\r\n".join(lines), limits)


def test_a_request_with_its_headers_as_sent():
    head = parse("GET /a%7eb?x=%2f HTTP/1.1", "Host: web.test", "X-Two:  a b \t", "x-two: c")
    assert (head.method, head.target, head.version) == ("GET", "/a%7eb?x=%2f", (1, 1))
    assert head.headers == [("Host", "web.test"), ("X-Two", "a b"), ("x-two", "c")]
    assert (head.content_length, head.chunked, head.keep_alive) == (None, False, True)


def test_keep_alive_follows_the_version_and_connection():
    assert parse("GET / HTTP/1.1", "Connection: close").keep_alive is False
    assert parse("GET / HTTP/1.1", "Connection: x, Close").keep_alive is False
    assert parse("GET / HTTP/1.0").keep_alive is False
    assert parse("GET / HTTP/1.0", "Connection: keep-alive").keep_alive is True


def test_body_framing():
    assert parse("POST / HTTP/1.1", "Content-Length: 12").content_length == 12
    assert parse("POST / HTTP/1.1", "Transfer-Encoding: Chunked").chunked is True
    assert parse("POST / HTTP/1.1", "Expect: 100-continue").expect_continue is True
    assert parse("POST / HTTP/1.0", "Expect: 100-continue").expect_continue is False


@pytest.mark.parametrize(
    "lines",
    [
        ["GARBAGE"],
        ["GET / HTTP/1.1 extra"],
        ["GET  / HTTP/1.1"],
        ["GET /\x01 HTTP/1.1"],
        ["GET / HTTP/1.x"],
        ["G(T / HTTP/1.1"],
        ["GET / HTTP/1.1", "X-A : b"],  # space before the colon
        ["GET / HTTP/1.1", "X-A: b", " folded"],  # obsolete line folding
        ["GET / HTTP/1.1", "X-A: a\rb"],
        ["GET / HTTP/1.1", "X-A: a\nX-Injected: 1"],
        ["GET / HTTP/1.1", "X-A: a\x00b"],
        ["GET / HTTP/1.1", "no colon"],
        ["GET / HTTP/1.1", "Host: a", "Host: b"],
        ["POST / HTTP/1.1", "Content-Length: 3", "Content-Length: 3"],
        ["POST / HTTP/1.1", "Content-Length: -1"],
        ["POST / HTTP/1.1", "Content-Length: 1e3"],
        ["POST / HTTP/1.1", "Content-Length: ٣"],  # a digit, but not ASCII
        ["POST / HTTP/1.1", "Content-Length: 6", "Transfer-Encoding: chunked"],
    ],
)
def test_refused_with_400(lines):
    with pytest.raises(ProtocolError) as refused:
        parse(*lines)
    assert refused.value.status == "400 Bad Request"
    assert "Injected" not in str(refused.value)  # an error never quotes the request


def test_refused_with_their_own_status():
    with pytest.raises(RequestLineTooLong):
        parse("GET /" + "a" * 100 + " HTTP/1.1")
    with pytest.raises(HeaderFieldsTooLarge):
        parse("GET / HTTP/1.1", *[f"X-{i}: v" for i in range(6)])
    with pytest.raises(HeaderFieldsTooLarge):
        parse("GET / HTTP/1.1", "X-Big: " + "v" * 50)
    with pytest.raises(UnsupportedTransferCoding):
        parse("POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked")
    with pytest.raises(UnsupportedTransferCoding):
        parse("POST / HTTP/1.1", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked")
    with pytest.raises(UnsupportedVersion) as refused:
        parse("GET / HTTP/2.0")
    assert refused.value.status == "505 HTTP Version Not Supported"
    assert LIMITS.head_size == 100 + 5 * 52 + 4


def test_chunk_size_lines():
    assert chunk_size(b"1f") == 31
    assert chunk_size(b"A;name=value") == 10
    assert chunk_size(b"0") == 0
    for bad in (b"", b"0x10", b"1_0", b"+5", b"g", b"1" * 16, b"5 5"):
        with pytest.raises(ProtocolError):
            chunk_size(bad)


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40))
def test_a_parsed_value_never_holds_cr_lf_or_nul(value):
    try:
        head = parse("GET / HTTP/1.1", f"X-Any: {value}")
    except ProtocolError:
        return
    _, parsed = head.headers[-1]
    assert not set(parsed) & {"\r", "\n", "\x00"}
    assert parsed == value.strip(" \t")


class Trickle:
    """A socket whose send() takes at most 3 bytes at a time."""

    def __init__(self):
        self.data = b""

    def send(self, data) -> int:
        self.data += bytes(data[:3])
        return min(3, len(data))

    def sendall(self, data) -> None:
        while data:
            data = data[self.send(data) :]


def test_send_all_finishes_a_partial_send():
    sock = Trickle()
    send_all(sock, b"0123456789")
    assert sock.data == b"0123456789"


def test_a_field_block_refuses_what_would_split_a_line():
    assert field_block([("A", "1"), ("b-c", "x y")]) == "A: 1\r\nb-c: x y\r\n"
    assert field_block([]) == ""
    for name, value in [("A", "1\r\nB: 2"), ("A", "1\n"), ("A\r", "1"), ("A", "1\x00")]:
        with pytest.raises(ValueError):
            field_block([(name, value)])
