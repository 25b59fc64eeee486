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
  <prefix>.<service>.hosts_in_rotation.<pid> gauge  hosts in rotation, per worker
  <prefix>.<service>.hosts.<host>.pool_idle.<pid>  gauge  idle pooled connections, per worker

Gauges are per worker (sum them in Graphite: ``sumSeries(...in_flight.*)``):
StatsD keeps one value per gauge, so workers must not share a name.

A request's metrics go out as one datagram. Sending never raises and never
blocks: UDP to a dead port is lost, an unresolvable host turns metrics off
with a warning at start.
"""

from __future__ import annotations

import logging
import os
import re
import socket

import statsd

from app.config import Statsd
from app.record import Record

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


class Metrics:
    """Sends one request's metrics as one datagram; ``enabled`` False sends nothing."""

    def __init__(self, settings: Statsd | None):
        self.client = None
        self.settings = settings
        if settings is None:
            return
        try:
            self.client = statsd.StatsClient(
                settings.host,
                settings.port,
                prefix=safe_prefix(settings.prefix),
                maxudpsize=MAX_DATAGRAM,
            )
        except (OSError, socket.gaierror) as error:
            log.warning(
                "lbproxy: StatsD %s:%s unusable, metrics off: %s",
                settings.host,
                settings.port,
                error,
            )

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def request_done(self, record: Record) -> None:
        if self.client is None:
            return
        service = safe(record.service) if record.service else UNROUTED
        pipe = self.client.pipeline()
        status = f"status.{record.status // 100}xx" if record.status else None
        total = record.duration * 1000
        scopes = [service]
        if record.upstream:
            scopes.append(f"{service}.hosts.{safe(record.upstream)}")
        for scope in scopes:
            if record.service:
                pipe.timing(f"{scope}.request", total)
            if status:
                pipe.incr(f"{scope}.{status}")
            if record.upstream_time is not None:
                pipe.timing(f"{scope}.upstream", record.upstream_time * 1000)
            if record.connect_time is not None:
                pipe.timing(f"{scope}.connect", record.connect_time * 1000)
            if record.bytes_in:
                pipe.incr(f"{scope}.bytes_in", record.bytes_in)
            if record.bytes_out:
                pipe.incr(f"{scope}.bytes_out", record.bytes_out)
        if record.outcome != "success":
            pipe.incr(f"{service}.errors.{record.outcome}")
        if record.retries:
            pipe.incr(f"{service}.retries", record.retries)
        pipe.send()

    def health_event(self, service: str, host: str, event: str) -> None:
        if self.client is not None:
            self.client.incr(f"{safe(service)}.hosts.{safe(host)}.{event}")

    def report_gauges(self, routes, pools) -> None:
        """Per-worker gauges: in flight, hosts in rotation, idle pooled connections."""
        if self.client is None:
            return
        pid = os.getpid()
        pipe = self.client.pipeline()
        for route in routes:
            service = safe(route.service.name)
            pipe.gauge(f"{service}.in_flight.{pid}", route.balancer.total_in_flight)
            pipe.gauge(f"{service}.hosts_in_rotation.{pid}", len(route.health.in_rotation()))
            for host in route.service.hosts:
                idle = pools.idle(host)
                pipe.gauge(f"{service}.hosts.{safe(host.name)}.pool_idle.{pid}", idle)
        pipe.send()


def safe_prefix(prefix: str) -> str:
    return ".".join(safe(part) for part in prefix.split(".") if part)
