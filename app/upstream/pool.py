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

import time
from collections.abc import Callable

from gevent.monkey import get_original
from urllib3.connection import HTTPConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from app.errors import UpstreamConnectError
from app.http.framing import Stream

# The unpatched poll: a zero-timeout readiness check is one poll() syscall, with
# no hub switch (gevent's patched select would add a greenlet round trip).
_poll = get_original("select", "poll")
_POLLIN = get_original("select", "POLLIN")


def readable(sock) -> bool:
    """True when data or end-of-file (or an error) waits on ``sock``, without waiting."""
    poller = _poll()
    poller.register(sock, _POLLIN)
    return bool(poller.poll(0))


class UpstreamConnection:
    """One connection to a host: urllib3's connection, and what was received on it."""

    __slots__ = ("conn", "deadline", "idle_since", "read_timeout", "sock", "stream")

    def __init__(self, conn: HTTPConnection):
        self.conn = conn
        self.sock = conn.sock
        self.stream = Stream(self.recv)
        self.idle_since = 0.0
        self.deadline: float | None = None  # the exchange's end (timeout.response)
        self.read_timeout = 0.0

    def start_exchange(self, read_timeout: float, deadline: float | None) -> None:
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.sock.settimeout(read_timeout)

    def recv(self, size: int) -> bytes:
        """One recv, within the read timeout and what is left of the exchange's time."""
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left < self.read_timeout:
                if left <= 0:
                    raise TimeoutError("timeout.response reached")
                self.sock.settimeout(left)
        return self.sock.recv(size)

    def close(self) -> None:
        self.conn.close()


class HostPool:
    """The idle connections to one host (address, port) of one worker."""

    def __init__(self, address: str, port: int, maxsize: int, socket_options: list):
        self.address = address
        self.port = port
        self.maxsize = maxsize
        self.socket_options = socket_options
        self.idle: list[UpstreamConnection] = []  # oldest first
        self.clock: Callable[[], float] = time.monotonic

    def checkout(
        self, connect_timeout: float, idle_timeout: float
    ) -> tuple[UpstreamConnection, bool]:
        """A connection ready for a request, and whether it was reused.

        UpstreamConnectError when a new connection cannot be made (nothing was sent).
        """
        now = self.clock()
        while self.idle:
            connection = self.idle.pop()
            if now - connection.idle_since > idle_timeout or readable(connection.sock):
                connection.close()
                continue
            return connection, True
        return self.connect(connect_timeout), False

    def connect(self, connect_timeout: float) -> UpstreamConnection:
        conn = HTTPConnection(
            self.address, self.port, timeout=connect_timeout, socket_options=self.socket_options
        )
        try:
            conn.connect()
        except (NewConnectionError, ConnectTimeoutError, OSError) as error:
            conn.close()
            raise UpstreamConnectError(f"{self.address}:{self.port}: {error}") from None
        return UpstreamConnection(conn)

    def checkin(self, connection: UpstreamConnection) -> None:
        """Keep a connection the caller proved clean (see the module docstring)."""
        connection.deadline = None
        if len(self.idle) >= self.maxsize:
            connection.close()
            return
        connection.idle_since = self.clock()
        self.idle.append(connection)

    def discard(self, connection: UpstreamConnection) -> None:
        connection.close()

    def close(self) -> None:
        """Close every idle connection (the host left the config)."""
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
        self.pools: dict[tuple[str, int], HostPool] = {}

    @classmethod
    def from_session(cls, session) -> Pools:
        """Pools made with the settings of ``session``'s adapter (pool depth, socket options)."""
        settings = session.get_adapter("http://").poolmanager.connection_pool_kw
        return cls(settings.get("maxsize", 1), settings.get("socket_options"))

    def get(self, address: str, port: int) -> HostPool:
        pool = self.pools.get((address, port))
        if pool is None:
            pool = self.pools[(address, port)] = HostPool(
                address, port, self.maxsize, self.socket_options
            )
        return pool

    def idle(self, address: str, port: int) -> int:
        """Idle connections kept open to a host (for the pool gauge)."""
        pool = self.pools.get((address, port))
        return len(pool.idle) if pool else 0
