"""Turns between a worker's connections: one that served a whole request while
the event loop never polled yields before its next.

gevent runs a greenlet until it has to wait. Under load the next request of a
kept-alive client, and the upstream's response, are often in their sockets
already when the greenlet reads them, so one connection can be served request
after request while the worker's other connections, ready too, wait for the
loop to poll again. Their latency is then set by the busiest connection, not by
the load: the more work a request does between its reads (the access log, the
metrics), the longer such runs last. asyncio and nginx give every ready
connection one callback per loop iteration; here a connection ends its turn
after each request. docs/bench.md ("Taking turns") has the measurements.

The polls are counted by a ``check`` watcher, which gevent's loop (libev or
libuv) runs right after each poll, before anything that poll woke: a greenlet
that waited for its socket or a timer at any point of the request was woken by
a later poll than the one it started under, and does not yield again. One that
never waited yields with ``gevent.sleep(0)``: it goes to the back of the
greenlets gevent has queued to run. gevent leaves those to poll again once its
switch interval (5 ms) has passed, checked every 50 of them, so connections
that wait for a poll get their turn within about that long. (A wait that
another greenlet ends without a poll, on a lock or an event, yields once more:
harmless.)
"""

from __future__ import annotations

from collections.abc import Callable


class Turns:
    """The loop's poll count, and the pause that gives the next turn away."""

    def __init__(self, loop, pause: Callable[[], None]):
        self.polls = 0
        self.pause = pause
        # ref=False: the watcher alone does not keep the loop running.
        self._watcher = loop.check(ref=False)
        self._watcher.start(self._polled)

    def _polled(self) -> None:
        self.polls += 1

    def close(self) -> None:
        self._watcher.close()


def gevent_turns() -> Turns:
    """Turns on the running gevent hub's loop."""
    import gevent

    return Turns(gevent.get_hub().loop, lambda: gevent.sleep(0))
