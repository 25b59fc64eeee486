"""Fair accepting: the workers of a pod share the connections of one socket.

gunicorn's workers all accept from the listening socket the master bound. The
kernel wakes them all when connections arrive, and the first to run takes
every connection waiting, up to a batch at a time (ACCEPT_BATCH): a burst of
new connections can land 95/5 on two workers, and one worker then serves
nearly all the traffic while the other idles.

So each worker publishes its open connections in the pod's shared area
(app/traffic/shared.py) once it listens, as it accepts and as each connection
ends, and defers while it holds more than its share: the average of the
accepting workers, plus a slack. Deferring stops its accept watcher for
PAUSE; the other workers, woken by the same connections, take them meanwhile.
After MAX_DEFER of deferring in a row (the others are busy, stuck or gone) a
worker accepts every connection until it is back within its share. A worker
that stops (SIGTERM, max_requests, a reload's old one) leaves the count (-1)
at once and for good, and the master clears its column when it exits.

The shared socket stays, as gunicorn has it: a reload loses no connection
(per-worker SO_REUSEPORT sockets would drop those queued on a closing one).
"""

from __future__ import annotations

import functools
import time

from gevent.server import StreamServer

from app.traffic.shared import SharedArea

PAUSE = 0.002  # seconds a deferring worker stops accepting
# The longest a run of deferrals lasts: above a busy worker's turn of its event
# loop (tens of ms under load), so the other worker gets to accept.
MAX_DEFER = 0.2
SLACK = 2  # connections over the average a worker may hold, at least ...
SLACK_SHARE = 0.05  # ... or this share of the average


class Fairness:
    """One worker's side: its open connections against the pod's."""

    def __init__(self, area: SharedArea):
        self.area = area
        self.open = 0  # client connections accepted by this worker's fair servers, not closed
        self.left = False  # it stopped accepting: it never counts again
        self._deferring_since: float | None = None  # the current run of deferrals

    def publish(self) -> int:
        """Publish this worker's count of open connections, and return it."""
        if not self.left:
            self.area.publish_connections(self.open)
        return self.open

    def over_share(self) -> bool:
        """Publish this worker's count; True when it holds more than its share."""
        own = self.publish()
        counts = self.area.accepting_counts()
        if self.left or len(counts) < 2:
            return False
        average = sum(counts) / len(counts)
        return own > average + max(SLACK, average * SLACK_SHARE)

    def defer(self) -> bool:
        """Whether to leave the connections waiting now to the other workers.

        A run of deferrals lasts while the worker stays over its share: after
        MAX_DEFER of it (the others are busy, stuck or gone) it accepts every
        connection until it is back within its share.
        """
        if not self.over_share():
            self._deferring_since = None
            return False
        now = time.monotonic()
        if self._deferring_since is None:
            self._deferring_since = now
        return now - self._deferring_since < MAX_DEFER

    def leave(self) -> None:
        """This worker accepts no more: the others share without it, for good."""
        self.left = True
        self.area.publish_connections(-1)


class FairServer(StreamServer):
    """gevent's StreamServer, deferring to the other workers when over its share."""

    def __init__(self, listener, *, handle, fairness: Fairness, **kwargs):
        super().__init__(listener, handle=functools.partial(self._counted, handle), **kwargs)
        self.fairness = fairness
        self._resume_timer = None
        # Counted from now on: a worker that has not yet woken for a burst is
        # still one whose share the others leave to it.
        fairness.publish()

    def _counted(self, handle, sock, address) -> None:
        """Serve a connection; its end is published at once: the counts never lag
        behind closed connections (the next burst would go all to the other worker)."""
        try:
            handle(sock, address)
        finally:
            self.fairness.open -= 1
            self.fairness.publish()

    def do_read(self):
        if self.fairness.defer():
            self.stop_accepting()
            self._resume_timer = self.loop.timer(PAUSE)
            self._resume_timer.start(self._resume)
            return None  # gevent's accept loop ends this turn on None
        accepted = super().do_read()
        if accepted:  # counted at once: a batch of accepts sees each one
            self.fairness.open += 1
        return accepted

    def _resume(self) -> None:
        self._cancel_resume()
        if self.started:  # not closed meanwhile
            self.start_accepting()

    def _cancel_resume(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.close()
            self._resume_timer = None

    def stop_accepting(self) -> None:
        super().stop_accepting()
        self._cancel_resume()

    def close(self) -> None:
        """Stopping (SIGTERM, max_requests, a reload's old worker): out of the count."""
        self.fairness.leave()
        super().close()
