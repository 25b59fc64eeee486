"""Upstream connections, kept per host: checkout, checkin, discard.

A connection is reused only when it is proven clean, as nginx and HAProxy
decide it:

- at checkin (the caller's proof): the response was read exactly to its end,
  nothing was received beyond it, the upstream did not say ``close``, and the
  request was sent whole. Anything else is discarded, never pooled;
- at checkout: an idle connection that is readable (data, or end-of-file) is
  closed, never used: bytes that arrive on an idle connection belong to no
  request. So is one idle for longer than ``timeout.idle``, which the upstream
  may be closing at this moment.

Connections are urllib3's public ``HTTPConnection`` (TLS upstreams plug in as
``HTTPSConnection``), made with the socket options of the worker's
``requests.Session`` (app/upstream/session.py), which owns the connection settings.
Idle connections are taken newest first: the ones used least go idle long
enough to be closed, so the pool shrinks after a burst.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

from gevent.monkey import get_original
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from app.errors import UpstreamConnectError, UpstreamTLSError
from app.http.framing import Stream
from app.http.waits import WaitTimer
from app.upstream.tls import UpstreamTLSTarget

# The unpatched poll: a zero-timeout readiness check is one poll() syscall, with
# no hub switch (gevent's patched select would add a greenlet round trip).
_poll = get_original("select", "poll")
_POLLIN = get_original("select", "POLLIN")
# The peer shut its side down (FIN), or the connection failed: seen by the
# kernel under any bytes still unread, and the same for a TLS socket.
_HANGUP = (
    get_original("select", "POLLRDHUP")
    | get_original("select", "POLLHUP")
    | get_original("select", "POLLERR")
)


def peer_closed(sock) -> bool:
    """True when the peer closed (or reset) ``sock``, without reading or waiting.

    Bytes waiting to be read (a pipelined request, a TLS record) do not count:
    only the end of the peer's side does.
    """
    poller = _poll()
    poller.register(sock, _HANGUP)
    return bool(poller.poll(0))


class UpstreamConnection:
    """One connection to a host: urllib3's connection, and what was received on it."""

    __slots__ = (
        "conn",
        "deadline",
        "idle_since",
        "poller",
        "read_timeout",
        "sock",
        "sock_timeout",
        "stream",
        "tls",
        "wait_timer",
    )

    def __init__(self, conn: HTTPConnection):
        self.conn = conn
        self.sock = conn.sock
        self.sock_timeout = self.sock.gettimeout()
        self.tls = isinstance(conn, HTTPSConnection)
        self.stream = Stream(self.recv)
        # Its socket registered once, for the readiness check at each checkout.
        self.poller = _poll()
        self.poller.register(self.sock.fileno(), _POLLIN)
        self.idle_since = 0.0
        self.deadline: float | None = None  # the exchange's end (timeout.response)
        self.read_timeout = 0.0
        # The bound of this connection's waits of one interval (recv_within).
        self.wait_timer: WaitTimer | None = None

    def start_exchange(self, read_timeout: float, deadline: float | None) -> None:
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.set_timeout(read_timeout)

    def set_timeout(self, seconds: float) -> None:
        """The socket's timeout, set only when it changes (gevent's settimeout is Python)."""
        if seconds != self.sock_timeout:
            self.sock.settimeout(seconds)
            self.sock_timeout = seconds

    def recv(self, size: int) -> bytes:
        """One recv, within the read timeout and what is left of the exchange's time."""
        timeout = self.read_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left < timeout:
                if left <= 0:
                    raise TimeoutError("timeout.response reached")
                timeout = left
        self.set_timeout(timeout)
        return self.sock.recv(size)

    def recv_within(self, interval: float, size: int) -> bytes:
        """One recv within ``interval`` seconds (TimeoutError after), the same
        ``interval`` at every call on this connection: under a WaitTimer
        (app/http/waits.py) made at the first. The socket's own timeout is off
        meanwhile and stays off: every other recv and every exchange sets its own.
        """
        timer = self.wait_timer
        if timer is None:
            timer = self.wait_timer = WaitTimer.for_socket(self.sock, interval)
            if timer is None:  # not a gevent socket: its own timeout
                self.set_timeout(interval)
                return self.sock.recv(size)
        self.set_timeout(None)
        with timer:
            return self.sock.recv(size)

    def readable(self) -> bool:
        """True when data or end-of-file (or an error) waits on the socket, without waiting."""
        return bool(self.poller.poll(0))

    def buffered(self) -> bool:
        """Bytes received and not consumed: ours, or TLS data inside the ssl layer."""
        return bool(self.stream.pending) or (self.tls and self.sock.pending() > 0)

    def close(self) -> None:
        self.conn.close()
        # The stream reads through this connection's own recv: a reference cycle,
        # freed only by a full collection of the cyclic GC, which a worker runs
        # minutes apart, so closed connections piled up in between where upstreams
        # close idle ones (docs/bench.md, "Where the memory goes"). The closed
        # socket's recv keeps a read after close an OSError.
        self.stream.recv = self.sock.recv
        if self.wait_timer is not None:
            self.wait_timer.close()


