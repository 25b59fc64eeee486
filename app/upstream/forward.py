"""Send one request to one upstream host and read the response head.

The connection comes from the worker's pools (app/upstream/pool.py). The request head is
written in one send, with the target exactly as the client gave it (``requests``
re-quotes ``%7e`` to ``~``; ``urlopen`` upper-cases ``%2f``). The response head
is read by lbproxy's strict reader (app/http/framing.py), never by http.client, which
is lenient by design: every interim 1xx is skipped, and any framing doubt is a
502 with the connection closed. The body is left on the connection for
app/upstream/response.py to stream.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from app.config import Host, Timeout
from app.errors import (
    BadRequest,
    ClientAbort,
    ClientTimeout,
    ProxyError,
    UpstreamFramingError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from app.http.framing import (
    LAST_CHUNK,
    RECV_SIZE,
    IncompleteMessage,
    ProtocolError,
    ResponseHead,
    chunk,
    field_block,
    parse_response_head,
    response_reader,
    send_all,
)
from app.http.request import ProxyRequest
from app.upstream.pool import HostPool, Pools, UpstreamConnection, peer_closed
from app.upstream.response import UpstreamResponse
from app.upstream.tls import UpstreamTLSTarget

# While waiting for an upstream, look this often whether the client is still there.
CLIENT_CHECK_INTERVAL = 1.0
# The most a response head may take (nginx's proxy_buffer_size is 4-8 KiB; a
# larger head is an upstream error there too).
MAX_RESPONSE_HEAD = 64 * 1024
# Interim responses (100, 102, 103...) skipped before the final one.
MAX_INTERIM = 16

_BARE_LF = re.compile(rb"(?<!\r)\n")


class NoResponse(Exception):
    """The connection ended before any byte of a response (a stale pooled connection)."""


# Failures of a kept-alive connection the upstream closed while it sat idle.
_STALE_CONNECTION = (ConnectionResetError, BrokenPipeError, NoResponse)


@dataclass
class Attempt:
    """What one try at one host cost: for metrics and the access log."""

    host: Host
    connect_time: float | None = None  # None: a pooled connection was reused
    reused: bool = False


class Forwarder:
    def __init__(self, pools: Pools):
        self.pools = pools

    def idle(self, host: Host) -> int:
        """Idle connections kept open to ``host`` (for the pool gauge)."""
        return self.pools.idle(host.address, host.port)

    def send(
        self,
        host: Host,
        request: ProxyRequest,
        timeout: Timeout,
        deadline: float | None = None,
        tls: UpstreamTLSTarget | None = None,
    ) -> UpstreamResponse:
        """Forward ``request`` to ``host``; return the response with its body unread.

        Raises UpstreamConnectError when nothing was sent (safe to try another
        host), UpstreamTimeout, UpstreamProtocolError or ClientAbort otherwise.
        A pooled connection that the upstream closed while idle is retried once
        on a fresh connection, provided no body byte was taken from the client.
        ``deadline`` (monotonic) bounds the whole exchange, body included.
        ``tls``: speak https to the host, with these settings (app/upstream/tls.py).
        """
        pool = self.pools.get(host.address, host.port, tls)
        attempt = Attempt(host)
        if request.upgrade is not None:
            # A tunnel gets a connection of its own, never a pooled one, and
            # never goes back to the pool (UpstreamResponse.dedicated).
            connection = self._connect(pool, attempt, timeout)
            try:
                response = self._exchange(pool, connection, attempt, request, timeout, deadline)
            except _STALE_CONNECTION:  # a fresh connection: the upstream's failure
                raise UpstreamProtocolError("connection closed by the upstream") from None
            response.dedicated = True
            return response
        connection = self._checkout(pool, attempt, timeout)
        try:
            return self._exchange(pool, connection, attempt, request, timeout, deadline)
        except _STALE_CONNECTION:
            if not attempt.reused or not request.replayable:
                raise UpstreamProtocolError("connection reset by the upstream") from None
        request.stale_retries += 1
        connection = self._connect(pool, attempt, timeout)
        try:
            return self._exchange(pool, connection, attempt, request, timeout, deadline)
        except _STALE_CONNECTION:
            raise UpstreamProtocolError("connection reset by the upstream") from None

    def _checkout(self, pool: HostPool, attempt: Attempt, timeout: Timeout):
        started = time.perf_counter()
        connection, attempt.reused = pool.checkout(timeout.connect, timeout.idle)
        if not attempt.reused:
            attempt.connect_time = time.perf_counter() - started
        return connection

    def _connect(self, pool: HostPool, attempt: Attempt, timeout: Timeout):
        started = time.perf_counter()
        connection = pool.connect(timeout.connect)
        attempt.reused = False
        attempt.connect_time = time.perf_counter() - started
        return connection

    def _exchange(
        self,
        pool: HostPool,
        connection: UpstreamConnection,
        attempt: Attempt,
        request: ProxyRequest,
        timeout: Timeout,
        deadline: float | None,
    ) -> UpstreamResponse:
        """Send the request on ``connection`` and read the response head."""
        connection.start_exchange(timeout.read, deadline)
        started = time.perf_counter()
        try:
            _send_request(connection, request)
            if not connection.stream.pending:
                _wait_for_response(connection, request.client_socket)
            head = read_response_head(connection, request.method, request.upgrade is not None)
        except BaseException as error:
            pool.discard(connection)
            raise _translate(error) from None
        return UpstreamResponse(
            head,
            response_reader(head),
            connection,
            pool,
            host=attempt.host,
            request_id=request.request_id,
            connect_time=attempt.connect_time,
            upstream_time=time.perf_counter() - started,
        )


def read_response_head(
    connection: UpstreamConnection, method: str, upgrading: bool = False
) -> ResponseHead:
    """The final response's head; interim 1xx responses are read and dropped.

    ``101 Switching Protocols`` is final, and only for a request that asked
    for an upgrade (``upgrading``). NoResponse when the connection ends before
    any byte (a stale connection); ProtocolError for anything that is not a
    valid HTTP/1.1 response head.
    """
    stream = connection.stream
    for interim in range(MAX_INTERIM + 1):
        text = _read_head(stream, first=interim == 0)
        head = parse_response_head(text, method)
        if head.status == 101:
            if upgrading:
                return head
            raise ProtocolError("101 Switching Protocols to a request that asked for none")
        if not head.interim:
            return head
    raise ProtocolError("too many interim responses")


def _read_head(stream, first: bool) -> str:
    data = stream.pending
    searched = 0
    while (end := data.find(b"\r\n\r\n", searched)) < 0:
        if len(data) > MAX_RESPONSE_HEAD:
            raise ProtocolError("response head too large")
        if _BARE_LF.search(data):
            raise ProtocolError("a bare LF in a response head")
        searched = max(0, len(data) - 3)
        received = stream.recv(RECV_SIZE)
        if not received:
            stream.pending = b""
            if first and not data:
                raise NoResponse()
            raise IncompleteMessage("the upstream closed inside a response head")
        data += received
    if end > MAX_RESPONSE_HEAD:
        raise ProtocolError("response head too large")
    stream.pending = data[end + 4 :]
    return data[:end].decode("latin-1")


def _send_request(connection: UpstreamConnection, request: ProxyRequest) -> None:
    """Write the request head in one send, then the body (re-chunked if it came chunked).

    A client that sends its body too slowly gets 408 once the exchange's time is up.
    """
    sock = connection.sock
    body = request.body
    framing = ""
    if body is not None:
        framing = f"Content-Length: {body.length}\r\n"
        if body.chunked:
            framing = "Transfer-Encoding: chunked\r\n"
    send_all(sock, request_head(request.method, request.target, request.headers, framing))
    if body is None:
        return
    deadline = connection.deadline
    for data in body:
        if deadline is not None and time.monotonic() > deadline:
            raise ClientTimeout("timeout.response reached while the client sent its body")
        sock.sendall(chunk(data) if body.chunked else data)
    if body.chunked:
        sock.sendall(LAST_CHUNK)


# As http.client refuses them: a target with a control character or space.
_INVALID_TARGET = re.compile(r"[\x00-\x20\x7f]")


def request_head(
    method: str, target: str, headers: list[tuple[str, str]], framing: str = ""
) -> bytes:
    """The request line and headers, ready to send.

    ValueError for a target or header that would change the message's meaning
    on the wire (control characters, CR or LF): a second guard after the
    server's parser.
    """
    if _INVALID_TARGET.search(target) or _INVALID_TARGET.search(method):
        raise ValueError("control character or space in the request target")
    fields = field_block(headers) + framing
    return f"{method} {target} HTTP/1.1\r\n{fields}\r\n".encode("latin-1")


def _wait_for_response(connection: UpstreamConnection, client) -> None:
    """Receive the upstream's first bytes; give up if the client leaves meanwhile.

    A client that disconnects must not hold an upstream connection (and a
    slot of the upstream) until the read timeout: every CLIENT_CHECK_INTERVAL
    the client socket is checked for end-of-file. The wait is the upstream
    socket's own recv, on the watcher gevent keeps for it: a wait_read() would
    register a new watcher each time (an epoll_ctl and an fcntl per request).
    What arrives is left in the stream for the head reader; end-of-file leaves
    it empty, and the reader's own recv finds the end again.
    """
    upstream = connection.sock
    limit = connection.read_timeout
    if connection.deadline is not None:
        limit = min(limit, connection.deadline - time.monotonic())
    deadline = time.monotonic() + limit
    # The socket's timeout is left as the wait left it: the next recv (the rest
    # of the head, the body) or exchange sets its own (UpstreamConnection.recv).
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no response within timeout.read (or timeout.response)")
        try:
            if remaining > CLIENT_CHECK_INTERVAL:  # the usual wait: the connection's timer
                connection.stream.pending = connection.recv_within(CLIENT_CHECK_INTERVAL, RECV_SIZE)
            else:
                connection.set_timeout(remaining)
                connection.stream.pending = upstream.recv(RECV_SIZE)
            return
        except TimeoutError:
            # A client that left is told apart from a slow upstream, even at the end.
            if client is not None and _client_gone(client):
                raise ClientAbort("the client closed its connection while waiting") from None


def _client_gone(client) -> bool:
    # Never a recv: on a TLS socket, MSG_PEEK is refused and a read would take
    # a pipelined request's bytes; the kernel's hang-up flag needs neither.
    try:
        return peer_closed(client)
    except (OSError, ValueError):
        return True


def _translate(error: BaseException) -> BaseException:
    """Map a failure during the exchange to what the client is told."""
    if isinstance(error, (ProxyError, *_STALE_CONNECTION)):
        return error
    if isinstance(error, TimeoutError):
        return UpstreamTimeout(str(error))
    if isinstance(error, ProtocolError):
        return UpstreamFramingError(str(error))
    if isinstance(error, ValueError):  # a header or target we were given cannot be sent
        return BadRequest(f"the request cannot be forwarded ({error})")
    if isinstance(error, OSError):
        return UpstreamProtocolError(f"{type(error).__name__}: {error}")
    return error
