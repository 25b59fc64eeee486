"""A WebSocket tunnel: after ``101 Switching Protocols``, bytes copied both ways.

As HAProxy tunnels an upgrade with no extra config: the upstream's 101 head
goes to the client as it came, any bytes either side sent early go first, then
one greenlet per direction copies until both sides are done. A half-close is
passed on (``shutdown(SHUT_WR)``); no byte either way for ``timeout.tunnel_idle``
closes both sides. The upstream connection is the tunnel's own (never pooled,
never retried once 101 was sent).

Each tunnel ends with one reason: ``client`` or ``upstream`` (that side closed
or failed first), ``idle``, or ``shutdown`` (the worker is stopping:
``close_all``).
"""

from __future__ import annotations

import contextlib
import socket
import time

from app.http.framing import send_all

CHUNK = 64 * 1024
# How often a quiet direction wakes up to look at the idle limit and the worker.
TICK = 1.0


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

        try:
            if to_upstream:
                self._deliver("upstream", to_upstream)
            if to_client:
                self._deliver("client", to_client)
        except OSError:
            self._end("upstream" if to_upstream else "client")
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
        self._close()

    def _pump(self, source: str, target: str) -> None:
        src = self.sockets[source]
        while not self.finished:
            src.settimeout(min(TICK, self.idle_timeout))
            try:
                data = src.recv(CHUNK)
            except TimeoutError:
                if time.monotonic() - self.last_activity >= self.idle_timeout:
                    self._end("idle")
                continue
            except OSError:
                self._end(source)
                return
            if not data:
                self._half_close(source, target)
                return
            try:
                self._deliver(target, data)
            except OSError:
                self._end(target)
                return

    def _deliver(self, target: str, data: bytes) -> None:
        send_all(self.sockets[target], data)
        self.sent[target] += len(data)
        self.last_activity = time.monotonic()

    def _half_close(self, source: str, target: str) -> None:
        """``source`` finished sending: tell ``target``; the other way goes on."""
        if self.reason is None:
            self.reason = source  # the side that closed first ends the tunnel's story
        try:
            self.sockets[target].shutdown(socket.SHUT_WR)
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
