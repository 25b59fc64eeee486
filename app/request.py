"""Turn a WSGI environ into the request lbproxy will forward.

Three things matter here: the routing key (which domain the client asked
for), the request target byte for byte (``PATH_INFO`` is percent-decoded, so we
use gunicorn's ``RAW_URI``), and the body as a stream that is read only as it
is sent upstream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from app.errors import BadRequest, BodyTooLarge, ClientAbort, MethodNotAllowed
from app.headers import add_forwarded, request_headers

BODY_CHUNK = 64 * 1024

# A DNS name or IPv4 literal (RFC 3986 reg-name, as names are really written).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass
class ProxyRequest:
    method: str
    target: str  # origin-form ("/path?query") exactly as the client sent it
    domain: str  # routing key: lower-case host name, no port
    headers: dict[str, str]
    body: RequestBody | None
    client_socket: object = None  # watched for a client that leaves while we wait
    request_id: str = ""

    @property
    def replayable(self) -> bool:
        """True until a body byte has been taken from the client."""
        return self.body is None or not self.body.started

    @property
    def replayable_always(self) -> bool:
        """True when the request has no body: it can be sent again at any point."""
        return self.body is None


def parse_request(
    environ: dict, max_body_size: int | None = None, request_id: str = ""
) -> ProxyRequest:
    method = environ["REQUEST_METHOD"]
    if method == "CONNECT":
        raise MethodNotAllowed()
    target, authority = split_target(raw_target(environ))
    # RFC 9112 §3.2.2: an absolute-form target's authority replaces the Host header.
    host_header = authority or environ.get("HTTP_HOST")
    if not host_header:
        raise BadRequest("missing Host header")
    domain = domain_of(host_header)
    headers = request_headers(environ)
    headers["Host"] = host_header
    if request_id:
        headers["X-Request-Id"] = request_id
    add_forwarded(
        headers,
        client=environ.get("REMOTE_ADDR", ""),
        proto=environ.get("wsgi.url_scheme", "http"),
        host=host_header,
    )
    body = request_body(environ, max_body_size)
    client = environ.get("gunicorn.socket")
    return ProxyRequest(method, target, domain, headers, body, client, request_id)


def raw_target(environ: dict) -> str:
    """The request target as received; rebuilt from the decoded parts off gunicorn."""
    raw = environ.get("RAW_URI")
    if raw:
        return raw
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = quote(path.encode("latin-1"), safe="/;=@:!$&'()*+,~-._")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path or "/"


def split_target(raw: str) -> tuple[str, str | None]:
    """Split an absolute-form target into (origin-form target, authority).

    Origin-form ("/a?b") and asterisk-form ("*") come back unchanged with no
    authority.
    """
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return raw, None
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    if not authority or "@" in authority:
        raise BadRequest("invalid authority in absolute-form request target")
    if target.startswith("?"):
        target = "/" + target
    return target or "/", authority


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


def request_body(environ: dict, limit: int | None = None) -> RequestBody | None:
    length = environ.get("CONTENT_LENGTH")
    if length:
        if limit is not None and int(length) > limit:
            raise BodyTooLarge(f"Content-Length {length} > {limit}")
        return RequestBody(environ["wsgi.input"], int(length))
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return RequestBody(environ["wsgi.input"], None, limit)
    return None


class RequestBody:
    """The client's body, read chunk by chunk as it is sent upstream.

    ``length`` is None for a chunked body (gunicorn has already de-chunked it;
    it is re-chunked upstream); ``limit`` caps such a body as it streams.
    ``started`` tells whether any byte was taken from the client: after that
    the request can no longer be replayed.
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
        remaining = self.length
        total = 0
        while remaining is None or remaining > 0:
            size = BODY_CHUNK if remaining is None else min(BODY_CHUNK, remaining)
            try:
                chunk = self.stream.read(size)
            except Exception as error:  # gunicorn raises its parse errors or OSError
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
