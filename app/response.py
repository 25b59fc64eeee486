"""Stream the upstream's response back to the client.

``raw`` is the ``http.client`` response: its headers are parsed, its body is
unread. The body is passed through as it arrives (``read1``: what the socket
has, up to 64 KiB), in the upstream's own encoding (gzip stays gzip), never
buffered whole; http.client undoes the upstream's chunked framing and gunicorn
applies the client's. When the client has read it all the connection goes back
to the pool; if the client left early it is closed, since the rest of the body
would still be on the wire.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable, Iterator

from app.config import Host
from app.errors import UpstreamProtocolError, UpstreamTimeout
from app.headers import response_headers

RESPONSE_CHUNK = 64 * 1024


# RFC 9110 §5.1 and §5.5: a field name is a token; a value is VCHAR, obs-text, SP, HTAB.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[ \t\x21-\x7e\x80-\xff]*")


class InvalidUpstreamHeader(http.client.HTTPException):
    """The upstream sent a header line that cannot be passed on: 502, as nginx does."""


def parse_header_lines(lines: list[bytes]) -> list[tuple[str, str]]:
    """Header lines as (name, value) pairs in order, repeats kept.

    Obsolete line folding (RFC 9112 §5.2) is joined with a space; a line that
    is not a valid field is refused, since gunicorn could not send it on.
    """
    pairs: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:
            continue
        if line[0] in " \t" and pairs:
            name, value = pairs[-1]
            continued = line.strip(" \t")
            pairs[-1] = (name, f"{value} {continued}".strip())
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise InvalidUpstreamHeader(f"invalid header line {line[:40]!r}")
        pairs.append((name, value.strip(" \t")))
    return pairs


class Headers:
    """Parsed response headers: as much of HTTPMessage as http.client uses."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs

    def items(self) -> list[tuple[str, str]]:
        return self.pairs

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        return next((value for key, value in self.pairs if key.lower() == name), default)

    def get_all(self, name: str, failobj=None):
        name = name.lower()
        return [value for key, value in self.pairs if key.lower() == name] or failobj


class LeanHTTPResponse(http.client.HTTPResponse):
    """http.client's response, with the header block parsed by a plain loop.

    http.client hands the headers to the email package's parser, the largest
    single cost of reading a response; a proxy needs only the lines, in order.
    Everything else (status line, 1xx skipping, framing, chunked decoding) is
    http.client's own.
    """

    def begin(self):
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            http.client._read_headers(self.fp)  # an interim 100's headers
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        pairs = parse_header_lines(http.client._read_headers(self.fp))
        self.headers = self.msg = Headers(pairs)
        # The headers that frame the body, first occurrence of each (as get()), in one pass.
        framing: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            if key in _FRAMING_HEADERS and key not in framing:
                framing[key] = value
        transfer_encoding = framing.get("transfer-encoding")
        self.chunked = bool(transfer_encoding and transfer_encoding.lower() == "chunked")
        self.chunk_left = None
        self.will_close = _will_close(self.version, framing)
        self.length = None
        length = framing.get("content-length")
        if length and not self.chunked and length.isdigit():
            self.length = int(length)
        if status in (204, 304) or 100 <= status < 200 or self._method == "HEAD":
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the connection does


_FRAMING_HEADERS = frozenset(
    {"transfer-encoding", "content-length", "connection", "keep-alive", "proxy-connection"}
)


def _will_close(version: int, framing: dict[str, str]) -> bool:
    """http.client's ``_check_close``: does the upstream close after this response?"""
    connection = framing.get("connection", "").lower()
    if version == 11:
        return "close" in connection
    keep_alive = (
        "keep-alive" in framing
        or "keep-alive" in connection
        or "keep-alive" in framing.get("proxy-connection", "").lower()
    )
    return not keep_alive


class UpstreamResponse:
    """A WSGI response iterable over an upstream response whose body is unread."""

    def __init__(
        self,
        raw,
        release: Callable[[bool], None],
        host: Host,
        request_id: str = "",
        connect_time: float | None = None,
        upstream_time: float | None = None,
    ):
        self.raw = raw
        self.host = host
        self.status = raw.status
        self.status_line = f"{raw.status} {raw.reason}"
        self.headers = response_headers(raw.msg.items())
        if request_id:
            self.headers.append(("X-Request-Id", request_id))
        self.connect_time = connect_time
        self.upstream_time = upstream_time
        self.bytes_sent = 0
        self.on_close: list[Callable[[], None]] = []
        self.failure: str | None = None  # the error kind, if the body did not get through
        self._release = release
        self._complete = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        read = self.raw.read1
        try:
            while chunk := read(RESPONSE_CHUNK):
                self.bytes_sent += len(chunk)
                yield chunk
        except Exception as error:
            # Headers are sent: all we can do is cut the client's connection,
            # which re-raising makes the HTTP server do (app/server.py or gunicorn's).
            timed_out = isinstance(error, TimeoutError)
            self.failure = UpstreamTimeout.kind if timed_out else UpstreamProtocolError.kind
            raise
        # Read to the end: closing the response closes its file over the
        # socket, not the socket, which goes back to the pool for the next request.
        self.raw.close()
        self._complete = True

    def discard(self) -> None:
        """Drop this response unread (a retry follows): its connection is closed."""
        self._closed = True
        self._release(False)

    def close(self) -> None:
        """Called by the WSGI server once the response is done, or abandoned."""
        if self._closed:
            return
        self._closed = True
        if not self._complete and self.failure is None:
            self.failure = "client_abort"
        # After "Connection: close" (or a body that ends at close) the
        # upstream closes: the connection is not reused.
        self._release(self._complete and not self.raw.will_close)
        # The callbacks refer back to this response: dropping them after use
        # breaks that cycle, so the request's objects are freed at once instead
        # of waiting (by the thousand, with their buffers) for the cyclic GC.
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            callback()
