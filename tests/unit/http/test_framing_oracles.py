"""lbproxy's framing against two independent parsers: llhttp (Node.js's, via
httptools) and h11.

The same bytes go to all three. A case fails when lbproxy accepts a message
that both oracles refuse, or frames it differently from llhttp where llhttp
accepts it: another method, target or status, another body, or another end
of the message (which is where request smuggling and response desync live).
lbproxy refusing what the oracles accept is allowed: it may be stricter.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.http.framing import (
    NO_BODY,
    ChunkedReader,
    HeadLimits,
    LengthReader,
    ProtocolError,
    Stream,
    parse_request_head,
    parse_response_head,
    response_reader,
)

LIMITS = HeadLimits(request_line=8190, header_count=100, header_size=8190)


@dataclass(frozen=True)
class Parsed:
    """One message as a parser framed it; ``end`` is where the message ends in the input."""

    start: str  # method and target, or status
    body: bytes
    end: int | None  # None: the body runs to the end of the connection


REFUSED = "refused"
INCOMPLETE = "incomplete"


def _feeder(data: bytes):
    chunks = [data]

    def recv(size: int) -> bytes:
        return chunks.pop() if chunks else b""

    return recv


# --- lbproxy ---------------------------------------------------------------


def lbproxy_request(data: bytes):
    stream = Stream(_feeder(data))
    try:
        raw = stream.recv(0)
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return INCOMPLETE
        stream.pending = raw[end + 4 :]
        head = parse_request_head(raw[:end].decode("latin-1"), LIMITS)
        if head.chunked:
            reader = ChunkedReader(LIMITS.header_count, LIMITS.header_size)
        elif head.content_length:
            reader = LengthReader(head.content_length)
        else:
            reader = NO_BODY
        body = _read_all(reader, stream)
    except ProtocolError as error:
        return INCOMPLETE if "closed" in str(error) else REFUSED
    return Parsed(f"{head.method} {head.target}", body, len(data) - len(stream.pending))


def lbproxy_response(data: bytes, method: str = "GET"):
    stream = Stream(_feeder(data))
    try:
        raw = stream.recv(0)
        while True:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return INCOMPLETE
            head = parse_response_head(raw[:end].decode("latin-1"), method)
            raw = raw[end + 4 :]
            if not head.interim:
                break
        stream.pending = raw
        reader = response_reader(head)
        body = _read_all(reader, stream)
    except ProtocolError as error:
        return INCOMPLETE if "closed" in str(error) else REFUSED
    until_close = not head.chunked and head.content_length is None and head.has_body
    return Parsed(str(head.status), body, None if until_close else len(data) - len(stream.pending))


def _read_all(reader, stream) -> bytes:
    body = b""
    while part := reader.read(stream, 65536):
        body += part
    return body


# --- llhttp ----------------------------------------------------------------


class _Callbacks:
    def __init__(self):
        self.url = b""
        self.body = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def llhttp(data: bytes, response: bool = False):
    """Fed a byte at a time, so that the message's end is known exactly."""
    callbacks = _Callbacks()
    parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(callbacks)
    for index in range(len(data)):
        try:
            parser.feed_data(data[index : index + 1])
        except httptools.HttpParserUpgrade:
            return REFUSED  # lbproxy tunnels nothing here
        except httptools.HttpParserError:
            return REFUSED
        if callbacks.complete and response and parser.get_status_code() < 200:
            callbacks.complete, callbacks.body = False, b""  # an interim response: the next
            continue
        if callbacks.complete:
            start = (
                str(parser.get_status_code())
                if response
                else f"{parser.get_method().decode()} {callbacks.url.decode('latin-1')}"
            )
            return Parsed(start, callbacks.body, index + 1)
    if response and callbacks.body:
        return Parsed(str(parser.get_status_code()), callbacks.body, None)
    return INCOMPLETE


# --- h11 -------------------------------------------------------------------


def h11_request(data: bytes):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    return _h11_events(conn, data, lambda e: f"{e.method.decode()} {e.target.decode('latin-1')}")


def h11_response(data: bytes, method: str = "GET"):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")  # the end of the connection: a body until close ends here
    return _h11_events(conn, data, lambda e: str(e.status_code))


def _h11_events(conn, data, start_of):
    start, body = None, b""
    try:
        while True:
            event = conn.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED):
                return INCOMPLETE
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, (h11.Request, h11.Response)):
                start = start_of(event)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                trailing, _closed = conn.trailing_data
                return Parsed(start, body, len(data) - len(trailing))
            elif isinstance(event, h11.ConnectionClosed):
                return INCOMPLETE
    except h11.RemoteProtocolError:
        return REFUSED


