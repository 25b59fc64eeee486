"""Turn a WSGI request into the request lbproxy will forward.

Three things matter here: the routing key (which domain the client asked
for), the request target byte for byte (``PATH_INFO`` is percent-decoded, so it
is never used), and the body as a stream that is read only as it is sent
upstream.

lbproxy's own server (app/http/server.py) hands over the request head it parsed
(``environ["lbproxy.request_head"]``): target, Host and header fields are
taken from it as they are. Under gunicorn's server they are rebuilt from the
environ (``RAW_URI``, the ``HTTP_*`` keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from app.errors import BadRequest, BodyTooLarge, ClientAbort, MethodNotAllowed
from app.http.framing import (
    ContentTooLarge,
    ProtocolError,
    RequestHead,
    connection_tokens,
    split_target,
)
from app.http.headers import environ_fields, upstream_headers

BODY_CHUNK = 64 * 1024
HEAD_KEY = "lbproxy.request_head"  # the parsed head, from app/http/server.py
# A callable giving the bytes the server received past the request (a tunnel's first bytes).
TAKE_BUFFERED_KEY = "lbproxy.take_buffered"

# A DNS name or IPv4 literal (RFC 3986 reg-name, as names are really written).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass
class ProxyRequest:
    method: str
    target: str  # origin-form ("/path?query") exactly as the client sent it
    domain: str  # routing key: lower-case host name, no port
    headers: list[tuple[str, str]]  # as sent upstream, in order
    body: RequestBody | None
    client_socket: object = None  # watched for a client that leaves while we wait
    request_id: str = ""
    # Sent again on a fresh connection because a pooled one turned out closed
    # (app/upstream/forward.py): counted with the retries.
    stale_retries: int = 0
    # The protocol a tunnelled upgrade asks for ("websocket"), else None.
    upgrade: str | None = None
    # The affinity cookie's value the client sent (taken out of ``headers`` by
    # the route: app/traffic/affinity.py), else None.
    affinity_cookie: str | None = None

    @property
    def replayable(self) -> bool:
        """True until a body byte has been taken from the client."""
        return self.body is None or not self.body.started


def parse_request(
    environ: dict, max_body_size: int | None = None, request_id: str = ""
) -> ProxyRequest:
    if environ["REQUEST_METHOD"] == "CONNECT":
        raise MethodNotAllowed()
    head: RequestHead | None = environ.get(HEAD_KEY)
    if head is not None:
        method, target, authority, host, fields = (
            head.method,
            head.path,
            head.authority,
            head.host,
            head.headers,
        )
    else:
        method, target, authority, host, fields = _from_environ(environ)
    # RFC 9112 §3.2.2: an absolute-form target's authority replaces the Host header.
    host_header = authority or host
    if not host_header:
        raise BadRequest("missing Host header")
    domain = domain_of(host_header)
    names = head.names if head is not None else None
    upgrade = tunnelled_upgrade(fields, names)
    headers = upstream_headers(
        fields,
        host=host_header,
        client=environ.get("REMOTE_ADDR", ""),
        proto=environ.get("wsgi.url_scheme", "http"),
        request_id=request_id,
        upgrade=upgrade,
        names=names,
    )
    body = request_body(environ, head, max_body_size)
    if upgrade is not None and (method != "GET" or body is not None):
        # RFC 6455 §4.1: the opening handshake is a GET without a body.
        raise BadRequest(f"an upgrade to {upgrade} must be a GET without a body")
    client = environ.get("gunicorn.socket")
    request = ProxyRequest(method, target, domain, headers, body, client, request_id)
    request.upgrade = upgrade
    return request


# Protocols an Upgrade may tunnel to; h2c never is (its Upgrade is stripped, as
# every hop-by-hop field): lbproxy speaks HTTP/1.1 to upstreams.
TUNNELLED = frozenset({"websocket"})


def tunnelled_upgrade(fields, names: list[str] | None = None) -> str | None:
    """ "websocket" when ``Connection`` lists ``upgrade`` and ``Upgrade`` names
    an allowed protocol (the first one it names); else None: a plain request.

    ``names``: the fields' names lower-cased, when the parser has them.
    """
    if names is not None and ("upgrade" not in names or "connection" not in names):
        return None
    connection = upgrade = None
    for name, value in fields:
        lower = name.lower()
        if lower == "connection":
            connection = f"{connection},{value}" if connection else value
        elif lower == "upgrade":
            upgrade = f"{upgrade},{value}" if upgrade else value
    if connection is None or upgrade is None or "upgrade" not in connection_tokens(connection):
        return None
    first = upgrade.split(",")[0].strip().split("/")[0].lower()
    return first if first in TUNNELLED else None


def _from_environ(environ: dict):
    """(method, origin-form target, authority, Host, fields) off gunicorn's environ."""
    method = environ["REQUEST_METHOD"]
    try:
        target, authority = split_target(raw_target(environ))
    except ProtocolError as error:
        raise BadRequest(str(error)) from None
    host = environ.get("HTTP_HOST")
    # RFC 9112 §3.2: a 1.1 request without Host is refused, absolute-form or not.
    if host is None and environ.get("SERVER_PROTOCOL") == "HTTP/1.1":
        raise BadRequest("missing Host header")
    return method, target, authority, host, environ_fields(environ)


