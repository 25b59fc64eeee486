"""What the asyncio peers share: the upstream, one pooled aiohttp client session
per process, and a reverse proxy's header rules.

bench_aiohttp.py (aiohttp's server) and bench_asgi.py (a raw ASGI app under
uvicorn or granian) forward every request through ``new_session()`` to
$BENCH_UPSTREAM. They run in bench/.venv-peers, which imports them through
PYTHONPATH=bench/plugins; nothing here is lbproxy's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import aiohttp
from yarl import URL

UPSTREAM = os.environ["BENCH_UPSTREAM"]  # e.g. http://127.0.0.1:8081

# Hop-by-hop fields (RFC 9110 7.6.1) are the connection's, never forwarded.
# Content-Length too: each side sets it for the body it sends.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {"content-length"}


def new_session() -> aiohttp.ClientSession:
    """The process's pooled, keep-alive session to the upstream.

    No pool limit: one upstream connection per request in flight, as lbproxy's
    pool is as deep as its worker's connections. No cookie jar (a proxy must not
    keep one client's cookies for the next), no decompression (the body passes as
    it came), and no header the client did not send.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=75),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
        timeout=aiohttp.ClientTimeout(total=30, sock_connect=2),
    )


def upstream_url(target: str) -> URL:
    """The upstream URL of a request target (path and query, as the client sent them)."""
    return URL(UPSTREAM + target, encoded=True)


def end_to_end(pairs: Iterable[tuple[str, str]], drop=NOT_FORWARDED) -> list[tuple[str, str]]:
    """Header pairs to forward: all but ``drop`` and the fields Connection names."""
    pairs = list(pairs)
    drop = drop | {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(name, value) for name, value in pairs if name.lower() not in drop]
