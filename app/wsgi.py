"""The WSGI entry point: ``gunicorn app.wsgi:application``.

One request, top to bottom:

1. parse   (request.py)  environ -> target, domain, headers, body stream
2. route   (routing.py)  domain -> service: balancer, host health, retry budget
3. pick    (balancer.py) service -> one host in rotation, skipping hosts tried
4. forward (forward.py)  pooled keep-alive connection -> response headers
5. stream  (response.py) upstream body -> client, connection back to the pool
"""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import partial

from app import settings
from app.admin import Admin
from app.config import ProxyConfig, Timeout, load_config
from app.errors import (
    BadRequest,
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from app.forward import Forwarder
from app.health import HealthChecker
from app.master import active_config
from app.metrics import Metrics, statsd_settings
from app.pool import Pools
from app.record import ENVIRON_KEY, Record, request_id
from app.request import ProxyRequest, parse_request
from app.response import UpstreamResponse
from app.retry import IDEMPOTENT
from app.routing import Route, Router
from app.session import make_session

log = logging.getLogger("gunicorn.error")


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        concurrency: int = settings.DEFAULT_WORKER_CONNECTIONS,
        workers: int = 1,
    ):
        self.config = config
        self.router = Router(config, workers, self._health_event)
        self.admin = Admin(self.router)
        self.admin_port = str(config.admin.port)
        self.max_body_size = config.limits.max_body_size
        self.forwarder = Forwarder(Pools.from_session(make_session(len(config.hosts), concurrency)))
        self.metrics = Metrics(statsd_settings(config.statsd))

    def start_background(self, spawn) -> None:
        """In a gevent worker: active health checks and the metrics gauges."""
        probe_session = make_session(len(self.config.hosts), 1)
        for service in self.config.services:
            if service.health_check is not None:
                route = self.router.route(service.domain)
                HealthChecker(route.health, probe_session, spawn).start()
        if self.metrics.enabled:
            spawn(self._report_gauges)

    def __call__(self, environ, start_response):
        if environ.get("SERVER_PORT") == self.admin_port:
            return self.admin(environ, start_response)
        record = environ[ENVIRON_KEY] = Record(request_id(environ.get("HTTP_X_REQUEST_ID")))
        request = None
        try:
            request = parse_request(environ, self.max_body_size, record.request_id)
            route = self.router.route(request.domain)
            record.service = route.service.name
            response = self.forward(route, request, record)
        except ProxyError as error:
            return self.refuse(error, start_response, record, request)
        record.upstream_status = record.status = response.status
        record.connect_time = response.connect_time
        record.upstream_time = response.upstream_time
        response.on_close.append(lambda: self.finish(record, request, response))
        response.start_response = start_response
        start_response(response.status_line, response.headers)
        return response

    def refused_by_server(self, environ: dict, status: int) -> None:
        """A request the HTTP server refused before it got here (app/server.py):
        counted and logged as ``bad_request`` like one this app refuses."""
        record = environ[ENVIRON_KEY] = Record(request_id(None))
        record.outcome = BadRequest.kind
        record.status = status
        self.finish(record, None)

    def finish(self, record: Record, request: ProxyRequest | None, response=None) -> None:
        """The request is over (body sent, or abandoned): count it."""
        if response is not None:
            record.bytes_out = response.bytes_sent
            record.status = response.status  # a body that broke off first thing: 502 or 504
            if response.failure:
                record.outcome = response.failure
        if request is not None and request.body is not None:
            record.bytes_in = request.body.bytes_read
        record.finish()
        self.metrics.request_done(record)

    def forward(self, route: Route, request: ProxyRequest, record: Record) -> UpstreamResponse:
        """Send the request to a host of the route, retrying on another host where safe.

        - a refused connection: nothing was sent, so any method moves on;
        - a reset before any response byte, or a status in ``retry.on_status``:
          only idempotent requests whose body was not taken from the client yet;
        - a timeout is final: the upstream may still be working on it.
        Retries stop at ``retry.attempts`` or when the service's budget is spent.
        """
        route.admit()
        service = route.service
        started = time.monotonic()
        deadline = started + service.timeout.total if service.timeout.total else None
        exchange_deadline = started + service.timeout.response
        tried = []
        last_error: ProxyError | None = None
        while True:
            # Before pick(): a spent timeout.total must not leave a host counted in flight.
            timeout = _remaining(service.timeout, deadline)
            host = route.pick(tried)
            if host is None:
                # pick() raises when no host can be tried at all, so this comes
                # after at least one attempt, with its error kept.
                raise last_error
            tried.append(host)
            record.upstream = host.name
            record.retries = len(tried) - 1
            try:
                response = self.forwarder.send(host, request, timeout, exchange_deadline)
            except (UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout) as error:
                route.release(host)
                route.health.record_failure(host)
                last_error = error
                if not self._may_retry(route, request, error, len(tried)):
                    raise
                log.info("lbproxy: %s: retrying after %s: %s", service.name, error.kind, error)
                continue
            except BaseException:
                route.release(host)
                raise
            record.retries += response.stale_retries
            if response.status >= 500 and service.outlier.count_5xx:
                route.health.record_failure(host)
            else:
                route.health.record_success(host)
            if response.status in service.retry.on_status and self._may_retry(
                route, request, None, len(tried)
            ):
                response.discard()
                route.release(host)
                last_error = UpstreamProtocolError(f"{host.name} answered {response.status}")
                continue
            response.on_close.append(partial(route.release, host))
            response.on_failure = partial(route.health.record_failure, host)
            return response

    @staticmethod
    def _may_retry(route: Route, request: ProxyRequest, error, attempts: int) -> bool:
        if attempts > route.service.retry.attempts or attempts >= len(route.balancer.hosts):
            return False
        if isinstance(error, UpstreamTimeout):
            return False
        safe = isinstance(error, UpstreamConnectError) or (
            request.method in IDEMPOTENT and request.replayable
        )
        return safe and route.budget.try_spend()

    def refuse(self, error: ProxyError, start_response, record: Record, request):
        record.outcome = error.kind
        record.status = int(error.status[:3])
        self.finish(record, request)
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
        return [body]

    def _health_event(self, service: str, host, event: str) -> None:
        self.metrics.health_event(service, host.name, event)

    def _report_gauges(self) -> None:
        import gevent

        while True:
            self.metrics.report_gauges(self.router.by_name(), self.forwarder)
            gevent.sleep(self.metrics.settings.interval)


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
    config = active_config() or load_config()
    return Proxy(config, settings.worker_connections(), settings.workers())


application = create_app()
