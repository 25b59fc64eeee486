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

from collections.abc import Callable, Iterator

from app.config import Host
from app.errors import UpstreamProtocolError, UpstreamTimeout
from app.headers import response_headers

RESPONSE_CHUNK = 64 * 1024


def unfolded(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header values with obsolete line folding (RFC 9112 §5.2) made one line."""
    return [(name, " ".join(value.split()) if "\n" in value else value) for name, value in items]


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
        self.headers = response_headers(unfolded(raw.msg.items()))
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
            # which re-raising makes gunicorn do.
            timed_out = isinstance(error, TimeoutError)
            self.failure = UpstreamTimeout.kind if timed_out else UpstreamProtocolError.kind
            raise
        # Read to the end: closing the response (not the socket) readies the
        # connection for its next request, as http.client's own read() does.
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
        # A response that ended with "Connection: close" has already closed its
        # socket (http.client does it); the pool then reconnects on next use.
        self._release(self._complete)
        for callback in self.on_close:
            callback()
