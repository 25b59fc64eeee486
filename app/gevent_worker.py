"""The gevent workers, as they run after the fork (app/worker.py hands over to them).

Both accept in batches sized for a proxy under load; LeanWorker serves HTTP
with lbproxy's own server (app/server.py), GeventWorker with gunicorn's.

gunicorn sets ``max_accept = 1`` on each worker's gevent StreamServer when it
runs several workers, to spread new connections between them. Under load that
starves them instead: one accept per turn of the event loop, and a turn that
serves a few hundred busy connections takes tens of milliseconds, so new
connections wait seconds in the listen queue (measured: 70 of 400 still
queued after 5 s, and wrk timeouts). Here each turn accepts up to
``ACCEPT_BATCH`` connections: new clients get in within a turn or two, and
every worker still takes its share. 16 left 1000 connections opened at once
waiting over 2 s for their turn (63 wrk timeouts); 64 has none.
"""

from __future__ import annotations

import functools

from gunicorn.http.wsgi import base_environ
from gunicorn.workers import ggevent

from app.http11 import HeadLimits
from app.server import SERVER_NAME, Server

ACCEPT_BATCH = 64


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


class LeanWorker(GeventWorker):
    """The gevent worker, serving HTTP with lbproxy's own server (app/server.py).

    gunicorn's process model, signals, limits and logging stay; only the
    reading of requests and writing of responses is app/server.py's.
    """

    def handle(self, listener, client, addr):
        server = self._servers.get(listener)
        if server is None:
            server = self._servers[listener] = self._server_for(listener)
        server.serve(client, addr)

    @functools.cached_property
    def _servers(self) -> dict:
        return {}

    def _server_for(self, listener) -> Server:
        host, port = listener.getsockname()[:2]
        environ = base_environ(self.cfg)
        environ.update(
            {
                "SERVER_SOFTWARE": SERVER_NAME,
                "SERVER_NAME": str(host),
                "SERVER_PORT": str(port),
                "SCRIPT_NAME": "",
                "wsgi.url_scheme": "http",
                "wsgi.multithread": True,
            }
        )
        limits = HeadLimits(
            request_line=self.cfg.limit_request_line,
            header_count=self.cfg.limit_request_fields,
            header_size=self.cfg.limit_request_field_size,
        )
        return Server(self.wsgi, environ, limits, self.cfg.keepalive, self)
