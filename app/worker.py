"""gunicorn's gevent worker, with its accept batch sized for a proxy under load.

gunicorn sets ``max_accept = 1`` on each worker's gevent StreamServer when it
runs several workers, to spread new connections between them. Under load that
starves them instead: one accept per turn of the event loop, and a turn that
serves a few hundred busy connections takes tens of milliseconds, so new
connections wait seconds in the listen queue (measured: 70 of 400 still
queued after 5 s, and wrk timeouts). Here each turn accepts up to
``ACCEPT_BATCH`` connections: new clients get in within one turn, and a batch
this small still leaves connections for the other workers.
"""

from __future__ import annotations

from gunicorn.workers import ggevent

ACCEPT_BATCH = 16


class BatchAcceptingServer(ggevent.StreamServer):
    """A StreamServer whose max_accept stays ACCEPT_BATCH whatever gunicorn sets."""

    @property
    def max_accept(self) -> int:
        return ACCEPT_BATCH

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        pass  # gunicorn's 1: see the module docstring


class GeventWorker(ggevent.GeventWorker):
    def run(self):
        # ggevent.run() builds its servers from its module's StreamServer name.
        ggevent.StreamServer = BatchAcceptingServer
        super().run()
