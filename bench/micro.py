"""In-process costs of single steps of the hot path, in µs per call.

The load runs give CPU µs per request for the whole proxy; a step of a few µs
is inside their noise. These time one step on its own, on a real loopback TCP
connection where a socket is involved, as the median of several rounds:

- ``reuse_check``: the readiness poll a pooled connection passes at checkout
  (app/upstream/pool.py): data or end-of-file waiting on an idle connection means it
  is not reused;
- ``response_head``: parsing a typical upstream response head (app/http/framing.py);
- ``request_head``: parsing a typical client request head.

``python -m bench.micro`` prints them as JSON.
"""

from __future__ import annotations

import json
import socket
import statistics
import time

from app.http.framing import HeadLimits, parse_request_head, parse_response_head
from app.upstream.pool import readable

ROUNDS = 7

RESPONSE_HEAD = (
    "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 05 Dec 2026 00:00:00 GMT\r\n"
    "Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    "Connection: keep-alive\r\nLast-Modified: Sat, 05 Dec 2026 00:00:00 GMT\r\n"
    'ETag: "6750f000-400"\r\nAccept-Ranges: bytes'
)
REQUEST_HEAD = (
    "GET /1k HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
    "Accept-Encoding: gzip\r\nX-Request-Id: 0123456789abcdef"
)
LIMITS = HeadLimits(request_line=8190, header_count=100, header_size=8190)


def _per_call_us(step, calls: int) -> float:
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(calls):
            step()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return round(statistics.median(rounds), 3)


def measure(calls: int = 20000) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        idle = _per_call_us(lambda: readable(client), calls)
        assert not readable(client)  # what was timed is the clean case
    finally:
        for sock in (client, server, listener):
            sock.close()
    return {
        "reuse_check_us": idle,
        "response_head_us": _per_call_us(lambda: parse_response_head(RESPONSE_HEAD, "GET"), calls),
        "request_head_us": _per_call_us(lambda: parse_request_head(REQUEST_HEAD, LIMITS), calls),
        "calls": calls,
        "rounds": ROUNDS,
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
