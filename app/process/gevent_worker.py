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

A listener with ``tls`` in proxy.yaml terminates TLS here (app/http/tls.py),
for both HTTP servers; the admin listener always stays plain HTTP (gunicorn's
own ``--certfile`` would put TLS on every bind). A connection whose ALPN chose
``h2`` goes to gunicorn's HTTP/2 support (``AsyncWorker.handle_http2``), which
serves each stream through the same WSGI app.
"""

from __future__ import annotations

import _socket
import functools
import os

import gevent
from gevent.resolver.thread import Resolver as ThreadResolver
from gevent.server import StreamServer
from gunicorn.workers import ggevent

from app.config import Listen
from app.http.framing import HeadLimits
from app.http.server import SERVER_NAME, Server
from app.http.tls import handshake, is_tls, server_context
from app.process.accept import Fairness, FairServer
from app.process.turns import gevent_turns

ACCEPT_BATCH = 64


class NumericFirstResolver(ThreadResolver):
    """gevent's default resolver, except that it converts a numeric address itself.

    gevent hands every ``getaddrinfo`` to a thread of its pool, even for an IP
    address, and urllib3 asks for one each time it connects upstream: a worker
    would start threads (each with its own stack and malloc arena) to convert
    the addresses of proxy.yaml. With ``AI_NUMERICHOST`` the C library converts
    an address at once and refuses a name without a lookup; names still go to
    the pool. (``_socket``: the socket module's function is gevent's, which
    calls this one.)
    """

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        try:
            numeric = flags | _socket.AI_NUMERICHOST
            return _socket.getaddrinfo(host, port, family, type, proto, numeric)
        except _socket.gaierror:
            return super().getaddrinfo(host, port, family, type, proto, flags)


class GeventGunicornServerWorker(ggevent.GeventWorker):
    """gunicorn's gevent worker, HTTP by gunicorn's parser (PROXY_HTTP_SERVER=gunicorn).

    Kept as the reference the bad-input tests run against, next to lbproxy's server.
    """

    def init_process(self):
        # Before the hub makes its resolver; GEVENT_RESOLVER, when set, is the user's choice.
        if not os.environ.get("GEVENT_RESOLVER"):
            gevent.config.resolver = NumericFirstResolver
        super().init_process()

    def server_class(self, listener, *, application, spawn, log, handler_class, environ, **ssl):
        """gunicorn's hook: the gevent server for one listener (module docstring)."""
        listen = self.listen_of(listener)
        tls = listen.tls if listen is not None else None
        environ["wsgi.url_scheme"] = "https" if tls is not None else "http"
        handle = self.handler_for(listener, environ)
        if tls is not None:
            handle = functools.partial(self.serve_tls, server_context(tls), listener, handle)
        if listen is not None and self.fairness is not None:  # proxy traffic: shared fairly
            server = FairServer(listener, handle=handle, spawn=spawn, fairness=self.fairness, **ssl)
        else:
            server = StreamServer(listener, handle=handle, spawn=spawn, **ssl)
        server.max_accept = ACCEPT_BATCH
        self.servers.append(server)
        return server

    @functools.cached_property
    def fairness(self) -> Fairness | None:
        """This worker's share of the pod's connections (app/process/accept.py)."""
        router = getattr(self.wsgi, "router", None)
        return Fairness(router.zone.area) if router is not None else None

    @functools.cached_property
    def servers(self) -> list:
        """The gevent servers of this worker (server_class made them)."""
        return []

    def handler_for(self, listener, environ: dict):
        return functools.partial(self.handle, listener)  # gunicorn's AsyncWorker.handle

    def listen_of(self, listener) -> Listen | None:
        """The proxy.yaml listener a bound socket is for; None for the admin listener."""
        port = listener.getsockname()[1]
        config = getattr(self.wsgi, "config", None)
        listeners = config.listeners if config is not None else ()
        return next((listen for listen in listeners if listen.port == port), None)

    def serve_tls(self, context, listener, handle, client, addr) -> None:
        """One TLS connection: the handshake within client_timeout, then HTTP/1.1 or h2."""
        tls = handshake(context, client, self.cfg.keepalive)
        if tls is None:
            return
        if tls.selected_alpn_protocol() != "h2":
            handle(tls, addr)
            return
        try:
            self.handle_http2(listener, tls, addr)
        finally:
            tls.close()

    # gunicorn decides a request's scheme from its own --certfile setting; a TLS
    # socket of ours is https all the same (X-Forwarded-Proto, wsgi.url_scheme).
    def handle_request(self, listener_name, req, sock, addr):
        if is_tls(sock):
            req.scheme = "https"
        super().handle_request(listener_name, req, sock, addr)
        if sock.fileno() == -1:
            # The app took the connection over and closed it (a tunnel ended):
            # gunicorn's keep-alive loop would read the closed socket next.
            raise StopIteration()

    def handle_exit(self, sig, frame):
        """SIGTERM (a stop, or a reload's old worker): tunnels end now, as a
        reload cuts them (docs/websocket.md), the health checks move to another
        worker; requests in flight finish."""
        # Stop accepting now rather than at gunicorn's next 1 s tick: new
        # connections (and tunnels) go to the workers that stay.
        # A SIGTERM may come while the worker is still booting: no app yet, no servers.
        app = getattr(self, "wsgi", None)
        for server in self.servers if app is not None else ():
            gevent.spawn(server.close)
        if app is not None and self.fairness is not None:
            # Now, not when the spawned closes run: an accept still in gevent's
            # batch must not count this worker in again.
            self.fairness.leave()
        close_tunnels = getattr(app, "close_tunnels", None)
        if close_tunnels is not None:
            gevent.spawn(close_tunnels)
        # The pod's health checks pass to a worker that stays (app/traffic/shared.py).
        stop_probing = getattr(app, "stop_probing", None)
        if stop_probing is not None:
            gevent.spawn(stop_probing)
        super().handle_exit(sig, frame)

    def handle_http2_request(self, listener_name, req, sock, addr, h2_conn):
        if is_tls(sock):
            req.scheme = "https"
        return super().handle_http2_request(listener_name, req, sock, addr, h2_conn)


class GeventLbproxyServerWorker(GeventGunicornServerWorker):
    """The gevent worker, serving HTTP with lbproxy's own server (app/http/server.py).

    gunicorn's process model, signals, limits and logging stay; only the
    reading of requests and writing of responses is app/http/server.py's.
    Its connections take turns (app/process/turns.py).
    """

    turns = None  # made with the first listener's handler, after the fork

    def handler_for(self, listener, environ: dict):
        host, port = listener.getsockname()[:2]
        environ.update(
            {
                "SERVER_SOFTWARE": SERVER_NAME,
                "SERVER_NAME": str(host),
                "SERVER_PORT": str(port),
                "SCRIPT_NAME": "",
            }
        )
        limits = HeadLimits(
            request_line=self.cfg.limit_request_line,
            header_count=self.cfg.limit_request_fields,
            header_size=self.cfg.limit_request_field_size,
        )
        if self.turns is None:
            self.turns = gevent_turns()  # one for the worker: every listener's connections
        return Server(self.wsgi, environ, limits, self.cfg.keepalive, self, self.turns).serve
