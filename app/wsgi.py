"""The WSGI entry point: ``gunicorn app.wsgi:application``.

One request, top to bottom, one room per step:

1. serve   (http/server.py)        the client's connection -> a parsed head, an environ
2. parse   (http/request.py)       environ -> target, domain, headers, body stream
3. route   (traffic/routing.py)    domain -> service: balancer, health, retry policy
4. pick    (traffic/balancer.py)   service -> a lease on one host in rotation
5. forward (upstream/forward.py)   pooled connection -> response head
6. stream  (upstream/response.py)  upstream body -> client, connection back to the pool
7. end     (observe/end.py)        the record finished, counted and logged, once

It stays a plain WSGI callable: gunicorn's own HTTP server
(``PROXY_HTTP_SERVER=gunicorn``) runs it unchanged, as the reference the
bad-input tests compare lbproxy's server with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from functools import partial

from gunicorn.workers.base_async import ALREADY_HANDLED

from app.config import ProxyConfig, Timeout, load_config
from app.errors import (
    BadRequest,
    ProxyError,
    UpstreamConnectError,
    UpstreamFramingError,
    UpstreamProtocolError,
    UpstreamTimeout,
    WorkerStopping,
)
from app.http.framing import send_all
from app.http.request import TAKE_BUFFERED_KEY, ProxyRequest, parse_request
from app.observe.admin import AdminApp
from app.observe.end import END_BATCH, AccessLog, RequestEnd
from app.observe.metrics import Metrics, statsd_settings
from app.observe.record import Record, request_id
from app.process import settings
from app.process.master import active_config, active_zone
from app.traffic.discovery import Discovery
from app.traffic.health import HealthChecker
from app.traffic.ratelimit import make_limiters
from app.traffic.retry import STATUS
from app.traffic.routing import Route, Router
from app.traffic.shared import ProberLock, Zone
from app.upstream.forward import Forwarder
from app.upstream.pool import Pools
from app.upstream.response import UpstreamResponse
from app.upstream.session import make_session
from app.upstream.tls import warn_unverified
from app.upstream.tunnel import Tunnel

log = logging.getLogger("gunicorn.error")

PROBER_RETRY = 1.0  # seconds between a worker's tries to become the pod's prober


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        concurrency: int = settings.DEFAULT_WORKER_CONNECTIONS,
        zone: Zone | None = None,
    ):
        self.config = config
        self.router = Router(config, zone, self._health_event)
        self.admin = AdminApp(self.router, require_upstreams=config.admin.ready_requires_upstreams)
        self.admin_port = str(config.admin.port)
        self.max_body_size = config.limits.max_body_size
        self.forwarder = Forwarder(Pools.from_session(make_session(len(config.hosts), concurrency)))
        self.metrics = Metrics(statsd_settings(config.statsd), prometheus_feed(config))
        self.admin.metrics = self.metrics.prometheus is not None  # GET /metrics
        self.end = RequestEnd(self.metrics)
        self.tunnels: set[Tunnel] = set()  # open in this worker, for close_tunnels
        self.stopping = False  # close_tunnels was called: no tunnel outlives it
        self.prober = ProberLock(self.router.zone.area)
        self.checkers: list[HealthChecker] = []
        self.discovery = None  # the pod's DNS loop, in the prober (app/traffic/discovery.py)
        self.router.on_hosts_removed = self._forget_hosts
        # Each limited service's rate limit (app/traffic/ratelimit.py), by name.
        self.limiters = make_limiters(config, self.router.zone.area, self.metrics.ratelimit_event)
        warn_unverified(config.services)

    def start_background(
        self, spawn, access_log: AccessLog | None = None, flush_log: Callable | None = None
    ) -> None:
        """In a gevent worker: the access log, ended requests handed on in
        batches (app/observe/end.py) and each second with the log flushed
        (``flush_log``), active health checks and the metrics gauges."""
        self.end.access_log = access_log
        self.end.batch = END_BATCH
        spawn(self._end_each_second, flush_log)
        if any(s.health_check is not None or s.discover for s in self.config.services):
            spawn(self._probe_when_elected, spawn)
        if self.metrics.enabled:
            spawn(self._report_gauges)

    def _end_each_second(self, flush_log: Callable | None) -> None:
        import gevent

        while True:
            gevent.sleep(1.0)
            self.end.drain()
            if flush_log is not None:
                flush_log()

    def _probe_when_elected(self, spawn) -> None:
        """Run the pod's health checks once this worker holds the prober lock
        (app/traffic/shared.ProberLock); until then, try again every second."""
        import gevent

        while not self.prober.acquire():
            gevent.sleep(PROBER_RETRY)
            if self.stopping:
                return
        if self.stopping:  # elected while the worker stops: hand it on at once
            self.prober.release()
            return
        log.info("lbproxy: worker %d runs the pod's health checks and lookups", os.getpid())
        if any(service.discover for service in self.config.services):
            self.discovery = spawn(self._discover)
        probe_session = make_session(len(self.config.hosts), 1)
        for service in self.config.services:
            if service.health_check is not None:
                route = self.router.route(service.domain)
                probes = Pools.from_session(probe_session)
                health = partial(self._health_of, service.domain)
                checker = HealthChecker(health, probes, spawn, route.upstream_tls)
                checker.start()
                self.checkers.append(checker)

    def _health_of(self, domain: str):
        return self.router.route(domain).health  # route() takes in resolved hosts first

    def _discover(self) -> None:
        """The pod's lookups; a loop that cannot start (no nameserver in
        /etc/resolv.conf, say) is logged and tried again."""
        import gevent

        while True:
            try:
                discovery = Discovery(
                    self.config, self.router.zone, on_lookup=self.metrics.dns_lookup
                )
            except Exception:
                log.exception("lbproxy: DNS discovery cannot start; trying again in 10 s")
                gevent.sleep(10)
                continue
            discovery.run()

    def _forget_hosts(self, hosts: list) -> None:
        """Resolved addresses that left: their idle pooled connections are closed."""
        for host in hosts:
            self.forwarder.pools.drop(host.address, host.port)

    def stop_probing(self) -> None:
        """The worker is stopping: another worker takes the health checks over now."""
        self.stopping = True
        for checker in self.checkers:
            checker.stop()
        self.checkers = []
        if self.discovery is not None:
            self.discovery.kill(block=False)
            self.discovery = None
        self.prober.release()

    def __call__(self, environ, start_response):
        if environ.get("SERVER_PORT") == self.admin_port:
            return self.admin(environ, start_response)
        record = Record(request_id(environ.get("HTTP_X_REQUEST_ID")))
        request = route = None
        tunnel_place = False  # a place taken under max_tunnels, to give back on failure
        try:
            request = parse_request(environ, self.max_body_size, record.request_id)
            route = self.router.route(request.domain)
            record.service = route.service.name
            limiter = self.limiters.get(route.service.name)
            if limiter is not None:  # once per request: retries inside are not counted
                limiter.check(environ.get("REMOTE_ADDR", ""), request.headers)
            if request.upgrade is not None:
                if self.stopping:
                    raise WorkerStopping(route.service.name)
                route.admit_tunnel()
                tunnel_place = True
            response = self.forward(route, request, record)
        except ProxyError as error:
            if tunnel_place:
                route.release_tunnel()
            return self.refuse(error, start_response, record, request, environ)
        except BaseException:
            if tunnel_place:
                route.release_tunnel()
            raise
        if response.status == 101:
            return self.tunnel(route, request, record, environ, response, start_response)
        record.upstream_status = response.status
        record.connect_time = response.connect_time
        record.upstream_time = response.upstream_time
        if route.affinity is not None and response.status < 500:
            _bind(route, request, response, environ)  # never to a host that just failed
        response.on_close = partial(self._end_proxied, record, environ, request, response)
        response.start_response = start_response
        start_response(response.status_line, response.headers)
        return response

    def refused_by_server(self, environ: dict, status: int, bytes_sent: int = 0) -> None:
        """A request the HTTP server refused before it got here (app/http/server.py):
        counted and logged as ``bad_request`` like one this app refuses."""
        record = Record(request_id(None))
        record.outcome = BadRequest.kind
        record.status = status
        record.bytes_out = bytes_sent
        self.end(record, environ)

    def tunnel(
        self, route: Route, request: ProxyRequest, record: Record, environ, response, start_response
    ):
        """The upstream switched protocols: copy bytes both ways until the tunnel
        ends (app/upstream/tunnel.py), then tell the server the connection is done.

        A tunnel is bounded by ``max_tunnels``, not by the circuit breaker: its
        host's in-flight place is given back at once.
        """
        response.lease.release()
        connection = response.connection
        if _switched_to(response.head) != request.upgrade:
            connection.close()
            route.release_tunnel()
            error = UpstreamFramingError(f"101 to another protocol than {request.upgrade}")
            return self.refuse(error, start_response, record, request, environ)
        record.upstream_status = record.status = 101
        record.connect_time = response.connect_time
        record.upstream_time = response.upstream_time
        head = _switching_head(response.head).encode("latin-1")
        early_up = environ.get(TAKE_BUFFERED_KEY, bytes)()  # the client's bytes past its request
        early_down, connection.stream.pending = connection.stream.pending, b""
        tunnel = Tunnel(request.client_socket, connection.sock, route.service.timeout.tunnel_idle)
        self.tunnels.add(tunnel)
        self.metrics.tunnel_opened(route.service.name)
        try:
            if self.stopping:
                tunnel.close("shutdown")  # the worker stopped while this one was opening
            else:
                send_all(request.client_socket, head)
            record.tunnel_close = tunnel.run(early_up, early_down)
        except OSError:
            tunnel.close("client")  # the 101 head could not be sent
            record.tunnel_close = tunnel.reason
        finally:
            self.tunnels.discard(tunnel)
            route.release_tunnel()
            connection.close()
            record.bytes_in = tunnel.sent["upstream"]
            record.bytes_out = len(head) + tunnel.sent["client"]
            self._end(record, environ, request)
        return ALREADY_HANDLED

    def close_tunnels(self) -> None:
        """The worker is stopping: every tunnel ends now (reason ``shutdown``),
        and one still opening ends as soon as it opens."""
        self.stopping = True
        for tunnel in list(self.tunnels):
            tunnel.close("shutdown")

    def _end_proxied(self, record, environ, request: ProxyRequest, response) -> None:
        if request.upgrade is not None:
            route = self.router.route(request.domain)
            route.release_tunnel()  # the upstream answered the upgrade with no 101
        record.status = response.status  # a body that broke off first thing: 502 or 504
        record.bytes_out = response.bytes_sent
        if response.failure:
            record.outcome = response.failure
        self._end(record, environ, request)

    def _end(self, record: Record, environ: dict, request: ProxyRequest | None) -> None:
        if request is not None:
            record.retries += request.stale_retries
            if request.body is not None:
                record.bytes_in = request.body.bytes_read
        self.end(record, environ)

    def forward(self, route: Route, request: ProxyRequest, record: Record) -> UpstreamResponse:
        """Send the request to a host of the route, retrying on another host
        where the route's RetryPolicy (app/traffic/retry.py) and budget allow.

        Each try holds a lease on its host; the response that is returned
        carries its lease and releases it when closed.
        """
        route.admit()
        service = route.service
        started = time.monotonic()
        deadline = started + service.timeout.total if service.timeout.total else None
        exchange_deadline = started + service.timeout.response
        sticky, request.affinity_cookie = route.sticky_key(request.headers)
        tried = []
        last_error: ProxyError | None = None
        while True:
            # Before pick(): a spent timeout.total must not leave a host counted in flight.
            timeout = _remaining(service.timeout, deadline)
            if tried and route.names:  # a retry: take in what the resolver found since
                self.router.route(request.domain)
            lease = route.pick(tried, sticky)
            if lease is None:
                # pick() raises when no host can be tried at all, so this comes
                # after at least one attempt, with its error kept.
                raise last_error
            host = lease.host
            tried.append(host)
            record.upstream = host.name
            record.retries = len(tried) - 1
            try:
                response = self.forwarder.send(
                    host, request, timeout, exchange_deadline, route.upstream_tls
                )
            except (UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout) as error:
                lease.release()
                lease.health.record_failure(host)
                last_error = error
                if not self._may_retry(route, request, error.kind, len(tried)):
                    raise
                log.info("lbproxy: %s: retrying after %s: %s", service.name, error.kind, error)
                continue
            except BaseException:
                lease.release()
                raise
            if response.status >= 500 and service.outlier.count_5xx:
                lease.health.record_failure(host)
            else:
                lease.health.record_success(host)
            if route.retry.retries_status(response.status) and self._may_retry(
                route, request, STATUS, len(tried)
            ):
                response.discard()
                lease.release()
                last_error = UpstreamProtocolError(f"{host.name} answered {response.status}")
                continue
            response.lease = lease
            response.on_failure = partial(lease.health.record_failure, host)
            return response

    @staticmethod
    def _may_retry(route: Route, request: ProxyRequest, failure: str, tries: int) -> bool:
        allowed = route.retry.allows(failure, request.method, request.replayable, tries)
        return allowed and route.budget.try_spend()

    def refuse(self, error: ProxyError, start_response, record: Record, request, environ):
        record.outcome = error.kind
        record.status = int(error.status[:3])
        body = error.body()
        start_response(
            error.status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("X-Request-Id", record.request_id),
                *error.headers(),
            ],
        )
        record.bytes_out = len(body)
        return ErrorBody(body, partial(self._end, record, environ, request))

    def _health_event(self, service: str, host, event: str) -> None:
        self.metrics.health_event(service, host.name, event)

    def _report_gauges(self) -> None:
        import gevent

        while True:
            self.end.drain()  # the requests ended since: within statsd.interval too
            self.metrics.report_gauges(self.router.by_name(), self.forwarder)
            gevent.sleep(self.config.statsd.interval)


class ErrorBody:
    """An error answer's one-line body; the server's close() ends the request."""

    __slots__ = ("body", "on_close")

    def __init__(self, body: bytes, on_close):
        self.body = body
        self.on_close = on_close

    def __iter__(self):
        yield self.body

    def close(self) -> None:
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


def _bind(route: Route, request: ProxyRequest, response, environ) -> None:
    """Cookie affinity: a response from another host than the client's cookie
    names (none, forged, redispatched) sets one naming the host that answered,
    marked private for caches (HAProxy's ``nocache``)."""
    set_cookie = getattr(route.affinity, "set_cookie", None)
    host = response.lease.host
    if set_cookie is None:
        return
    value = route.affinity.value_of.get(host)  # None: a resolved address gone meanwhile
    if value is None or value == request.affinity_cookie:
        return
    secure = environ.get("wsgi.url_scheme") == "https"
    response.headers.append(("Set-Cookie", set_cookie(host, secure)))
    response.headers[:] = private(response.headers)


def private(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` with the response made ``private`` for caches: unchanged when it
    is already ``private`` or ``no-store``; else without ``public`` and
    ``s-maxage`` (a shared cache's own rules) and with ``private``."""
    controls = [value for name, value in headers if name.lower() == "cache-control"]
    directives = [part.strip() for value in controls for part in value.split(",") if part.strip()]
    names = {directive.split("=")[0].strip().lower() for directive in directives}
    if names & {"private", "no-store"}:
        return headers
    kept = [d for d in directives if d.split("=")[0].strip().lower() not in {"public", "s-maxage"}]
    others = [(name, value) for name, value in headers if name.lower() != "cache-control"]
    return [*others, ("Cache-Control", ", ".join(["private", *kept]))]


def prometheus_feed(config: ProxyConfig):
    """The worker's Prometheus feed: under gunicorn (whose master made the
    multiprocess directory) unless ``proxy.prometheus: false``."""
    from app.observe.prometheus import DIR_VARIABLE, PrometheusFeed

    if not config.prometheus or not os.environ.get(DIR_VARIABLE):
        return None
    return PrometheusFeed(tuple(service.name for service in config.services))


def _switched_to(head) -> str | None:
    """The protocol a 101 switched to (its Upgrade's first token), lower-case."""
    for name, value in head.headers:
        if name.lower() == "upgrade":
            return value.split(",")[0].strip().split("/")[0].lower()
    return None


def _switching_head(head) -> str:
    """The upstream's 101 head as it came (its fields in order), for the client."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in head.headers)
    return f"HTTP/1.1 101 {head.reason}\r\n{fields}\r\n"


def _remaining(timeout: Timeout, deadline: float | None) -> Timeout:
    """The attempt's timeouts, cut to what is left of ``timeout.total``."""
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpstreamTimeout("timeout.total reached")
    if left >= timeout.read and left >= timeout.connect:
        return timeout
    return dataclasses.replace(
        timeout, connect=min(timeout.connect, left), read=min(timeout.read, left)
    )


def create_app() -> Proxy:
    """In a gunicorn worker, the config its master validated; elsewhere, the file."""
    config = active_config()
    if config is None:
        return Proxy(load_config(), settings.worker_connections())
    return Proxy(config, settings.worker_connections(), active_zone())


application = create_app()
