"""The gevent workers, as they run after the fork (app/process/worker.py hands over to them).

Both accept in batches sized for a proxy under load;
``GeventLbproxyServerWorker`` serves HTTP with lbproxy's own server
(app/http/server.py), ``GeventGunicornServerWorker`` with gunicorn's.

Each listener's gevent server comes from gunicorn's ``server_class`` hook
(``ggevent.GeventWorker.run`` calls ``self.server_class(listener,
application=, spawn=, log=, handler_class=, environ=, **ssl_args)``, as its
own pywsgi worker uses it). Here it is a method, so the server it builds knows
its worker. Without the hook, gunicorn sets ``max_accept = 1`` on each server
when it runs several workers, to spread new connections between them. Under
load that starves them instead: one accept per turn of the event loop, and a
turn that serves a few hundred busy connections takes tens of milliseconds, so
new connections wait seconds in the listen queue (measured: 70 of 400 still
queued after 5 s, and wrk timeouts). Here each turn accepts up to
``ACCEPT_BATCH`` connections: new clients get in within a turn or two, and
every worker still takes its share. 16 left 1000 connections opened at once
waiting over 2 s for their turn (63 wrk timeouts); 64 has none.
"""

from __future__ import annotations

import functools

from gevent.server import StreamServer
from gunicorn.workers import ggevent

from app.http.framing import HeadLimits
from app.http.server import SERVER_NAME, Server

ACCEPT_BATCH = 64


class GeventGunicornServerWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, HTTP by gunicorn's parser (PROXY_HTTP_SERVER=gunicorn).

    Kept as the reference the bad-input tests run against, next to lbproxy's server.
    """

    def server_class(self, listener, *, application, spawn, log, handler_class, environ, **ssl):
        """gunicorn's hook: the gevent server for one listener (module docstring)."""
        server = StreamServer(
            listener, handle=self.handler_for(listener, environ), spawn=spawn, **ssl
        )
        server.max_accept = ACCEPT_BATCH
        return server

    def handler_for(self, listener, environ: dict):
        return functools.partial(self.handle, listener)  # gunicorn's AsyncWorker.handle


class GeventLbproxyServerWorker(GeventGunicornServerWorker):
    """The gevent worker, serving HTTP with lbproxy's own server (app/http/server.py).

    gunicorn's process model, signals, limits and logging stay; only the
    reading of requests and writing of responses is app/http/server.py's.
    """

    def handler_for(self, listener, environ: dict):
        host, port = listener.getsockname()[:2]
        environ.update(
            {
                "SERVER_SOFTWARE": SERVER_NAME,
                "SERVER_NAME": str(host),
                "SERVER_PORT": str(port),
                "SCRIPT_NAME": "",
                "wsgi.url_scheme": "http",
            }
        )
        limits = HeadLimits(
            request_line=self.cfg.limit_request_line,
            header_count=self.cfg.limit_request_fields,
            header_size=self.cfg.limit_request_field_size,
        )
        return Server(self.wsgi, environ, limits, self.cfg.keepalive, self).serve
