"""StatsD metrics, sent over UDP with the ``statsd`` package.

Naming (prefix ``lbproxy`` by default; ``<service>`` is the service's name and
``<host>`` its ``address:port``, each with every character outside
``[A-Za-z0-9_-]`` made ``_``, so a dot never splits a Graphite path):

  <prefix>.<service>.request                 timer  total time as seen by the proxy
  <prefix>.<service>.upstream                timer  time to the upstream's response headers
  <prefix>.<service>.connect                 timer  TCP connect, when a new connection was opened
  <prefix>.<service>.status.<N>xx            counter  responses sent, by status class
  <prefix>.<service>.errors.<kind>           counter  requests that failed, by kind
  <prefix>.<service>.bytes_in / bytes_out    counter  request / response body bytes
  <prefix>.<service>.retries                 counter  retries made
  <prefix>.<service>.hosts.<host>.<metric>   the same per upstream host (request,
                                             upstream, connect, status.<N>xx,
                                             bytes_in, bytes_out)
  <prefix>.<service>.hosts.<host>.ejected / returned / down / up   counter  health events
  <prefix>.unrouted.status.<N>xx, .errors.<kind>   requests that matched no service
  <prefix>.<service>.in_flight.<pid>         gauge  requests in flight, per worker
  <prefix>.<service>.hosts_in_rotation.<pid> gauge  hosts in rotation (the pod's view)
  <prefix>.<service>.tunnels.opened / .closed.<reason> / .bytes_in / .bytes_out   counter
      WebSocket tunnels (reason: client, upstream, idle, shutdown)
  <prefix>.<service>.tunnels_active.<pid>    gauge  tunnels open, per worker
  <prefix>.ratelimit.redis_errors / fallback  counter  global rate limits without Redis
  <prefix>.<service>.dns_lookups / dns_errors   counter  lookups of its resolved names
  <prefix>.<service>.dns_hosts.<pid>         gauge  hosts its resolved names give
  <prefix>.<service>.hosts.<host>.pool_idle.<pid>  gauge  idle pooled connections, per worker

Gauges are per worker (sum them in Graphite: ``sumSeries(...in_flight.*)``):
StatsD keeps one value per gauge, so workers must not share a name.

Metrics are collected in the worker and sent in full datagrams (counters
summed, timer samples batched; at the latest every ``statsd.interval`` seconds
and at worker exit). Sending never raises and never blocks: UDP to a dead port
is lost, an unresolvable host turns metrics off with a warning at start.

The per-request lines (timers and counters) are formatted here, in the
``statsd`` package's own format (``%0.6f|ms``, ``N|c``), and sent on a socket
of their own: the package formats each sample through five Python calls, which
made StatsD the largest part of a request's bookkeeping. The gauges, a few per
interval, go through the package's client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket

import statsd

from app.config import Statsd
from app.observe.record import Ended, Record, group

log = logging.getLogger("gunicorn.error")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
UNROUTED = "unrouted"
# One request's metrics fit one datagram under the usual 1500-byte MTU.
MAX_DATAGRAM = 1432


def safe(name: str) -> str:
    return _UNSAFE.sub("_", name)


def statsd_settings(configured: Statsd | None, environ=os.environ) -> Statsd | None:
    """proxy.statsd, with STATSD_HOST / STATSD_PORT / STATSD_PREFIX taking precedence."""
    base = configured or Statsd()
    host = environ.get("STATSD_HOST", base.host or "") or None
    if host is None:
        return None
    port = int(environ.get("STATSD_PORT") or base.port)
    prefix = environ.get("STATSD_PREFIX") or base.prefix
    return Statsd(host=host, port=port, prefix=prefix, interval=base.interval)


class Scope:
    """The metric names of one service, or of one host of a service, made once."""

    __slots__ = ("bytes_in", "bytes_out", "connect", "request", "status", "upstream")

    def __init__(self, base: str):
        self.request = f"{base}.request"
        self.upstream = f"{base}.upstream"
        self.connect = f"{base}.connect"
        self.bytes_in = f"{base}.bytes_in"
        self.bytes_out = f"{base}.bytes_out"
        self.status = {n: f"{base}.status.{n}xx" for n in range(1, 6)}


class Metrics:
    """Collects each request's metrics; sends them in batches; never raises or blocks.

    Counters are summed in the worker and timer samples queued; both leave in
    full datagrams (``TIMERS_PER_DATAGRAM`` samples, or every ``interval``
    seconds from the gauge loop, or at worker exit): a datagram carries many
    requests instead of one request costing one ``sendto``. Ended requests come
    in batches (app/observe/end.py), counted a kind at a time, each timer value
    formatted once for the service's name and the host's. StatsD sees the same
    totals and every timer sample. ``enabled`` False: nothing is kept.
    """

    # ~45 bytes a sample: a datagram's worth, the most kept before a flush (a
    # worker's batch of requests may bring more: its flush sends several datagrams).
    TIMERS_PER_DATAGRAM = 28

    def __init__(self, settings: Statsd | None, prometheus=None):
        self.client = None
        self.prometheus = prometheus  # app/observe/prometheus.PrometheusFeed, or None
        self.settings = settings
        self.counters: dict[str, int] = {}
        self.active: set[str] = set()  # services with news since the last gauge report
        self.reported: set[str] = set()  # services in the last gauge report
        # Timer samples: (names, seconds), each value sent under each name.
        self.timers: list[tuple[tuple[str, ...], list[float]]] = []
        self.samples = 0  # in self.timers: a datagram's worth is sent (TIMERS_PER_DATAGRAM)
        self._scopes: dict[tuple[str | None, str | None], tuple[Scope, Scope | None]] = {}
        self.lines: Datagrams | None = None
        if settings is None:
            return
        try:
            self.client = statsd.StatsClient(
                settings.host,
                settings.port,
                prefix=safe_prefix(settings.prefix),
                maxudpsize=MAX_DATAGRAM,
            )
            self.lines = Datagrams(settings.host, settings.port, safe_prefix(settings.prefix))
        except (OSError, socket.gaierror) as error:
            self.client = None
            log.warning(
                "lbproxy: StatsD %s:%s unusable, metrics off: %s",
                settings.host,
                settings.port,
                error,
            )

    @property
    def enabled(self) -> bool:
        """Anything to report: StatsD, or Prometheus."""
        return self.client is not None or self.prometheus is not None

    def requests_done(self, records: list[Record]) -> None:
        """Ended requests, counted a kind at a time (app/observe/record.group)."""
        if self.client is None and self.prometheus is None:
            return
        for kind in group(records):
            # One kind's failure is its own: the other kinds are still counted.
            try:
                if self.prometheus is not None:
                    self.prometheus.kind_done(kind)
                if kind.service:
                    self.active.add(kind.service)
                if self.client is not None:
                    self._statsd(kind)
            except Exception:
                log.exception("lbproxy: error counting %d requests to %s", kind.count, kind.service)
        if self.samples >= self.TIMERS_PER_DATAGRAM:
            self.flush()

    def _statsd(self, kind: Ended) -> None:
        service, count = kind.service, kind.count
        scopes = self._scopes.get((service, kind.upstream))
        if scopes is None:
            scopes = self._scopes_of(service, kind.upstream)
        counters = self.counters
        status_class = kind.status // 100 if kind.status else None
        for scope in scopes:
            if status_class:
                name = scope.status[status_class]
                counters[name] = counters.get(name, 0) + count
            if not service:
                continue  # unrouted: only status and errors
            if kind.bytes_in:
                self._count(scope.bytes_in, kind.bytes_in)
            if kind.bytes_out:
                self._count(scope.bytes_out, kind.bytes_out)
        if service:
            self._time(tuple(scope.request for scope in scopes), kind.durations)
            if kind.upstream_times:
                self._time(tuple(scope.upstream for scope in scopes), kind.upstream_times)
            if kind.connect_times:
                self._time(tuple(scope.connect for scope in scopes), kind.connect_times)
        if kind.outcome != "success" or kind.retries:
            base = safe(service) if service else UNROUTED
            if kind.outcome != "success":
                self._count(f"{base}.errors.{kind.outcome}", count)
            if kind.retries:
                self._count(f"{base}.retries", kind.retries)

    def _time(self, names: tuple[str, ...], seconds: list[float]) -> None:
        """Timer samples: each of ``seconds`` under each of ``names``."""
        self.timers.append((names, seconds))
        self.samples += len(names) * len(seconds)

    def tunnel_opened(self, service: str) -> None:
        if self.prometheus is not None:
            self.prometheus.count("tunnels_opened", (service,))
        if self.client is not None:
            self.active.add(service)
            self._count(f"{safe(service)}.tunnels.opened")

    def tunnel_closed(self, record: Record) -> None:
        """A tunnel's end (its request is counted by ``requests_done`` as well)."""
        if self.prometheus is not None and record.service is not None:
            self.prometheus.count("tunnels_closed", (record.service, record.tunnel_close))
        if self.client is None or record.service is None:
            return
        base = f"{safe(record.service)}.tunnels"
        self._count(f"{base}.closed.{record.tunnel_close}")
        if record.bytes_in:
            self._count(f"{base}.bytes_in", record.bytes_in)
        if record.bytes_out:
            self._count(f"{base}.bytes_out", record.bytes_out)

    def health_event(self, service: str, host: str, event: str) -> None:
        if self.prometheus is not None:
            self.prometheus.count("health", (service, host, event))
        if self.client is not None:
            self.active.add(service)
            self._count(f"{safe(service)}.hosts.{safe(host)}.{event}")

    def ratelimit_event(self, event: str) -> None:
        """``redis_errors`` (Redis failed: fail open) or ``fallback`` (a global
        limit checked locally, or not at all, while Redis is out)."""
        if self.prometheus is not None:
            self.prometheus.count("ratelimit", (event,))
        if self.client is not None:
            self._count(f"ratelimit.{event}")

    def dns_lookup(self, service: str, answered: bool) -> None:
        """A lookup of one of the service's resolved names (the prober's only)."""
        if self.prometheus is not None:
            self.prometheus.count("dns_lookups", (service,))
            if not answered:
                self.prometheus.count("dns_errors", (service,))
        if self.client is not None:
            self.active.add(service)
            self._count(f"{safe(service)}.dns_lookups")
            if not answered:
                self._count(f"{safe(service)}.dns_errors")

    def flush(self, prometheus: bool = False) -> None:
        """Send what was collected (the counters summed since the last flush); with
        ``prometheus``, move Prometheus' sums into its files too. That is for the
        interval loop and worker exit only: a datagram's worth of timer samples
        flushes StatsD alone, and a Prometheus flush costs some 0.4 ms."""
        if prometheus and self.prometheus is not None:
            self.prometheus.flush()
        if self.client is None or not (self.counters or self.timers):
            return
        counters, self.counters = self.counters, {}
        timers, self.timers = self.timers, []
        self.samples = 0
        prefix = self.lines.prefix
        parts = [f"{prefix}{name}:{value}|c\n" for name, value in counters.items()]
        for names, seconds in timers:
            # Milliseconds as the statsd package writes a timer, each value
            # formatted once for all its names, in one format operation.
            values = (("%0.6f " * len(seconds)) % tuple([s * 1000 for s in seconds])).split()
            for name in names:
                line = f"{prefix}{name}:"
                parts.append(line + f"|ms\n{line}".join(values) + "|ms\n")
        self.lines.send_text("".join(parts)[:-1])

    def report_gauges(self, routes: dict, pools) -> None:
        """Per-worker gauges (in flight, hosts in rotation, idle pooled
        connections), then everything collected.

        Only for the services that saw a request or a health event since the
        last report, and once more after that (their values back at rest), so
        the cost follows the traffic, not the number of domains: 10,000 idle
        services cost nothing here. ``routes`` maps service names to routes.
        """
        active, self.active = self.active, set()
        due, self.reported = active | self.reported, active
        if self.prometheus is not None:
            self.prometheus.gauges(routes[name] for name in due if name in routes)
            self.prometheus.flush()
        if self.client is None:
            return
        pid = os.getpid()
        pipe = self.client.pipeline()
        for route in (routes[name] for name in due if name in routes):
            service = safe(route.service.name)
            pipe.gauge(f"{service}.in_flight.{pid}", route.state.worker_in_flight())
            pipe.gauge(f"{service}.hosts_in_rotation.{pid}", len(route.health.in_rotation()))
            pipe.gauge(f"{service}.tunnels_active.{pid}", route.tunnels)
            if route.names:
                pipe.gauge(f"{service}.dns_hosts.{pid}", len(route.resolved_from))
            for host in route.service.hosts:
                idle = pools.idle(host)
                pipe.gauge(f"{service}.hosts.{safe(host.name)}.pool_idle.{pid}", idle)
        pipe.send()
        self.flush()

    def _count(self, name: str, value: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def _scopes_of(self, service: str | None, upstream: str | None) -> tuple[Scope, ...]:
        """The service's scope, and its host's when a host was tried: made once."""
        key = (service, upstream)
        scopes = self._scopes.get(key)
        if scopes is None:
            base = safe(service) if service else UNROUTED
            scopes = (Scope(base),)
            if upstream:
                scopes += (Scope(f"{base}.hosts.{safe(upstream)}"),)
            self._scopes[key] = scopes
        return scopes


def safe_prefix(prefix: str) -> str:
    return ".".join(safe(part) for part in prefix.split(".") if part)


class Datagrams:
    """StatsD lines packed into datagrams of at most MAX_DATAGRAM bytes, as the
    ``statsd`` package's pipeline packs them; ``prefix`` is the one the lines
    carry (Metrics.flush writes it as it formats them)."""

    def __init__(self, host: str, port: int, prefix: str):
        family, _, _, _, self.address = socket.getaddrinfo(
            host, port, socket.AF_INET, socket.SOCK_DGRAM
        )[0]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.prefix = f"{prefix}." if prefix else ""

    def send_text(self, text: str) -> None:
        """Send lines already prefixed and joined with newlines, as few datagrams
        as they fit in (a line longer than a datagram goes alone)."""
        while len(text) >= MAX_DATAGRAM:
            cut = text.rfind("\n", 0, MAX_DATAGRAM)
            if cut < 0:  # one line longer than a datagram: sent alone
                cut = text.find("\n")
                if cut < 0:
                    break
            self._send(text[:cut])
            text = text[cut + 1 :]
        if text:
            self._send(text)

    def _send(self, datagram: str) -> None:
        # Lost, as UDP to a dead port is: never an error for the request.
        with contextlib.suppress(OSError):
            self.sock.sendto(datagram.encode("ascii"), self.address)