# --- the comparison --------------------------------------------------------


def check_request(data: bytes) -> None:
    ours, node, other = lbproxy_request(data), llhttp(data), h11_request(data)
    _compare(data, ours, node, other)


def check_response(data: bytes) -> None:
    ours, node, other = lbproxy_response(data), llhttp(data, response=True), h11_response(data)
    _compare(data, ours, node, other)


def _compare(data, ours, node, other) -> None:
    if not isinstance(ours, Parsed):
        return  # refusing (or waiting for more) is always safe
    assert isinstance(node, Parsed) or isinstance(other, Parsed), (
        f"lbproxy accepts what llhttp and h11 refuse: {data!r} -> {ours}"
    )
    if isinstance(node, Parsed):
        if ours.end is None or node.end is None:  # until close: same bytes so far
            assert (ours.start, ours.body) == (node.start, node.body), data
        else:
            assert ours == node, f"lbproxy and llhttp frame {data!r} differently"


# --- the corpus ------------------------------------------------------------

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    # CL.TE and TE.CL
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nG",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    # Transfer-Encoding obfuscation
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"
    b"0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    # Content-Length forms
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 \r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\nabcdefghij",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
    # chunk sizes, chunk ends, trailers
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a header\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ok\r\n\r\n",
    # heads
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nX",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\rSet-Cookie: x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 41\r\nContent-Length: 51\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
]


@pytest.mark.parametrize("data", REQUESTS)
def test_requests_of_the_audit(data):
    check_request(data)


@pytest.mark.parametrize("data", RESPONSES)
def test_responses_of_the_audit(data):
    check_response(data)


def test_the_oracles_do_tell_a_smuggled_request_apart():
    """The harness itself: a lenient reading would be caught."""
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"
    node = llhttp(data)
    assert node == Parsed("POST /", b"abc", data.index(b"GET"))
    lenient = Parsed("POST /", b"abcGET / HTTP/1.1\r\n\r\n", len(data))
    with pytest.raises(AssertionError):
        _compare(data, lenient, node, h11_request(data))


# Header lines and bodies, tricky ones often: random requests and responses.
LENGTHS = st.sampled_from(["3", "+3", " 3", "3 ", "03", "3, 3", "3,4", "0x3", "", "-1", "1_0", "١"])
CODINGS = st.sampled_from(
    [
        "chunked",
        "Chunked",
        " chunked",
        "chunked ",
        "identity",
        "chunked, identity",
        "gzip",
        "\tchunked",
        "chunked\t",
        "xchunked",
        "",
    ]
)
FIELDS = st.one_of(
    LENGTHS.map(lambda v: f"Content-Length: {v}"),
    CODINGS.map(lambda v: f"Transfer-Encoding: {v}"),
    st.sampled_from(
        [
            "X-A: b",
            "X-A : b",
            "X-A:b",
            " folded",
            "Connection: close",
            "Host: b",
            "X-A: \x01",
            "Trailer: X",
        ]
    ),
)
CHUNK_SIZES = st.sampled_from(["3", "03", "3;e=1", "0x3", "3 ", " 3", "-3", "", "4", "2"])
BODIES = st.one_of(
    st.sampled_from([b"", b"abc", b"abcdef", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n"]),
    st.tuples(CHUNK_SIZES, st.sampled_from(["\r\n", "\n", "XX"]), st.booleans()).map(
        lambda t: (
            f"{t[0]}\r\nabc{t[1]}0\r\n{'X-T: 1' + chr(13) + chr(10) if t[2] else ''}\r\n".encode()
        )
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT"]),
    st.sampled_from(["1.1", "1.0"]),
    st.lists(FIELDS, max_size=4),
    BODIES,
    st.sampled_from([b"", b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"]),
)
def test_random_requests_frame_as_llhttp_does(method, version, fields, body, after):
    head = f"{method} /x HTTP/{version}\r\nHost: a\r\n" + "".join(f"{f}\r\n" for f in fields)
    check_request(head.encode("utf-8") + b"\r\n" + body + after)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["200 OK", "204 No Content", "304 Not Modified", "404 Not Found", "103 Hints"]),
    st.sampled_from(["1.1", "1.0"]),
    st.lists(FIELDS, max_size=4),
    BODIES,
)
def test_random_responses_frame_as_llhttp_does(status, version, fields, body):
    head = f"HTTP/{version} {status}\r\n" + "".join(f"{f}\r\n" for f in fields)
    check_response(head.encode("utf-8") + b"\r\n" + body)
