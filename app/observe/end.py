"""The end of every request, whatever path it took: the one place a record is
finished, counted and logged.

Every path ends here exactly once:

- proxied: when the WSGI server closes the response (app/upstream/response.py),
  after its last byte or when the client left;
- refused by the app (unknown domain, 413, no healthy host...): when the
  server closes the error body (app/wsgi.py);
- a WebSocket tunnel: when it closes (app/wsgi.py);
- refused by the HTTP server before the app saw it (a malformed head):
  ``Proxy.refused_by_server``, called by app/http/server.py.

Under gunicorn's HTTP server too: gunicorn calls its access logger before it
closes the response, so the line is written here instead (app/observe/accesslog.py).

In a worker, ended records are handed to the metrics and the access log in
batches (``batch``: every ``END_BATCH`` requests, and ``drain``, each second
before the access log is flushed, every ``statsd.interval`` before the metrics
are sent, and at the worker's exit): the same code run for 32 records in a
row, instead of once between every two requests, took 10-15 µs off a request's
CPU under load (docs/bench.md). The metrics count a batch a kind of request
at a time (app/observe/record.group): a batch is mostly one or two kinds, so
StatsD and Prometheus classify, sum and format once per kind, and each timer
value once, not once per request and metric; the access log writes a batch's
lines in one go. The duration and times were taken when the request ended;
the access-log file and the metrics get them no later than before, as both
were already written and sent on those same ticks. Elsewhere (tests, tools)
``batch`` is 1: each record is handed on as it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.observe.accesslog import logged_environ
from app.observe.metrics import Metrics
from app.observe.record import Record

log = logging.getLogger("gunicorn.error")

# Writes the access-log lines of ended requests: [(record, environ), ...].
AccessLog = Callable[[list[tuple[Record, dict]]], None]

END_BATCH = 32  # records kept before they are handed on, in a worker


class RequestEnd:
    def __init__(self, metrics: Metrics, access_log: AccessLog | None = None):
        self.metrics = metrics  # StatsD, and Prometheus through metrics.prometheus
        self.access_log = access_log  # set in the worker (gunicorn.conf.py)
        self.batch = 1  # END_BATCH in a worker, whose loop drains each second
        # Ended records not handed on yet, with the part of the environ the log reads.
        self.pending: list[tuple[Record, dict]] = []

    def __call__(self, record: Record, environ: dict) -> None:
        if record.finished is not None:
            return  # already ended: a second close() counts nothing twice
        record.finish()
        if self.batch == 1:
            self._hand_on([(record, environ)])
            return
        self.pending.append((record, logged_environ(environ)))
        if len(self.pending) >= self.batch:
            self.drain()

    def drain(self) -> None:
        """Hand on every record kept, in the order they ended."""
        pending, self.pending = self.pending, []
        if pending:
            self._hand_on(pending)

    def _hand_on(self, ended: list[tuple[Record, dict]]) -> None:
        """The metrics count the records together, a kind at a time
        (app/observe/record.group); the access log writes their lines in one
        go (each line's failure its own: app/observe/accesslog.py)."""
        try:
            self.metrics.requests_done([record for record, _ in ended])
        except Exception:
            log.exception("lbproxy: error counting %d requests", len(ended))
        for record, _ in ended:
            if record.tunnel_close is not None:
                try:
                    self.metrics.tunnel_closed(record)
                except Exception:
                    log.exception("lbproxy: error counting tunnel %s", record.request_id)
        if self.access_log is not None:
            try:
                self.access_log(ended)
            except Exception:
                log.exception("lbproxy: error logging %d requests", len(ended))
