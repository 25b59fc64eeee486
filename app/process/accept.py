"""Fair accepting: the workers of a pod share the connections of one socket.

gunicorn's workers all accept from the listening socket the master bound. The
kernel wakes them all when connections arrive, and the first to run takes
every connection waiting, up to a batch at a time (ACCEPT_BATCH): a burst of
new connections can land 95/5 on two workers, and one worker then serves
nearly all the traffic while the other idles.

So each worker publishes its open connections in the pod's shared area
(app/traffic/shared.py) once it listens and whenever it is about to accept,
and defers while it
holds more than its share: the average of the accepting workers, plus a slack.
Deferring stops its accept watcher for PAUSE; the other workers, woken by the
same connections, take them meanwhile. A worker never defers for longer than
MAX_DEFER in a row: when the others cannot accept (busy, stuck), connections
are not left waiting. A worker that stops (SIGTERM, a reload's old one) leaves
the count (-1) at once, and the master clears its column when it exits.

The shared socket stays, as gunicorn has it: a reload loses no connection
(per-worker SO_REUSEPORT sockets would drop those queued on a closing one).
"""

from __future__ import annotations

import time

from gevent.server import StreamServer

from app.traffic.shared import SharedArea

PAUSE = 0.002  # seconds a deferring worker stops accepting
# The longest a worker defers in a row: above a busy worker's turn of its event
# loop (tens of ms under load), so the other worker gets to accept.
MAX_DEFER = 0.2
SLACK = 2  # connections over the average a worker may hold, at least ...
SLACK_SHARE = 0.05  # ... or this share of the average


class Fairness:
    """One worker's side: its open connections against the pod's."""

    def __init__(self, area: SharedArea):
        self.area = area
        self.pools: list = []  # the gevent pools of this worker's fair servers
        self._episode_start = 0.0  # when the current run of deferrals began
        self._last_deferral = float("-inf")

    def open_connections(self) -> int:
        return sum(len(pool) for pool in self.pools)

    def over_share(self) -> bool:
        """Publish this worker's count; True when it holds more than its share."""
        own = self.open_connections()
        self.area.publish_connections(own)
        counts = self.area.accepting_counts()
        if len(counts) < 2:
            return False
        average = sum(counts) / len(counts)
        return own > average + max(SLACK, average * SLACK_SHARE)

    def defer(self) -> bool:
        """Whether to leave the connections waiting now to the other workers."""
        if not self.over_share():
            return False
        now = time.monotonic()
        if now - self._last_deferral > 2 * PAUSE:
            self._episode_start = now  # a new run of deferrals
        self._last_deferral = now
        return now - self._episode_start < MAX_DEFER

    def leave(self) -> None:
        """This worker accepts no more: the others share without it."""
        self.area.publish_connections(-1)


class FairServer(StreamServer):
    """gevent's StreamServer, deferring to the other workers when over its share."""

    def __init__(self, *args, fairness: Fairness, **kwargs):
        super().__init__(*args, **kwargs)
        self.fairness = fairness
        if self.pool is not None:  # gunicorn's workers always give one
            fairness.pools.append(self.pool)
        # Counted from now on: a worker that has not yet woken for a burst is
        # still one whose share the others leave to it.
        fairness.area.publish_connections(fairness.open_connections())

    def do_read(self):
        if self.fairness.defer():
            self.stop_accepting()
            timer = self.loop.timer(PAUSE)
            timer.start(self._resume, timer)
            return None  # gevent's accept loop ends this turn on None
        return super().do_read()

    def _resume(self, timer) -> None:
        timer.close()
        if self.started:  # not closed meanwhile
            self.start_accepting()
