"""The bench's ASGI peer: a raw ASGI app (no framework) that forwards every request
to $BENCH_UPSTREAM through a pooled aiohttp client session (bench_forward.py).

The same ``bench_asgi:app`` runs under uvicorn (uvloop, httptools) and granian
(its ASGI interface), each with its own workers (bench/peers.py has the
commands); every worker process makes its session on its first request, in its
own event loop, and closes it at the lifespan's shutdown.
"""

from __future__ import annotations

import aiohttp
from bench_forward import HOP_BY_HOP, end_to_end, new_session, upstream_url

_session: aiohttp.ClientSession | None = None
# Response fields not passed on, as ASGI's bytes. Content-Length is kept: the body
# is read whole and sent as it came, and without it the server would chunk it.
RESPONSE_DROP = frozenset(name.encode() for name in HOP_BY_HOP)


def session() -> aiohttp.ClientSession:
    global _session
    if _session is None:  # no await since the check: no other request can race it
        _session = new_session()
    return _session


async def app(scope, receive, send) -> None:
    if scope["type"] == "http":
        await proxy(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)


async def proxy(scope, receive, send) -> None:
    body = await read_body(receive)
    target = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    headers = end_to_end((n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"])
    try:
        async with session().request(
            scope["method"], upstream_url(target.decode("latin-1")), headers=headers,
            data=body or None,
        ) as upstream:  # fmt: skip
            payload = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        status, kept = 502, [(b"content-type", b"text/plain")]
        payload = f"upstream: {type(error).__name__}\n".encode()
    else:
        status, kept = upstream.status, response_headers(upstream.raw_headers)
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": payload})


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    """The upstream's header pairs, as it sent them, minus the hop-by-hop ones."""
    drop = RESPONSE_DROP | {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(name, value) for name, value in raw if name.lower() not in drop]


async def lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
