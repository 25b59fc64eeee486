"""The access log: one JSON line per proxied request, through gunicorn's logging.

``logger_class`` in gunicorn.conf.py points here, so ``--access-logfile``,
``--log-config`` and syslog keep working as gunicorn documents them; only the
line's format is ours. The fields are those the original project planned to
ship to ELK (docs/observability.md, "Access log"). Admin-port requests (probes) are not logged.

When the access log is a plain file or stdout (gunicorn's own handlers), lines
go straight into the handler's stream and are flushed once a second
(``flush_access_log``, called by the worker's background loop and at exit),
as nginx's ``access_log ... flush=1s``: through ``logging`` each line cost
more than the rest of the proxy's bookkeeping together. Any other handler
(``--log-config``, syslog) gets each line through ``logging`` as before.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus
from json.encoder import encode_basestring_ascii

from gunicorn.glogging import Logger

from app.observe.record import Record

# The environ keys a line reads (``entry`` and ``line``): all a record kept
# for a later line needs (app/observe/end.py).
LOGGED_KEYS = ("REMOTE_ADDR", "REQUEST_METHOD", "RAW_URI", "HTTP_HOST")


def logged_environ(environ: dict) -> dict:
    """The part of ``environ`` an access-log line reads (None where it has none)."""
    get = environ.get  # a literal, not a comprehension over LOGGED_KEYS: once per request
    return {
        "REMOTE_ADDR": get("REMOTE_ADDR"),
        "REQUEST_METHOD": get("REQUEST_METHOD"),
        "RAW_URI": get("RAW_URI"),
        "HTTP_HOST": get("HTTP_HOST"),
    }


def entry(record: Record, environ: dict) -> dict:
    """The access-log fields of one request."""
    return {
        "time": _iso(record.wall_time),
        "request_id": record.request_id,
        "client": environ.get("REMOTE_ADDR"),
        "method": environ.get("REQUEST_METHOD"),
        "uri": environ.get("RAW_URI"),
        "host": environ.get("HTTP_HOST"),
        "service": record.service,
        "upstream": record.upstream,
        "outcome": record.outcome,
        "upstream_status": record.upstream_status,
        "status": record.status,
        "response_bytes": record.bytes_out,
        "request_bytes": record.bytes_in,
        "duration_ms": _ms(record.duration),
        "connect_ms": _ms(record.connect_time),
        "upstream_ms": _ms(record.upstream_time),
        "retries": record.retries,
        "tunnel_close": record.tunnel_close,
    }


def line(record: Record, environ: dict) -> str:
    """``entry()`` as one compact JSON line, written out field by field.

    The same JSON as ``json.dumps(entry(...))`` (a test holds them equal), in a
    quarter of the time: strings go through json's C escaper, numbers are
    formatted directly, times with 3 decimals (``17.600``, where json would
    write ``17.6``: the same number, without ``round()``, which costs more
    than the formatting).
    """
    # Inline conditionals, not helper calls: this runs once per request.
    get, enc = environ.get, encode_basestring_ascii
    client, method, uri, host = (
        get("REMOTE_ADDR"),
        get("REQUEST_METHOD"),
        get("RAW_URI"),
        get("HTTP_HOST"),
    )
    service, upstream, connect, waited, tunnel_close = (
        record.service,
        record.upstream,
        record.connect_time,
        record.upstream_time,
        record.tunnel_close,
    )
    upstream_status, status = record.upstream_status, record.status
    return (
        f'{{"time":"{_iso(record.wall_time)}","request_id":{enc(record.request_id)},'
        f'"client":{"null" if client is None else enc(client)},'
        f'"method":{"null" if method is None else enc(method)},'
        f'"uri":{"null" if uri is None else enc(uri)},'
        f'"host":{"null" if host is None else enc(host)},'
        f'"service":{"null" if service is None else enc(service)},'
        f'"upstream":{"null" if upstream is None else enc(upstream)},'
        f'"outcome":{enc(record.outcome)},'
        f'"upstream_status":{_STATUSES.get(upstream_status) or _int(upstream_status)},'
        f'"status":{_STATUSES.get(status) or _int(status)},"response_bytes":{record.bytes_out},'
        # A 0 (no request body, no retry: the usual) as text: formatting an int costs more.
        f'"request_bytes":{record.bytes_in or "0"},"duration_ms":{record.duration * 1000:.3f},'
        f'"connect_ms":{"null" if connect is None else f"{connect * 1000:.3f}"},'
        f'"upstream_ms":{"null" if waited is None else f"{waited * 1000:.3f}"},'
        f'"retries":{record.retries or "0"},'
        f'"tunnel_close":{"null" if tunnel_close is None else enc(tunnel_close)}}}'
    )


class JsonAccessLogger(Logger):
    _plain_handler: logging.Handler | None = None  # found by _direct_stream

    def access(self, resp, req, environ, request_time):
        """gunicorn's call, which comes before the response is closed: lbproxy's
        requests are logged at their end instead (``log_records``, from
        app/observe/end.py), and admin-port requests not at all."""

    def log_records(self, ended: list[tuple[Record, dict]]) -> None:
        """The lines of ended requests, a batch at a time (app/observe/end.py
        hands them on), in one write to a plain file or stdout (through
        ``logging`` otherwise, a call a line). A record whose line fails is
        logged, and the others still go."""
        if not self.access_log_enabled:
            return
        try:
            lines = [line(record, environ) for record, environ in ended]
        except Exception:
            lines = []
            for record, environ in ended:
                try:
                    lines.append(line(record, environ))
                except Exception:
                    self.exception("lbproxy: error logging request %s", record.request_id)
        stream = self._direct_stream()
        if stream is None:
            for text in lines:
                self.access_log.info(text)
        elif lines:
            lines.append("")  # each line ends with a newline
            stream.write("\n".join(lines))

    def flush_access_log(self) -> None:
        """Write out the lines buffered in the stream (once a second, and at exit)."""
        stream = self._direct_stream()
        if stream is not None:
            stream.flush()

    def _direct_stream(self):
        """The stream of gunicorn's own file or stdout handler; None for any other setup.

        The handler found plain is remembered: gunicorn's setup (start, reload)
        replaces handlers rather than changing them, and a reopen (USR1)
        replaces only the stream, which is read afresh each time.
        """
        logger = self.access_log
        handlers = logger.handlers
        if len(handlers) == 1 and handlers[0] is self._plain_handler and not logger.filters:
            return self._plain_handler.stream
        if len(handlers) != 1 or logger.filters:
            return None
        handler = handlers[0]
        if (
            type(handler) not in _PLAIN_HANDLERS
            or handler.filters
            or handler.formatter is None
            # logging.Formatter keeps its format only as _fmt (stdlib, since 2.x).
            or handler.formatter._fmt != "%(message)s"
        ):
            return None
        self._plain_handler = handler
        return handler.stream


_PLAIN_HANDLERS = (logging.StreamHandler, logging.FileHandler)


def _int(value: int | None) -> str:
    return "null" if value is None else str(value)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# The registered statuses as text, made once: a lookup costs a fraction of
# formatting an int (any other status is formatted).
_STATUSES = {status.value: str(status.value) for status in HTTPStatus}

_second: list = [None, ""]  # the last second formatted, and its text
_milli: list = [None, ""]  # the last millisecond formatted, and its text


def _iso(epoch: float) -> str:
    """``2026-11-26T01:02:03.456Z``, the millisecond of ``epoch × 1000`` (which
    float rounding puts 1 ms later about once in 7,000): the seconds part
    formatted once per second, the whole once per millisecond (under load,
    lines come several to a millisecond)."""
    milli = int(epoch * 1000)
    if milli == _milli[0]:
        return _milli[1]
    second, fraction = divmod(milli, 1000)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    text = "%s.%03dZ" % (_second[1], fraction)  # noqa: UP031 (an f-string's :03d costs more)
    _milli[0], _milli[1] = milli, text
    return text
