"""Which headers cross the proxy, in each direction.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message,
so they stop here: the fixed list below plus every name the ``Connection``
header lists. Everything else passes as the peer sent it.
"""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# The proxy writes its own Date and Server on every response (app/server.py); passing the
# upstream's too would send both twice (nginx hides the upstream's likewise).
# X-Request-Id is the proxy's: it sends the id it forwarded.
REPLACED_BY_PROXY = frozenset({"date", "server", "x-request-id"})

# WSGI keeps two request headers outside the HTTP_ namespace.
_CGI_HEADERS = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


def connection_tokens(value: str | None) -> frozenset[str]:
    """The header names a ``Connection`` header value lists, lower-cased."""
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


def header_name(environ_key: str) -> str:
    """``HTTP_X_REQUEST_ID`` -> ``X-Request-Id`` (field names are case-insensitive)."""
    return environ_key[5:].replace("_", "-").title()


def request_headers(environ: dict) -> dict[str, str]:
    """The end-to-end headers of a WSGI request, with their HTTP names."""
    dropped = HOP_BY_HOP | connection_tokens(environ.get("HTTP_CONNECTION"))
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = header_name(key)
        elif key in _CGI_HEADERS:
            name = _CGI_HEADERS[key]
        else:
            continue
        if name.lower() not in dropped:
            headers[name] = value
    return headers


def add_forwarded(headers: dict[str, str], client: str, proto: str, host: str) -> None:
    """Append the client to X-Forwarded-For; set X-Forwarded-Proto and -Host."""
    previous = headers.pop("X-Forwarded-For", None)
    headers["X-Forwarded-For"] = f"{previous}, {client}" if previous else client
    headers["X-Forwarded-Proto"] = proto
    headers["X-Forwarded-Host"] = host


def response_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers to pass on, repeated names kept as separate lines."""
    items = list(items)
    dropped = HOP_BY_HOP | REPLACED_BY_PROXY
    for name, value in items:
        if name.lower() == "connection":
            dropped = dropped | connection_tokens(value)
    return [(name, value) for name, value in items if name.lower() not in dropped]