class HostPool:
    """The idle connections to one host of one worker: (address, port), and for
    https the TLS settings too (app/upstream/tls.py)."""

    def __init__(
        self,
        address: str,
        port: int,
        maxsize: int,
        socket_options: list,
        tls: UpstreamTLSTarget | None = None,
    ):
        self.address = address
        self.port = port
        self.maxsize = maxsize
        self.socket_options = socket_options
        self.tls = tls
        self._context: ssl.SSLContext | None = None  # made on the first connect
        self.idle: list[UpstreamConnection] = []  # oldest first
        self.clock: Callable[[], float] = time.monotonic
        self.closed = False  # the host left: connections in use are closed when done

    def checkout(
        self, connect_timeout: float, idle_timeout: float
    ) -> tuple[UpstreamConnection, bool]:
        """A connection ready for a request, and whether it was reused.

        UpstreamConnectError when a new connection cannot be made (nothing was sent).
        """
        now = self.clock()
        while self.idle:
            connection = self.idle.pop()
            stale = now - connection.idle_since > idle_timeout
            if stale or connection.readable() or connection.buffered():
                connection.close()
                continue
            return connection, True
        return self.connect(connect_timeout), False

    def connect(self, connect_timeout: float) -> UpstreamConnection:
        conn = self._new_connection(connect_timeout)
        try:
            conn.connect()
        except (ssl.SSLError, ssl.CertificateError) as error:
            conn.close()
            raise UpstreamTLSError(f"{self.address}:{self.port}: {error}") from None
        except (NewConnectionError, ConnectTimeoutError, OSError, ValueError) as error:
            conn.close()
            if _is_tls_failure(error):
                raise UpstreamTLSError(f"{self.address}:{self.port}: {error}") from None
            raise UpstreamConnectError(f"{self.address}:{self.port}: {error}") from None
        return UpstreamConnection(conn)

    def _new_connection(self, connect_timeout: float) -> HTTPConnection:
        options = {"timeout": connect_timeout, "socket_options": self.socket_options}
        if self.tls is None:
            return HTTPConnection(self.address, self.port, **options)
        if self._context is None:
            self._context = self.tls.context()
        return HTTPSConnection(
            self.address,
            self.port,
            ssl_context=self._context,
            cert_reqs=self.tls.cert_reqs,
            server_hostname=self.tls.server_name,
            # verify: the ssl module checks the name (check_hostname); else nothing.
            assert_hostname=None if self.tls.verify else False,
            **options,
        )

    def checkin(self, connection: UpstreamConnection) -> None:
        """Keep a connection the caller proved clean (see the module docstring)."""
        connection.deadline = None
        if self.closed or len(self.idle) >= self.maxsize:
            connection.close()
            return
        connection.idle_since = self.clock()
        self.idle.append(connection)

    def discard(self, connection: UpstreamConnection) -> None:
        connection.close()

    def close(self) -> None:
        """Close every idle connection (the host left the config)."""
        self.closed = True
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()


class Pools:
    """Every host's pool of one worker, with the Session's connection settings."""

    def __init__(self, maxsize: int, socket_options: list | None = None):
        self.maxsize = maxsize
        self.socket_options = (
            HTTPConnection.default_socket_options if socket_options is None else socket_options
        )
        self.pools: dict[tuple, HostPool] = {}

    @classmethod
    def from_session(cls, session) -> Pools:
        """Pools made with the settings of ``session``'s adapter (pool depth, socket options)."""
        settings = session.get_adapter("http://").poolmanager.connection_pool_kw
        return cls(settings.get("maxsize", 1), settings.get("socket_options"))

    def get(self, address: str, port: int, tls: UpstreamTLSTarget | None = None) -> HostPool:
        key = (address, port, tls)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = HostPool(address, port, self.maxsize, self.socket_options, tls)
        return pool

    def drop(self, address: str, port: int) -> None:
        """A host left: close its idle connections (those in use close when done)."""
        for key in [key for key in self.pools if key[:2] == (address, port)]:
            self.pools.pop(key).close()

    def idle(self, address: str, port: int) -> int:
        """Idle connections kept open to a host, over all its TLS settings (pool gauge)."""
        return sum(len(pool.idle) for key, pool in self.pools.items() if key[:2] == (address, port))


def _is_tls_failure(error: BaseException) -> bool:
    """urllib3 wraps some handshake failures (NewConnectionError from an SSLError)."""
    cause = error.__cause__ or error.__context__
    return isinstance(error, ssl.SSLError) or isinstance(
        cause, (ssl.SSLError, ssl.CertificateError)
    )
