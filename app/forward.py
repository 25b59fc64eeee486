"""Send one request to one upstream host over a pooled keep-alive connection.

The connection pools belong to one ``requests.Session`` per worker, configured
for a proxy rather than a script (see ``make_session``). The hot path takes a
connection from the session's urllib3 pool (urllib3 connects it, with
TCP_NODELAY) and speaks HTTP on its socket itself: the request head is written
in one send, with the target exactly as given (``requests`` re-quotes ``%7e``
to ``~``; ``urlopen`` upper-cases ``%2f``), and the response is read by
``http.client``'s response class (app/response.py) as it arrives, without the
per-request preparation of ``requests`` or the wrapping of urllib3's response.
"""

from __future__ import annotations

import http.client
import queue
import re
import select
import socket
import time
from dataclasses import dataclass

from gevent.socket import wait_read
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import is_connection_dropped

from app.config import Host, Timeout
from app.errors import (
    BadRequest,
    ClientAbort,
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from app.http11 import field_block, send_all
from app.request import ProxyRequest
from app.response import LeanHTTPResponse, UpstreamResponse
from app.session import Session

# While waiting for an upstream, look this often whether the client is still there.
CLIENT_CHECK_INTERVAL = 1.0

# Failures of a kept-alive connection the upstream closed while it sat idle.
_STALE_CONNECTION = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


@dataclass
class Attempt:
    """What one try at one host cost: for metrics and the access log."""

    host: Host
    connect_time: float | None = None  # None: a pooled connection was reused
    reused: bool = False


class Forwarder:
    def __init__(self, session: Session):
        self.session = session
        self.pools = session.get_adapter("http://").poolmanager
        self._host_pools: dict[tuple[str, int], object] = {}

    def pool(self, host: Host):
        """The session's connection pool for ``host``.

        Kept per host: the PoolManager's own lookup (key normalisation, LRU)
        cost more than the rest of picking a connection. A pool the manager
        closed (``pool.pool`` is None) is looked up again.
        """
        key = (host.address, host.port)
        pool = self._host_pools.get(key)
        if pool is None or pool.pool is None:
            pool = self.pools.connection_from_host(host.address, host.port, scheme="http")
            self._host_pools[key] = pool
        return pool

    def idle(self, host: Host) -> int:
        """Idle connections kept open in the host's pool (for the pool gauge)."""
        pool = self.pool(host)
        return sum(1 for conn in list(pool.pool.queue) if conn is not None and conn.sock)

    def send(self, host: Host, request: ProxyRequest, timeout: Timeout) -> UpstreamResponse:
        """Forward ``request`` to ``host``; return the response with its body unread.

        Raises UpstreamConnectError when nothing was sent (safe to try another
        host), UpstreamTimeout, UpstreamProtocolError or ClientAbort otherwise.
        A pooled connection that the upstream closed while idle is retried once
        on a fresh connection, provided no body byte was taken from the client.
        """
        pool = self.pool(host)
        attempt = Attempt(host)
        # A request that can be replayed is retried if its pooled connection
        # turns out stale; one that cannot is worth a poll() to check it first.
        conn = self._connection(pool, attempt, timeout, check=not request.replayable_always)
        try:
            return self._exchange(pool, conn, attempt, request, timeout)
        except _STALE_CONNECTION:
            if not attempt.reused or not request.replayable:
                raise UpstreamProtocolError("connection reset by the upstream") from None
        conn = self._connection(pool, attempt, timeout, fresh=True)
        try:
            return self._exchange(pool, conn, attempt, request, timeout)
        except _STALE_CONNECTION:
            raise UpstreamProtocolError("connection reset by the upstream") from None

    def _connection(self, pool, attempt: Attempt, timeout: Timeout, fresh=False, check=False):
        """A connected connection: pooled if one is fresh enough, else a new one."""
        try:
            conn = pool.pool.get(block=False) or pool._new_conn()
        except (queue.Empty, AttributeError):  # none idle, or the pool was closed
            conn = pool._new_conn()
        if conn.sock is not None and (
            fresh
            or time.monotonic() - getattr(conn, "lbproxy_idle_since", 0.0) > timeout.idle
            or (check and is_connection_dropped(conn))
        ):
            conn.close()
        attempt.reused = conn.sock is not None
        if attempt.reused:
            return conn
        conn.timeout = timeout.connect
        started = time.perf_counter()
        try:
            conn.connect()
        except (NewConnectionError, ConnectTimeoutError, OSError) as error:
            pool._put_conn(conn)
            raise UpstreamConnectError(f"{attempt.host.name}: {error}") from None
        attempt.connect_time = time.perf_counter() - started
        return conn

    def _exchange(self, pool, conn, attempt, request, timeout) -> UpstreamResponse:
        """Send the request on ``conn`` and read the response headers."""
        conn.sock.settimeout(timeout.read)
        started = time.perf_counter()
        try:
            _send_request(conn.sock, request)
            _wait_for_response(conn.sock, request.client_socket, timeout.read)
            raw = LeanHTTPResponse(conn.sock, method=request.method)
            raw.begin()
        except BaseException as error:
            conn.close()
            pool._put_conn(conn)
            raise _translate(error) from None
        return UpstreamResponse(
            raw,
            release=lambda reusable: _release(pool, conn, reusable),
            host=attempt.host,
            request_id=request.request_id,
            connect_time=attempt.connect_time,
            upstream_time=time.perf_counter() - started,
        )


def _send_request(sock, request: ProxyRequest) -> None:
    """Write the request head in one send, then the body (re-chunked if it came chunked)."""
    body = request.body
    framing = ""
    if body is not None:
        if body.chunked:
            framing = "Transfer-Encoding: chunked\r\n"
        elif "Content-Length" not in request.headers:
            framing = f"Content-Length: {body.length}\r\n"
    send_all(sock, request_head(request.method, request.target, request.headers, framing))
    if body is None:
        return
    if body.chunked:
        for chunk in body:
            sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        return
    for chunk in body:
        sock.sendall(chunk)


# As http.client refuses them: a target with a control character or space.
_INVALID_TARGET = re.compile(r"[\x00-\x20\x7f]")


def request_head(method: str, target: str, headers: dict[str, str], framing: str = "") -> bytes:
    """The request line and headers, ready to send.

    ValueError for a target or header that would change the message's meaning
    on the wire (control characters, CR or LF): a second guard after the
    server's parser, as http.client's own checks were.
    """
    if _INVALID_TARGET.search(target) or _INVALID_TARGET.search(method):
        raise ValueError("control character or space in the request target")
    fields = field_block(headers.items()) + framing
    return f"{method} {target} HTTP/1.1\r\n{fields}\r\n".encode("latin-1")


def _release(pool, conn, reusable: bool) -> None:
    """Give the connection back: kept alive if its response was read to the end."""
    if reusable:
        conn.lbproxy_idle_since = time.monotonic()
    else:
        conn.close()
    pool._put_conn(conn)


def _wait_for_response(upstream, client, read_timeout: float) -> None:
    """Wait for the upstream's first byte; give up if the client leaves meanwhile.

    A client that disconnects must not hold an upstream connection (and a
    slot of the upstream) until the read timeout: every CLIENT_CHECK_INTERVAL
    the client socket is checked for end-of-file.
    """
    if client is None or upstream is None:
        return
    deadline = time.monotonic() + read_timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no response within the read timeout")
        try:
            wait_read(upstream.fileno(), min(remaining, CLIENT_CHECK_INTERVAL), _StillWaiting)
            return
        except _StillWaiting:
            if _client_gone(client):
                raise ClientAbort("the client closed its connection while waiting") from None


class _StillWaiting(Exception):
    """No upstream byte yet (an internal signal of _wait_for_response)."""


def _client_gone(client) -> bool:
    try:
        readable, _, _ = select.select([client], [], [], 0)
        # Readable with no data is end-of-file; data is a pipelined request.
        return bool(readable) and client.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _translate(error: BaseException) -> BaseException:
    """Map a failure during the exchange to what the client is told."""
    if isinstance(error, (ProxyError, *_STALE_CONNECTION)):
        return error
    if isinstance(error, TimeoutError):
        return UpstreamTimeout(str(error))
    if isinstance(error, ValueError):  # http.client refused a header or target we were given
        return BadRequest(f"the request cannot be forwarded ({error})")
    if isinstance(error, (OSError, http.client.HTTPException)):
        return UpstreamProtocolError(f"{type(error).__name__}: {error}")
    return error
