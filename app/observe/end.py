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
"""

from __future__ import annotations

from collections.abc import Callable

from app.observe.metrics import Metrics
from app.observe.record import Record

# Writes one access-log line: (record, environ).
AccessLog = Callable[[Record, dict], None]


class RequestEnd:
    def __init__(self, metrics: Metrics, access_log: AccessLog | None = None):
        self.metrics = metrics  # StatsD, and Prometheus through metrics.prometheus
        self.access_log = access_log  # set in the worker (gunicorn.conf.py)

    def __call__(self, record: Record, environ: dict) -> None:
        if record.finished is not None:
            return  # already ended: a second close() counts nothing twice
        record.finish()
        self.metrics.request_done(record)
        if record.tunnel_close is not None:
            self.metrics.tunnel_closed(record)
        if self.access_log is not None:
            self.access_log(record, environ)
