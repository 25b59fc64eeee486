"""lbproxy's HTTP/1.1 server: one client connection, request by request, into the WSGI app.

gunicorn still runs the process (master, workers, signals, reload, logging);
this is the part of a worker that reads requests and writes responses, plugged
in by app/process/worker.py. It replaces gunicorn's own HTTP code because that is
where most of a proxied request's CPU went: measured on a 2-core VM, switching
to this server took a request from 421 to 264 µs of CPU (docs/bench.md,
"Profile"). The parser (app/http/framing.py) is as strict as gunicorn's; the
bad-input tests run against both.

What it does per connection:

- reads a request head within ``client_timeout`` (idle wait included: a slow
  client holds its own connection for that long, never a worker);
- builds the WSGI environ (``RAW_URI`` keeps the target byte for byte);
- streams ``wsgi.input`` from the socket as the app reads it (sending
  ``100 Continue`` first when asked), de-chunking a chunked body;
- writes the response head together with the first body chunk, framed by the
  app's Content-Length, else chunked (HTTP/1.1), else by closing;
- keeps the connection alive unless the client, the framing, an unread body
  or a stopping worker says otherwise.

A refused request gets its 4xx (app/http/framing.py) and a closed connection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from email.utils import formatdate
from urllib.parse import unquote_to_bytes

# gunicorn's public sentinel: an app returns it when it has answered on the
# socket itself (a tunnel); both HTTP servers then close the connection.
from gunicorn.workers.base_async import ALREADY_HANDLED

from app.http.framing import (
    LAST_CHUNK,
    NO_BODY,
    RECV_SIZE,
    ChunkedReader,
    HeaderFieldsTooLarge,
    HeadLimits,
    LengthReader,
    ProtocolError,
    RenderedFields,
    RequestHead,
    RequestLineTooLong,
    Stream,
    chunk,
    content_length,
    field_block,
    field_values,
    lower_names,
    parse_request_head,
    response_has_body,
    send_all,
)
from app.http.request import HEAD_KEY, TAKE_BUFFERED_KEY

SERVER_NAME = "lbproxy"

log = logging.getLogger("gunicorn.error")


class Server:
    """What every connection of one listener shares."""

    def __init__(
        self, app, base_environ: dict, limits: HeadLimits, timeout: float, worker, turns=None
    ):
        self.app = app
        self.base_environ = base_environ
        self.limits = limits
        self.timeout = timeout
        self.worker = worker  # .alive turns False when the worker stops; .nr counts requests
        # app/process/turns.py in a gevent worker: .polls counts the event loop's
        # polls, .pause() yields to the other connections. None: no turns (threads).
        self.turns = turns

    def serve(self, sock, addr) -> None:
        environ = dict(self.base_environ)
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(addr[0]), str(addr[1])
        environ["gunicorn.socket"] = sock
        ClientConnection(self, sock, environ).serve()


class ClientConnection:
    def __init__(self, server: Server, sock, environ: dict):
        self.server = server
        self.sock = sock
        self.environ = environ  # the connection's part of every request's environ
        self.stream = Stream(sock.recv)  # and the bytes received but not consumed yet

    def serve(self) -> None:
        try:
            self.sock.settimeout(self.server.timeout)
            # A stopping worker still answers a request sent on a connection it
            # kept alive (with "Connection: close"): closing under it would reset it.
            turns = self.server.turns
            while True:
                polls = turns.polls if turns is not None else -1
                if (head := self._read_head()) is None or not self._respond(head):
                    break
                if turns is not None and turns.polls == polls:
                    # The whole request went by without the loop polling once:
                    # the other connections get their turn before the next one.
                    turns.pause()
        except ProtocolError as error:
            self._refuse(error)
        except OSError:
            pass  # the client left, or stalled past client_timeout
        finally:
            self.sock.close()

    # -- reading ----------------------------------------------------------

    def _read_head(self) -> RequestHead | None:
        """The next request's head; None when the client closes or idles out."""
        deadline = time.monotonic() + self.server.timeout
        data = self.stream.pending.lstrip(b"\r\n")  # RFC 9112 §2.2: empty lines before a request
        searched = 0
        first = True
        while (end := data.find(b"\r\n\r\n", searched)) < 0:
            if data:
                self._check_partial_head(data)
            searched = max(0, len(data) - 3)
            # The first wait is the whole client_timeout, the socket's own
            # timeout between requests: no settimeout() calls for it.
            received = self._recv_first() if first else self._recv_until(deadline)
            first = False
            if not received:
                return None
            data = data + received if data else received.lstrip(b"\r\n")
        self.stream.pending = data[end + 4 :]
        return parse_request_head(data[:end].decode("latin-1"), self.server.limits)

    def _check_partial_head(self, data: bytes) -> None:
        """Refuse a head over the limits before it has all arrived."""
        limits = self.server.limits
        line_end = data.find(b"\r\n")
        if line_end < 0 and len(data) > limits.request_line + 2:
            raise RequestLineTooLong(f"request line over {limits.request_line} bytes")
        if len(data) > limits.head_size or (
            line_end >= 0 and len(data) - data.rfind(b"\n") - 1 > limits.header_size + 2
        ):
            raise HeaderFieldsTooLarge("request head over the limits")

    def _recv_first(self) -> bytes:
        """One recv within client_timeout; b"" on end-of-file or at the timeout."""
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            return b""

    def _recv_until(self, deadline: float) -> bytes:
        """One recv before the deadline; b"" on end-of-file or at the deadline.

        A stopping worker does not cut idle connections: a client may be
        sending its next request at that moment, which would meet a reset.
        Their next response says ``Connection: close`` instead, as gunicorn's.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b""
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            return b""
        finally:
            self.sock.settimeout(self.server.timeout)

    # -- one request ------------------------------------------------------

    def _respond(self, head: RequestHead) -> bool:
        """Serve one request; True when the connection can take another."""
        body = WsgiInput(self, head)
        environ = self._environ(head, body)
        response = ResponseWriter(self, head, body)
        worker = self.server.worker
        _count_request(worker)  # before the app: the last one's response says close
        result = None
        try:
            result = self.server.app(environ, response.start_response)
            if result is ALREADY_HANDLED:
                return False  # the app took the connection over (a tunnel) and ended it
            for chunk in result:
                response.write(chunk)
            response.finish()
        except OSError:
            return False  # the client is gone
        except Exception as error:
            response.fail(error)
        finally:
            try:
                if hasattr(result, "close"):
                    result.close()
            except Exception:
                # The request is logged and the connection ends; the worker goes on.
                log.exception("lbproxy: error closing the response to %s", head.target)
                response.keep_alive = False
        return response.keep_alive and body.done

    def take_buffered(self) -> bytes:
        """The bytes received past the request (and its body), for an app that
        takes the connection over: they are no longer the server's."""
        data, self.stream.pending = self.stream.pending, b""
        return data

    def _environ(self, head: RequestHead, body: WsgiInput) -> dict:
        environ = self.environ.copy()
        path, _, query = head.path.partition("?")
        environ[HEAD_KEY] = head  # the app takes target, Host and fields from it as parsed
        environ[TAKE_BUFFERED_KEY] = self.take_buffered
        environ["REQUEST_METHOD"] = head.method
        environ["RAW_URI"] = head.target
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1") if "%" in path else path
        environ["QUERY_STRING"] = query
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if head.version == (1, 1) else "HTTP/1.0"
        environ["wsgi.input"] = body
        for name, value in head.headers:
            key = _ENVIRON_KEYS.get(name) or _environ_key(name)
            if key is None:
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    # -- writing ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        send_all(self.sock, data)

    def _refuse(self, error: ProtocolError) -> None:
        body = f"{error.status}: {error}\n".encode("latin-1", "replace")
        head = (
            f"HTTP/1.1 {error.status}\r\n{_server_and_date()}"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            self.send(head.encode("latin-1") + body)
        self._report_refusal(error, len(body))

    def _report_refusal(self, error: ProtocolError, bytes_sent: int) -> None:
        """Let the app count and log a request it never saw (``refused_by_server``)."""
        report = getattr(self.server.app, "refused_by_server", None)
        if report is None:
            return
        try:
            report(self.environ.copy(), int(error.status[:3]), bytes_sent)
        except Exception:
            log.exception("lbproxy: error reporting a refused request")


class WsgiInput:
    """``wsgi.input``: the request body, read off the socket as the app asks for it."""

    def __init__(self, connection: ClientConnection, head: RequestHead):
        self.connection = connection
        self.stream = connection.stream
        limits = connection.server.limits
        if head.chunked:
            self.reader = ChunkedReader(limits.header_count, limits.header_size)
        elif head.content_length:
            self.reader = LengthReader(head.content_length)
        else:
            self.reader = NO_BODY
        self.expect_continue = head.expect_continue

    @property
    def done(self) -> bool:
        return self.reader.done

    def read1(self, size: int = RECV_SIZE) -> bytes:
        """What has arrived, up to ``size`` (> 0) bytes, at least one; b"" at the end."""
        if self.expect_continue:
            self.expect_continue = False
            self.connection.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return self.reader.read(self.stream, size)

    def read(self, size: int | None = -1) -> bytes:
        """``size`` bytes (all if negative), fewer only at the end of the body."""
        want = float("inf") if size is None or size < 0 else size
        parts = []
        while want > 0 and (part := self.read1(int(min(want, RECV_SIZE)))):
            want -= len(part)
            parts.append(part)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """WSGI asks for it; a proxy streams with read1()."""
        line = b""
        while not line.endswith(b"\n") and (size is None or size < 0 or len(line) < size):
            part = self.read1(1)
            if not part:
                break
            line += part
        return line

    def __iter__(self):
        while line := self.readline():
            yield line


class ResponseWriter:
    """The response to one request: head and body framing, what was sent."""

    def __init__(self, connection: ClientConnection, head: RequestHead, body: WsgiInput):
        self.connection = connection
        self.request = head
        self.body = body
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.sent = 0  # body bytes, as the access log counts them
        self.length: int | None = None  # the body's announced length
        self.chunked = False
        self.keep_alive = head.keep_alive

    def start_response(self, status: str, headers: list, exc_info=None):
        if exc_info is not None and self.head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        head = b"" if self.head_sent else self._head(final=False)
        if self.length is not None and self.sent + len(data) > self.length:
            data = data[: self.length - self.sent]  # more than announced: never sent
            self.keep_alive = False
        if data and self.chunked:
            data = chunk(data)
        elif not data and not head:
            return
        self.sent += len(data)
        self.connection.send(head + data if head else data)

    def finish(self) -> None:
        """The app's iterable is exhausted: send what framing remains."""
        if not self.head_sent:
            self.connection.send(self._head(final=True))
        elif self.chunked:
            self.connection.send(LAST_CHUNK)
        elif self.length is not None and self.sent < self.length:
            self.keep_alive = False  # fewer bytes than announced: only a close tells the client

    def fail(self, error: Exception) -> None:
        """The app raised: a 500 if nothing was sent yet, else a cut connection."""
        self.keep_alive = False
        if self.head_sent:
            log.info("lbproxy: response cut off: %s: %s", type(error).__name__, error)
            return
        log.exception("lbproxy: error handling %s %s", self.request.method, self.request.target)
        body = b"500 Internal Server Error\n"
        self.status = "500 Internal Server Error"
        self.headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        with contextlib.suppress(OSError):
            self.write(body)

    def _fields(self, headers: list[tuple[str, str]]) -> str:
        """The lines of ``headers`` but those the server decides, and their Content-Length."""
        names = lower_names(headers)
        for value in field_values(names, headers, "content-length"):
            self.length = content_length([value])
        # Connection, Transfer-Encoding and Keep-Alive are the server's to decide.
        if _FRAMING_HEADERS.isdisjoint(names):
            return field_block(headers)
        return field_block(
            [item for key, item in zip(names, headers, strict=True) if key not in _FRAMING_HEADERS]
        )

    def _head(self, final: bool) -> bytes:
        """The status line and headers, with the framing this response gets."""
        if self.status is None:
            raise RuntimeError("the application did not call start_response")
        code = int(self.status[:3])
        request = self.request
        headers = self.headers
        if (
            type(headers) is RenderedFields
            and headers.intact()
            and _FRAMING_HEADERS.isdisjoint(headers.names)
        ):
            # The lines are made already: a proxied response's (app/upstream/response.py).
            self.length = headers.length
            fields = headers.block
        else:
            fields = self._fields(headers)
        if not response_has_body(request.method, code):
            self.length = 0  # no body, whatever Content-Length says
        elif self.length is None:
            if final:
                fields += "Content-Length: 0\r\n"
                self.length = 0
            elif request.version >= (1, 1):
                fields += "Transfer-Encoding: chunked\r\n"
                self.chunked = True
            else:
                self.keep_alive = False  # an HTTP/1.0 body without a length ends at close
        # An unread request body (the app answered without it) would be taken
        # for the next request: the connection ends with this response.
        if not (self.keep_alive and self.body.done and self.connection.server.worker.alive):
            self.keep_alive = False
            fields += "Connection: close\r\n"
        elif request.version < (1, 1):
            fields += "Connection: keep-alive\r\n"
        head = f"HTTP/1.1 {self.status}\r\n{_server_and_date()}{fields}\r\n".encode("latin-1")
        self.head_sent = True
        return head


_FRAMING_HEADERS = frozenset({"connection", "transfer-encoding", "keep-alive"})

# WSGI keys of the header names seen, so that each name is converted once.
_ENVIRON_KEYS: dict[str, str | None] = {}
_ENVIRON_KEYS_MAX = 4096


def _environ_key(name: str) -> str | None:
    """``X-Request-Id`` -> ``HTTP_X_REQUEST_ID``; None for a name with ``_``.

    WSGI maps ``-`` and ``_`` to the same key, so a client could pass a name
    that an upstream would take for another; such headers are dropped, as
    nginx (``underscores_in_headers off``) and gunicorn do.
    """
    if "_" in name:
        key = None
    else:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
    if len(_ENVIRON_KEYS) < _ENVIRON_KEYS_MAX:
        _ENVIRON_KEYS[name] = key
    return key


_date_cache = [0, ""]


def _server_and_date() -> str:
    """The Server and Date lines, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = f"Server: {SERVER_NAME}\r\nDate: {formatdate(now, usegmt=True)}\r\n"
    return _date_cache[1]


def _count_request(worker) -> None:
    """gunicorn's max_requests: restart the worker after that many requests."""
    worker.nr += 1
    if worker.nr >= worker.max_requests and worker.alive:
        log.info("Autorestarting worker after current request.")
        worker.alive = False
