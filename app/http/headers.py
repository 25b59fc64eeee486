"""Which headers cross the proxy, in each direction.

Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message,
so they stop here: the fixed list below plus every name a ``Connection``
header lists. Framing headers are never passed on either: each side of the
proxy frames its own messages (app/http/framing.py). Everything else passes as the
peer sent it, in its order, repeats kept.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from itertools import compress

from app.http.framing import connection_tokens, field_values, lower_names

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

# The proxy writes its own Date and Server on every response (app/http/server.py); passing the
# upstream's too would send both twice (nginx hides the upstream's likewise).
# X-Request-Id is the proxy's: it sends the id it forwarded.
REPLACED_BY_PROXY = frozenset({"date", "server", "x-request-id"})

# Request headers the proxy sets itself (Content-Length: from the body it sends).
SET_BY_PROXY = frozenset(
    {
        "host",
        "content-length",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)

# WSGI keeps two request headers outside the HTTP_ namespace.
_CGI_HEADERS = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


def header_name(environ_key: str) -> str:
    """``HTTP_X_REQUEST_ID`` -> ``X-Request-Id`` (field names are case-insensitive)."""
    return environ_key[5:].replace("_", "-").title()


def environ_fields(environ: dict) -> list[tuple[str, str]]:
    """The request's header fields, rebuilt from a WSGI environ (gunicorn's server)."""
    fields = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            fields.append((header_name(key), value))
        elif key in _CGI_HEADERS:
            fields.append((_CGI_HEADERS[key], value))
    return fields


def upstream_headers(
    fields: Iterable[tuple[str, str]],
    host: str,
    client: str,
    proto: str,
    request_id: str = "",
    upgrade: str | None = None,
    names: list[str] | None = None,
) -> list[tuple[str, str]]:
    """The headers sent upstream: the client's end-to-end fields, then the proxy's.

    ``Host`` first (the client's, or an absolute-form target's authority), the
    client fields minus hop-by-hop ones and those the proxy sets, then
    X-Forwarded-For (the client appended to what it said), -Proto, -Host and
    X-Request-Id. For a tunnelled upgrade (``upgrade``: the protocol), an
    ``Upgrade`` naming only that protocol and a ``Connection: Upgrade`` go too. A name with
    ``_`` is dropped, as nginx (``underscores_in_headers off``) and gunicorn
    do: WSGI maps ``-`` and ``_`` to one key, so an upstream could take it for
    another header. ``names``: the fields' names lower-cased, when the parser has them.
    """
    fields = list(fields)
    if names is None:
        names = lower_names(fields)
    dropped = _DROPPED_FROM_REQUESTS
    if "connection" in names:  # (list scans in C: most requests have neither)
        for value in field_values(names, fields, "connection"):
            dropped = _with_listed(dropped, value)
    forwarded_for = []
    if "x-forwarded-for" in names:
        forwarded_for = field_values(names, fields, "x-forwarded-for")
    _check_paired(names, fields)
    headers = [("Host", host)]
    headers += [
        field
        for key, field in zip(names, fields)  # noqa: B905 (checked above)
        if key not in dropped and "_" not in key
    ]
    if upgrade is not None:
        # Exactly the protocol lbproxy tunnels, whatever else the client offered.
        headers += [("Upgrade", upgrade), ("Connection", "Upgrade")]
    forwarded_for.append(client)
    headers += [
        ("X-Forwarded-For", ", ".join(forwarded_for)),
        ("X-Forwarded-Proto", proto),
        ("X-Forwarded-Host", host),
    ]
    if request_id:
        headers.append(("X-Request-Id", request_id))
    return headers


def response_headers(
    items: Iterable[tuple[str, str]],
    names: list[str] | None = None,
    also_dropped: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Upstream response headers to pass on, repeated names kept as separate lines.

    ``names``: the items' names lower-cased, when the parser has them already
    (``ResponseHead.names``); ``also_dropped``: more lower-case names to leave out.
    """
    if type(items) is not list:  # (a list is only read: the result is a new one)
        items = list(items)
    if names is None:
        names = lower_names(items)
    dropped = _response_dropped(items, names, also_dropped)
    _check_paired(names, items)
    return [item for key, item in zip(names, items) if key not in dropped]  # noqa: B905 (checked)


def _check_paired(names: list[str], fields: list) -> None:
    """The names are the fields' own, one each. (Checked here once: zip's
    ``strict=True`` is a keyword call, which costs a tenth of a comprehension
    over a 9-field head.)"""
    if len(names) != len(fields):
        raise ValueError("header names and fields differ in number")


def kept_response_lines(
    items: list[tuple[str, str]],
    names: list[str],
    lines: list[str],
    also_dropped: frozenset[str] = frozenset(),
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """``response_headers``, with the kept fields' names and their lines as
    received (``lines``: one per item, from the head reader), for a response
    whose lines are passed on as they are (app/upstream/response.py)."""
    _check_paired(names, items)
    _check_paired(lines, items)
    dropped = _response_dropped(items, names, also_dropped)
    keep = [name not in dropped for name in names]
    return list(compress(items, keep)), list(compress(names, keep)), list(compress(lines, keep))


def _response_dropped(
    items: list[tuple[str, str]], names: list[str], also_dropped: frozenset[str]
) -> frozenset[str]:
    """The names a response's headers lose: hop-by-hop ones, those its
    Connection lists, and ``also_dropped``."""
    dropped = _dropped_from_responses(also_dropped)
    if "connection" in names:
        for value in field_values(names, items, "connection"):
            dropped = _with_listed(dropped, value)
    return dropped


_DROPPED_FROM_REQUESTS = HOP_BY_HOP | SET_BY_PROXY
_DROPPED_FROM_RESPONSES = HOP_BY_HOP | REPLACED_BY_PROXY


@functools.lru_cache(maxsize=8)
def _dropped_from_responses(also: frozenset[str]) -> frozenset[str]:
    return _DROPPED_FROM_RESPONSES | also


def _with_listed(dropped: frozenset[str], connection: str) -> frozenset[str]:
    """``dropped`` and the names a Connection header lists (new set only if it adds one)."""
    listed = connection_tokens(connection)
    return dropped if listed <= dropped else dropped | listed