def raw_target(environ: dict) -> str:
    """The request target as received; rebuilt from the decoded parts off gunicorn."""
    raw = environ.get("RAW_URI")
    if raw:
        return raw
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = quote(path.encode("latin-1"), safe="/;=@:!$&'()*+,~-._")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path or "/"


def domain_of(host_header: str) -> str:
    """``API.Example.com.:8080`` -> ``api.example.com``; ``[::1]:80`` -> ``::1``."""
    host = host_header.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not _is_port_suffix(host[end + 1 :])):
            raise BadRequest("invalid Host header")
        return host[1:end].lower()
    name, _, port = host.partition(":")
    if not _HOST_NAME.fullmatch(name) or (port and not port.isdigit()):
        raise BadRequest("invalid Host header")
    return name.lower().rstrip(".")


def _is_port_suffix(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit()


def request_body(
    environ: dict, head: RequestHead | None = None, limit: int | None = None
) -> RequestBody | None:
    if head is not None:
        length, chunked = head.content_length, head.chunked
    else:
        value = environ.get("CONTENT_LENGTH")
        length = int(value) if value else None
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked:
        return RequestBody(environ["wsgi.input"], None, limit)
    if length:
        if limit is not None and length > limit:
            raise BodyTooLarge(f"Content-Length {length} > {limit}")
        return RequestBody(environ["wsgi.input"], length)
    return None


class RequestBody:
    """The client's body, read as it arrives and sent upstream piece by piece.

    ``length`` is None for a chunked body (the server has de-chunked it; it is
    re-chunked upstream); ``limit`` caps such a body as it streams, with a 413
    as soon as the byte past it arrives. A stream with ``read1`` (lbproxy's
    server) hands over whatever has arrived rather than waiting for 64 KiB. ``started`` tells
    whether any byte was taken from the client: after that the request can no
    longer be replayed.
    """

    def __init__(self, stream, length: int | None, limit: int | None = None):
        self.stream = stream
        self.length = length
        self.limit = limit
        self.started = False
        self.bytes_read = 0

    @property
    def chunked(self) -> bool:
        return self.length is None

    def __iter__(self):
        self.started = True
        read = getattr(self.stream, "read1", None) or self.stream.read
        remaining = self.length
        total = 0
        while remaining is None or remaining > 0:
            size = BODY_CHUNK if remaining is None else min(BODY_CHUNK, remaining)
            if self.limit is not None:
                # Never wait for more than the byte that passes the limit: a read
                # that blocks until it has all it asked for (gunicorn's) would
                # otherwise sit on an over-limit upload that stalls.
                size = min(size, self.limit - total + 1)
            try:
                chunk = read(size)
            except ContentTooLarge as error:
                raise BodyTooLarge(str(error)) from None
            except Exception as error:  # the server's parse errors, or OSError
                raise ClientAbort(str(error)) from error
            if not chunk:
                if remaining:
                    raise ClientAbort("client closed before the end of the body")
                return
            if remaining is not None:
                remaining -= len(chunk)
            total += len(chunk)
            self.bytes_read = total
            if self.limit is not None and total > self.limit:
                raise BodyTooLarge(f"chunked body over {self.limit} bytes")
            yield chunk
