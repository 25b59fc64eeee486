"""Prometheus metrics for the whole pod: ``GET /metrics`` on the admin listener.

prometheus_client's multiprocess mode aggregates every worker: each worker
writes its values to files in one directory, and the worker that answers a
scrape reads them all (``MultiProcessCollector``). The directory is
``$PROMETHEUS_MULTIPROC_DIR``, else a private temp dir. The master empties it
once, when it starts (gunicorn's ``on_starting``), never on SIGHUP: the files
of replaced workers hold the counts they made, so counters never go backwards
across reloads. The master calls ``mark_process_dead`` in ``child_exit`` for
the live gauges.

A request is not one call into prometheus_client. Each worker sums what it
sees in plain dicts (``kind_done``: a few dict updates for each kind of
request in a batch, app/observe/record.group), and ``flush`` moves the sums
into the files every ``statsd.interval`` seconds, with StatsD's flush.
Histograms are moved the same way, a bucket count at a time: prometheus_client
has no public batch ``observe``, so ``flush`` adds to the histogram's
``_buckets`` and ``_sum``. Those are private names, pinned by
tests/unit/observe/test_prometheus.py, which fails if the library renames them.

No label carries a path, a client or a request id: the labels are services,
hosts of the config (or resolved), status classes and error kinds.
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from app import __version__
from app.observe.record import Ended

DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from 1 ms to 10 s, with 0.25 s, the latency SLO's edge (monitoring/slo.yaml).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNROUTED = "unrouted"
_CODES = tuple(f"{n}xx" for n in range(10))  # a status's class label, made once


def prepare_directory(environ=os.environ) -> Path | None:
    """In the master, before any worker: the multiprocess directory, emptied.
    Returns the directory when it made a private one (removed at exit)."""
    path = environ.get(DIR_VARIABLE)
    if path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        for entry in directory.iterdir():
            if entry.is_file() and entry.suffix == ".db":
                entry.unlink()
        return None
    directory = Path(tempfile.mkdtemp(prefix="lbproxy-prometheus-"))
    environ[DIR_VARIABLE] = str(directory)  # inherited by every worker
    return directory


def process_dead(pid: int) -> None:
    """In the master's ``child_exit``: the worker's live gauges go with it."""
    if os.environ.get(DIR_VARIABLE):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# Services whose request counters and histograms are made at 0 when a worker
# starts: Prometheus's increase() and rate() cannot count a series' first value,
# so a counter that appears at 10 would lose those 10 (the SLO's bad events).
# Beyond this many services, their series appear with their first requests.
PREPARED_SERVICES = 100


class PrometheusFeed:
    """One worker's metrics: summed per request, moved into prometheus_client by ``flush``."""

    def __init__(self, services: tuple[str, ...] = ()):
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: the files are the registry (MultiProcessCollector reads them);
        # a second feed in one process (tests) must not collide in a default registry.
        def counter(name, doc, labels=()):
            return Counter(f"lbproxy_{name}", doc, list(labels), registry=None)

        self.requests = counter("requests", "Requests answered", ("service", "code"))
        self.errors = counter("request_errors", "Failed requests by kind", ("service", "kind"))
        self.upstream_requests = counter(
            "upstream_requests", "Requests per upstream host", ("service", "host", "code")
        )
        self.retries = counter("retries", "Retries made", ("service",))
        self.received = counter("bytes_received", "Request body bytes", ("service",))
        self.sent = counter("bytes_sent", "Response body bytes", ("service",))
        self.health = counter(
            "health_events", "Ejections, returns, checks down and up", ("service", "host", "event")
        )
        self.tunnels_opened = counter("tunnels_opened", "WebSocket tunnels opened", ("service",))
        self.tunnels_closed = counter(
            "tunnels_closed", "WebSocket tunnels closed, by reason", ("service", "reason")
        )
        self.ratelimit = counter("ratelimit_events", "Global rate limits without Redis", ("event",))
        self.dns_lookups = counter("dns_lookups", "Lookups of resolved names", ("service",))
        self.dns_errors = counter("dns_errors", "Failed lookups of resolved names", ("service",))

        def histogram(name, doc):
            return Histogram(name, doc, ["service"], buckets=BUCKETS, registry=None)

        def gauge(name, doc, labels, mode):
            return Gauge(name, doc, labels, multiprocess_mode=mode, registry=None)

        self.duration = histogram("lbproxy_request_duration_seconds", "Whole request")
        self.upstream_duration = histogram(
            "lbproxy_upstream_duration_seconds", "Until the upstream's response head"
        )
        self.in_flight = gauge("lbproxy_in_flight", "Requests in flight", ["service"], "livesum")
        self.tunnels_active = gauge(
            "lbproxy_tunnels_active", "Tunnels open", ["service"], "livesum"
        )
        # live modes: a replaced worker's last value goes with it (mark_process_dead).
        self.in_rotation = gauge(
            "lbproxy_hosts_in_rotation", "Hosts in rotation", ["service"], "livemax"
        )
        self.dns_hosts = gauge(
            "lbproxy_dns_hosts", "Hosts the resolved names give", ["service"], "livemax"
        )
        gauge("lbproxy_workers", "Workers serving", [], "livesum").set(1)
        build = gauge("lbproxy_build_info", "lbproxy's version", ["version"], "livemax")
        build.labels(__version__).set(1)
        for service in (*services[:PREPARED_SERVICES], UNROUTED):
            for code in ("2xx", "3xx", "4xx", "5xx"):
                self.requests.labels(service, code)
            self.duration.labels(service)
        self.counts: dict[tuple, float] = defaultdict(float)  # (counter, labels) -> sum
        # histogram -> service -> [bucket counts..., sum]
        self.samples: dict[object, dict[str, list[float]]] = {
            self.duration: {},
            self.upstream_duration: {},
        }

    # --- per request: plain dict updates -------------------------------------

    def kind_done(self, kind: Ended) -> None:
        """Ended requests of one kind (app/observe/record.group). The sums are
        those of the requests counted one by one, up to float rounding."""
        counts = self.counts
        service, count = kind.service or UNROUTED, kind.count
        code = _CODES[kind.status // 100] if kind.status else "none"
        counts[(self.requests, (service, code))] += count
        if kind.outcome != "success":
            counts[(self.errors, (service, kind.outcome))] += count
        if kind.service is None:
            return
        if kind.upstream is not None:
            counts[(self.upstream_requests, (service, kind.upstream, code))] += count
        if kind.retries:
            counts[(self.retries, (service,))] += kind.retries
        if kind.bytes_in:
            counts[(self.received, (service,))] += kind.bytes_in
        if kind.bytes_out:
            counts[(self.sent, (service,))] += kind.bytes_out
        self._samples(self.duration, service, kind.durations)
        if kind.upstream_times:
            self._samples(self.upstream_duration, service, kind.upstream_times)

    def _samples(self, histogram, service: str, seconds: list[float]) -> None:
        per_service = self.samples[histogram]
        buckets = per_service.get(service)
        if buckets is None:
            buckets = per_service[service] = [0.0] * (len(BUCKETS) + 2)  # + the +Inf, the sum
        for value in seconds:
            buckets[bisect.bisect_left(BUCKETS, value)] += 1
        buckets[-1] += sum(seconds)

    def count(self, counter_name: str, labels: tuple, value: float = 1) -> None:
        self.counts[(getattr(self, counter_name), labels)] += value

    # --- every interval --------------------------------------------------------

    def flush(self) -> None:
        counts, self.counts = self.counts, defaultdict(float)
        for (counter, labels), value in counts.items():
            counter.labels(*labels).inc(value)
        for histogram, per_service in self.samples.items():
            for service, buckets in per_service.items():
                if not any(buckets[:-1]):
                    continue
                child = histogram.labels(service)
                # Private, pinned by a test: prometheus_client has no batch observe.
                for index, count in enumerate(buckets[:-1]):
                    if count:
                        child._buckets[index].inc(count)
                child._sum.inc(buckets[-1])
                per_service[service] = [0.0] * len(buckets)

    def gauges(self, routes) -> None:
        """This worker's gauges of ``routes`` (those with news: app/observe/metrics.py):
        live sums for in flight and tunnels, the pod's view for the others."""
        for route in routes:
            name = route.service.name
            self.in_flight.labels(name).set(route.state.worker_in_flight())
            self.tunnels_active.labels(name).set(route.tunnels)
            self.in_rotation.labels(name).set(len(route.health.in_rotation()))
            if route.names:
                self.dns_hosts.labels(name).set(len(route.resolved_from))


def wants_openmetrics(accept: str) -> bool:
    """``Accept`` lists application/openmetrics-text with a q above 0."""
    for media_range in accept.split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        if kind != "application/openmetrics-text":
            continue
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


def exposition(accept: str) -> tuple[bytes, str]:
    """Every worker's metrics as one text: OpenMetrics when the scraper asks for
    it in ``Accept``, else the text format 0.0.4."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if wants_openmetrics(accept):
        from prometheus_client.openmetrics import exposition as openmetrics

        return openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST
    # The text format 0.0.4, which every Prometheus reads (the library's newest is 1.0.0).
    from prometheus_client import generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
