"""HTTP/1.1 requests off the wire, for lbproxy's own server (app/server.py).

A proxy's parser must be strict (RFC 9112): wherever the proxy and an
upstream could disagree about where a request ends, the request is refused
and the connection closed. So:

- a request line is ``token SP target SP HTTP/1.x``, the target printable ASCII;
- a header line is ``token ":" OWS value OWS``: no space before the colon, no
  line folding, no CR, LF, NUL or other control character in a value;
- Content-Length is digits, once; Transfer-Encoding is ``chunked`` alone and
  never together with Content-Length;
- limits (request line, header count and size) answer 414 and 431.

Every refusal is a ``RequestError`` carrying the status the client gets; its
message never quotes the request (an error page must not reflect input).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# RFC 9110 §5.6.2 token; a target of printable ASCII (RFC 3986 has no other bytes).
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/(\d)\.(\d)")
# RFC 9110 §5.5: value = VCHAR / obs-text, with SP and HTAB inside; OWS around it.
_FIELD = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e\x80-\xff]*)")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?")


class RequestError(Exception):
    """A request that cannot be served: the client gets ``status`` and a closed connection."""

    status = "400 Bad Request"


class RequestLineTooLong(RequestError):
    status = "414 URI Too Long"


class HeaderFieldsTooLarge(RequestError):
    status = "431 Request Header Fields Too Large"


class UnsupportedTransferCoding(RequestError):
    status = "501 Not Implemented"


class UnsupportedVersion(RequestError):
    status = "505 HTTP Version Not Supported"


class IncompleteBody(RequestError):
    """The client closed, or stalled, before the end of the body it announced."""


@dataclass(frozen=True)
class Limits:
    """gunicorn's limit_request_* settings, as proxy.yaml's ``limits`` sets them."""

    request_line: int = 8190
    header_count: int = 100
    header_size: int = 8190

    @property
    def head_size(self) -> int:
        """The most a request head can take before it must be refused."""
        return self.request_line + self.header_count * (self.header_size + 2) + 4


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]  # as sent, in order
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False


def parse_head(text: str, limits: Limits) -> RequestHead:
    """The head of one request (latin-1 text without its final CRLF CRLF)."""
    lines = text.split("\r\n")
    method, target, version = _request_line(lines[0], limits)
    if len(lines) - 1 > limits.header_count:
        raise HeaderFieldsTooLarge(f"more than {limits.header_count} header fields")
    headers = []
    for line in lines[1:]:
        if len(line) > limits.header_size:
            raise HeaderFieldsTooLarge(f"a header line over {limits.header_size} bytes")
        field = _FIELD.fullmatch(line)
        if field is None:
            raise RequestError("invalid header line")
        headers.append((field[1], field[2].strip(" \t")))
    head = RequestHead(method, target, version, headers)
    _read_framing(head)
    return head


def _request_line(line: str, limits: Limits) -> tuple[str, str, tuple[int, int]]:
    if len(line) > limits.request_line:
        raise RequestLineTooLong(f"request line over {limits.request_line} bytes")
    parts = _REQUEST_LINE.fullmatch(line)
    if parts is None:
        raise RequestError("invalid request line")
    version = (int(parts[3]), int(parts[4]))
    if version[0] != 1:
        raise UnsupportedVersion(f"HTTP/{version[0]}.{version[1]}")
    return parts[1], parts[2], version


def _read_framing(head: RequestHead) -> None:
    """Body length, keep-alive and Expect, from the headers that decide them."""
    lengths = []
    codings = []
    hosts = 0
    connection = ""
    for name, value in head.headers:
        key = name.lower()
        if key == "content-length":
            lengths.append(value)
        elif key == "transfer-encoding":
            codings.append(value)
        elif key == "host":
            hosts += 1
        elif key == "connection":
            connection = f"{connection},{value}" if connection else value
        elif key == "expect" and value.lower() == "100-continue":
            head.expect_continue = head.version >= (1, 1)
    if hosts > 1:
        raise RequestError("more than one Host header")
    if codings:
        if lengths:
            raise RequestError("both Content-Length and Transfer-Encoding")
        if len(codings) > 1 or codings[0].lower() != "chunked":
            raise UnsupportedTransferCoding("Transfer-Encoding other than chunked")
        head.chunked = True
    elif lengths:
        if len(lengths) > 1:
            raise RequestError("more than one Content-Length")
        if not lengths[0].isdigit() or not lengths[0].isascii() or len(lengths[0]) > 18:
            raise RequestError("invalid Content-Length")
        head.content_length = int(lengths[0])
    tokens = {token.strip().lower() for token in connection.split(",")} if connection else ()
    if head.version >= (1, 1):
        head.keep_alive = "close" not in tokens
    else:
        head.keep_alive = "keep-alive" in tokens and "close" not in tokens


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions ignored), RFC 9112 §7.1."""
    parsed = _CHUNK_SIZE.fullmatch(line)
    if parsed is None:
        raise RequestError("invalid chunk size line")
    return int(parsed[1], 16)


def field_block(fields: Iterable[tuple[str, str]]) -> str:
    """``name: value\r\n`` lines, for a request or a response head.

    ValueError if a CR, LF or NUL inside a name or value would split a line
    (header injection): the one check both directions go through.
    """
    lines = [f"{name}: {value}\r\n" for name, value in fields]
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines) or "\x00" in block:
        raise ValueError("CR, LF or NUL in a header")
    return block


def send_all(sock, data: bytes) -> None:
    """``sock.sendall(data)`` in one send() as a rule: gevent's sendall() adds a
    getsockopt() syscall each time, a tenth of a small response's cost."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
