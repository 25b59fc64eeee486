"""In-process costs of single steps of the hot path, in µs per call.

The load runs give CPU µs per request for the whole proxy; a step of a few µs
is inside their noise. These time one step on its own, on a real loopback TCP
connection where a socket is involved, as the median of several rounds:

- ``reuse_check``: the readiness poll a pooled connection passes at checkout
  (app/upstream/pool.py): data or end-of-file waiting on an idle connection means it
  is not reused;
- ``response_head``: parsing a typical upstream response head (app/http/framing.py);
- ``request_head``: parsing a typical client request head;
- ``pick_round_robin``, ``pick_least_connections``: the route and pick steps of
  one request on a 3-host service (circuit breaker, hosts out of rotation, the
  pick, the lease given back), on the pod's shared area (app/traffic/shared.py);
- ``affinity_cookie``, ``affinity_hash``: the same with session affinity: the
  sticky key read from the request's headers (the cookie taken out), the host
  it names or the ring's, and for the cookie, whether to set one;
- ``ring_lookup``: the ring walk alone, 4 hosts x 160 points.

``python -m bench.micro`` prints them as JSON.
"""

from __future__ import annotations

import json
import socket
import statistics
import time

from urllib3.connection import HTTPConnection

from app.config import parse_config
from app.http.framing import HeadLimits, parse_request_head, parse_response_head
from app.traffic.routing import Router
from app.upstream.pool import UpstreamConnection

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


HOSTS = (
    "[{address: 10.0.0.1, port: 80}, {address: 10.0.0.2, port: 80}, {address: 10.0.0.3, port: 80}]"
)
ROUTES = parse_config(
    f"""
proxy:
  services:
    - {{name: rr, domain: rr.test, hosts: {HOSTS}, max_in_flight: 1000}}
    - {{name: lc, domain: lc.test, hosts: {HOSTS}, strategy: least_connections}}
    - {{name: cookie, domain: cookie.test, hosts: {HOSTS}, affinity: {{cookie: {{}}}}}}
    - {{name: hash, domain: hash.test, hosts: {HOSTS}, affinity: {{hash: {{header: X-User}}}}}}
"""
)
HEADERS = [("Host", "rr.test"), ("User-Agent", "wrk"), ("Accept", "*/*")]


def _pick_step(route):
    def step():
        route.admit()
        route.pick([]).release()

    return step


def _affinity_step(route, headers):
    def step():
        sent = list(headers)  # the request's own copy: the cookie is taken out of it
        route.admit()
        sticky, cookie = route.sticky_key(sent)
        lease = route.pick([], sticky)
        values = getattr(route.affinity, "value_of", None)
        if values is not None and values[lease.host] != cookie:
            raise AssertionError("the cookie should have pinned its host")
        lease.release()

    return step


def measure_picks(calls: int) -> dict:
    router = Router(ROUTES)
    cookie, hashed = router.route("cookie.test"), router.route("hash.test")
    bound = cookie.affinity.value_of[cookie.service.hosts[1]]
    cookie_headers = [*HEADERS, ("Cookie", f"theme=dark; lbproxy_affinity={bound}")]
    hash_headers = [*HEADERS, ("X-User", "user-4711")]
    ring = hashed.affinity
    place, _ = ring.sticky_key(hash_headers)
    return {
        "pick_round_robin_us": _per_call_us(_pick_step(router.route("rr.test")), calls),
        "pick_least_connections_us": _per_call_us(_pick_step(router.route("lc.test")), calls),
        "affinity_cookie_us": _per_call_us(_affinity_step(cookie, cookie_headers), calls),
        "affinity_hash_us": _per_call_us(_affinity_step(hashed, hash_headers), calls),
        "ring_lookup_us": _per_call_us(lambda: ring.host_for(place, bool), calls),
    }


def measure(calls: int = 20000) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    conn = HTTPConnection(*listener.getsockname())
    conn.connect()
    server, _ = listener.accept()
    pooled = UpstreamConnection(conn)
    try:
        idle = _per_call_us(pooled.readable, calls)
        assert not pooled.readable()  # what was timed is the clean case
    finally:
        pooled.close()
        for sock in (server, listener):
            sock.close()
    return {
        "reuse_check_us": idle,
        "response_head_us": _per_call_us(lambda: parse_response_head(RESPONSE_HEAD, "GET"), calls),
        "request_head_us": _per_call_us(lambda: parse_request_head(REQUEST_HEAD, LIMITS), calls),
        **measure_picks(calls),
        "calls": calls,
        "rounds": ROUNDS,
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
