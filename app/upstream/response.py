"""Stream the upstream's response back to the client.

The head was read by app/upstream/forward.py; the body is still on the connection. It is
passed through as it arrives (what the socket has, up to 64 KiB at a time), in
the upstream's own content encoding (gzip stays gzip), never buffered whole.
The body's reader (app/http/framing.py) undoes the upstream's framing; the HTTP
server applies the client's, from the single Content-Length passed on here (or
none: chunked to HTTP/1.1 clients).

When the response is over, its connection goes back to the pool only if it is
proven clean (app/upstream/pool.py): read exactly to its end, nothing received beyond
it, kept alive by the upstream, and the request sent whole. Otherwise it is
closed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

from app.config import Host
from app.errors import ProxyError, UpstreamFramingError, UpstreamProtocolError, UpstreamTimeout
from app.http.framing import ProtocolError, RenderedFields, ResponseHead
from app.http.headers import kept_response_lines, response_headers

RESPONSE_CHUNK = 64 * 1024
# The upstream's framing never crosses (client_headers).
_CONTENT_LENGTH = frozenset({"content-length"})


class UpstreamResponse:
    """A WSGI response iterable over an upstream response whose body is unread."""

    def __init__(
        self,
        head: ResponseHead,
        reader,
        connection,
        pool,
        host: Host,
        request_id: str = "",
        connect_time: float | None = None,
        upstream_time: float | None = None,
    ):
        self.head = head
        self.reader = reader
        self.connection = connection
        self.pool = pool
        self.host = host
        self.status = head.status
        self.status_line = f"{head.status} {head.reason}"
        self.headers = client_headers(head, request_id)
        self.connect_time = connect_time
        self.upstream_time = upstream_time
        self.bytes_sent = 0
        self.lease = None  # the host's place in flight (app/traffic/routing.py)
        self.dedicated = False  # a tunnel's connection: never pooled
        self.on_close: Callable[[], None] | None = None  # the request's end
        # Called when the body breaks off: the upstream's fault counts against it.
        self.on_failure: Callable[[], None] | None = None
        self.failure: str | None = None  # the error kind, if the body did not get through
        # The WSGI start_response: a failure before the first body byte (the
        # head is not sent yet) replaces this response with the error's status.
        self.start_response: Callable | None = None
        self._complete = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        read = self.reader.read
        stream = self.connection.stream
        try:
            while chunk := read(stream, RESPONSE_CHUNK):
                self.bytes_sent += len(chunk)
                yield chunk
        except Exception as error:
            failure = _failure(error)
            self.failure = failure.kind
            if self.on_failure is not None:
                self.on_failure()
            if self.bytes_sent or self.start_response is None:
                # The head is sent: all the proxy can do is cut the client's
                # connection, which re-raising makes the HTTP server do.
                raise
            yield self._replace(failure)
            return
        self._complete = True

    def _replace(self, failure: ProxyError) -> bytes:
        """Answer ``failure`` instead (WSGI lets start_response replace an unsent head)."""
        body = failure.body()
        self.status = int(failure.status[:3])
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        self.start_response(failure.status, headers, sys.exc_info())
        self.bytes_sent = len(body)
        return body

    def discard(self) -> None:
        """Drop this response unread (a retry follows): its connection is closed."""
        self._closed = True
        self.pool.discard(self.connection)

    def close(self) -> None:
        """Called by the WSGI server once the response is done, or abandoned."""
        if self._closed:
            return
        self._closed = True
        if not self._complete and self.failure is None:
            if self.reader.done:
                self._complete = True  # nothing (left) to read: HEAD, 204, 304, or all read
            else:
                self.failure = "client_abort"
        if self.reusable:
            self.pool.checkin(self.connection)
        else:
            self.pool.discard(self.connection)
        if self.lease is not None:
            self.lease.release()
        # The callback refers back to this response: dropping it after use
        # breaks that cycle, so the request's objects are freed at once instead
        # of waiting (by the thousand, with their buffers) for the cyclic GC.
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    @property
    def reusable(self) -> bool:
        """The connection is proven clean: the response was read exactly to its end
        with nothing beyond it, and the upstream keeps it open."""
        return (
            not self.dedicated
            and self._complete
            and self.reader.done
            and self.head.keep_alive
            and not self.connection.buffered()
        )


def _failure(error: Exception) -> ProxyError:
    """What a body that broke off is, as the client is told."""
    if isinstance(error, TimeoutError):
        return UpstreamTimeout(str(error))
    if isinstance(error, ProtocolError):
        return UpstreamFramingError(str(error))
    return UpstreamProtocolError(str(error))


def client_headers(head: ResponseHead, request_id: str = "") -> list[tuple[str, str]]:
    """The upstream's headers to pass on, with one Content-Length where it
    applies, then the request's X-Request-Id.

    The upstream's framing never crosses: its Content-Length fields go (RFC
    9112 §6.3: a chunked body's is wrong; several are collapsed into one), and
    the checked length is stated again, except on a chunked body, a 1xx or a
    204. On HEAD and 304 it is what a GET would get, as the upstream said.
    A head of plain lines (the head reader's fast path) keeps them: the fields
    come with their lines made (app/http/framing.RenderedFields), which the
    HTTP server writes as they are.
    """
    length = None
    if head.content_length is not None and head.status >= 200 and head.status != 204:
        length = head.content_length
    # Made or checked printable (app/observe/record.request_id); one that is not
    # goes the plain way, where the HTTP server's field_block refuses it.
    if head.lines is None or not (request_id.isascii() and request_id.isprintable()):
        headers = response_headers(head.headers, head.names, _CONTENT_LENGTH)
        if length is not None:
            headers.append(("Content-Length", str(length)))
        if request_id:
            headers.append(("X-Request-Id", request_id))
        return headers
    fields, names, lines = kept_response_lines(
        head.headers, head.names, head.lines, _CONTENT_LENGTH
    )
    block = "\r\n".join(lines) + "\r\n" if lines else ""
    if length is not None:
        value = str(length)
        fields.append(("Content-Length", value))
        names.append("content-length")
        block += f"Content-Length: {value}\r\n"
    if request_id:
        fields.append(("X-Request-Id", request_id))
        names.append("x-request-id")
        block += f"X-Request-Id: {request_id}\r\n"
    return RenderedFields(fields, names, block, length)
