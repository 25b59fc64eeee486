"""A WebSocket tunnel: after ``101 Switching Protocols``, bytes copied both ways.

As HAProxy tunnels an upgrade with no extra config: the upstream's 101 head
goes to the client as it came, any bytes either side sent early go first, then
one greenlet per direction copies until both sides are done. The upstream
connection is the tunnel's own (never pooled, never retried once 101 was sent).

- ``timeout.tunnel_idle`` with no byte either way closes a tunnel. Reads and
  sends wait up to that long: a peer slow to read holds its direction back
  for up to ``tunnel_idle`` before it counts as gone. (A wait is never done on
  the raw file descriptor: gevent cannot close a socket under such a watcher.)
- A half-close (EOF from one side) is passed on with ``shutdown(SHUT_WR)`` on a
  plain socket. A TLS socket is never shut down halfway (that would drop its
  TLS layer, and ciphertext would flow as data): that direction just ends and
  the other one goes on until its own end or the idle limit.

Each tunnel ends with one reason: ``client`` or ``upstream`` (that side closed
or failed first), ``idle``, or ``shutdown`` (the worker is stopping:
``close``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

from app.http.framing import send_all

CHUNK = 64 * 1024


class Tunnel:
    def __init__(self, client, upstream, idle_timeout: float):
        self.sockets = {"client": client, "upstream": upstream}
        self.idle_timeout = idle_timeout
        self.last_activity = time.monotonic()
        self.sent = {"client": 0, "upstream": 0}  # bytes delivered to each side
        self.reason: str | None = None  # why it ended: the first cause wins
        self.finished = False  # both sockets closed: every pump stops
        self.opened = time.monotonic()

    def run(self, to_upstream: bytes = b"", to_client: bytes = b"") -> str:
        """Copy both ways until both directions end; return the close reason."""
        import gevent

        if self.finished:
            return self.reason or "shutdown"
        for sock in self.sockets.values():
            sock.settimeout(self.idle_timeout)
        for target, data in (("upstream", to_upstream), ("client", to_client)):
            if data and not self._deliver_or_end(target, data):
                break
        else:
            pumps = [
                gevent.spawn(self._pump, "client", "upstream"),
                gevent.spawn(self._pump, "upstream", "client"),
            ]
            gevent.joinall(pumps)
        self.finished = True
        self._close()
        return self.reason or "client"

    def close(self, reason: str) -> None:
        """End the tunnel from outside (``shutdown``): both sockets are closed."""
        self._end(reason)

    def _pump(self, source: str, target: str) -> None:
        src = self.sockets[source]
        while not self.finished:
            try:
                data = src.recv(CHUNK)
            except TimeoutError:
                # Quiet this way for tunnel_idle; the other way may not have been.
                if time.monotonic() - self.last_activity >= self.idle_timeout:
                    self._end("idle")
                continue
            except (OSError, ValueError):
                self._end(source)
                return
            if not data:
                self._half_close(source, target)
                return
            if not self._deliver_or_end(target, data):
                return

    def _deliver_or_end(self, target: str, data: bytes) -> bool:
        try:
            send_all(self.sockets[target], data)
        except (OSError, ValueError):
            self._end(target)
            return False
        self.sent[target] += len(data)
        self.last_activity = time.monotonic()
        return True

    def _half_close(self, source: str, target: str) -> None:
        """``source`` finished sending: tell ``target`` if it can be told; the
        other direction goes on."""
        if self.reason is None:
            self.reason = source  # the side that closed first ends the tunnel's story
        sock = self.sockets[target]
        if isinstance(sock, ssl.SSLSocket):
            return  # never half of a TLS connection (module docstring)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._end(target)

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.finished = True
        self._close()

    def _close(self) -> None:
        for sock in self.sockets.values():
            with contextlib.suppress(OSError):
                sock.close()
