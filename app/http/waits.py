"""A bound on a gevent socket's waits, made once and restarted for each wait.

A socket timeout makes gevent build a ``Timeout``, in Python, for every wait.
A pooled upstream connection waits once per request, for the upstream's
first byte (app/upstream/pool.py, ``recv_within``); ``WaitTimer`` is a timer
watcher of the gevent loop, made once per connection and restarted around
each wait by ``again()``. ``again()``, not ``start()``: a libev timer that was
stopped or that fired keeps only the time it had left, and ``start()`` would
restart it with that.

The socket's own timeout must be off (None) during such a wait, or gevent
still builds its Timeout. A socket gevent does not run (the HTTP server in
threads, in tests) gets no timer: ``for_socket`` gives None, and the caller
keeps the socket's timeout.

The client's wait for its next request keeps its socket's timeout: under
load that request has mostly arrived already (no wait, so no Timeout), and
turning the socket's timeout off and on around every read would cost more
than the Timeouts it saves.
"""

from __future__ import annotations

import gevent
from gevent.socket import socket as gevent_socket


class WaitTimer:
    """``with timer:`` raises TimeoutError in the current greenlet if the block
    is still waiting after ``seconds``; the same ``seconds`` every time."""

    __slots__ = ("seconds", "timer")

    def __init__(self, seconds: float):
        self.seconds = seconds
        # after == repeat: again() restarts it at the repeat value, in full.
        self.timer = gevent.get_hub().loop.timer(seconds, seconds, ref=False)

    @classmethod
    def for_socket(cls, sock, seconds: float) -> WaitTimer | None:
        """A timer for ``sock``'s waits; None for a socket gevent does not run."""
        return cls(seconds) if isinstance(sock, gevent_socket) else None

    def __enter__(self) -> None:
        self.timer.again(gevent.getcurrent().throw, TimeoutError)

    def __exit__(self, *exc_info) -> None:
        self.timer.stop()

    def close(self) -> None:
        self.timer.close()
