"""End to end: the real proxy under gunicorn + gevent, real mock upstreams, 127.0.0.1 only."""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.conftest import BALANCED, COUNTED, DEAD, FAILOVER, SLOW


def call(proxy, domain, path="/", method="GET", **kwargs):
    headers = {"Host": domain, **kwargs.pop("headers", {})}
    return requests.request(
        method, proxy.url + path, headers=headers, timeout=10, allow_redirects=False, **kwargs
    )


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes exactly as written; read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def echoed(raw: bytes) -> dict:
    import json

    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


# --- routing ---------------------------------------------------------------


def test_routes_by_host_case_insensitive_and_ignoring_port(proxy):
    for host in (BALANCED, BALANCED.upper(), f"{BALANCED}:8080", f"{BALANCED}."):
        answer = call(proxy, host)
        assert answer.status_code == 200, host
        assert answer.json()["instance"] in {"a", "b", "c"}


def test_unknown_host_gets_404_and_nothing_is_forwarded(proxy):
    before = call(proxy, COUNTED).json()["served"]
    answer = call(proxy, "unknown.test")
    after = call(proxy, COUNTED).json()["served"]
    assert answer.status_code == 404
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert b"no service" in answer.content and len(answer.content) < 100
    assert after == before + 1  # only our two counted calls reached the mock


def test_absolute_form_target_is_routed_by_its_authority(proxy):
    raw = raw_exchange(
        proxy.port,
        f"GET http://{BALANCED}/abs/p%7e?x=%2f HTTP/1.1\r\nHost: other.test\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    answer = echoed(raw)
    assert (answer["path"], answer["query"]) == ("/abs/p%7e", "x=%2f")
    assert answer["headers"]["Host"] == BALANCED


def test_absolute_form_to_an_unconfigured_host_is_refused(proxy):
    """Never an open proxy: a configured Host header does not let any target through."""
    raw = raw_exchange(
        proxy.port,
        f"GET http://127.0.0.1:{proxy.port}/ HTTP/1.1\r\nHost: {BALANCED}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert raw.startswith(b"HTTP/1.1 404")


def test_round_robin_spreads_requests_over_every_host(proxy):
    seen = Counter(call(proxy, BALANCED).json()["instance"] for _ in range(60))
    assert set(seen) == {"a", "b", "c"}
    # Two workers each run their own round robin: each host gets about a third.
    assert min(seen.values()) >= 12, seen


# --- forwarding ------------------------------------------------------------


def test_every_method_is_forwarded(proxy):
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        answer = call(proxy, BALANCED, "/m", method=method, data=b"x" if method != "GET" else None)
        assert answer.status_code == 200
        assert answer.json()["method"] == method


def test_head_gets_the_headers_and_no_body(proxy):
    get = call(proxy, BALANCED, "/?size=1234")
    head = call(proxy, BALANCED, "/?size=1234", method="HEAD")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == "1234"
    assert head.content == b""


def test_path_and_query_are_forwarded_byte_for_byte(proxy):
    target = "/a%7eb/%2f%41/c%20d;p?q=%7e%2f&x=a+b&&y=%41"
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    connection.request("GET", target, headers={"Host": BALANCED})
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    import json

    echo = json.loads(body)
    assert echo["path"] + "?" + echo["query"] == target


def test_request_headers_pass_except_hop_by_hop(proxy):
    raw = raw_exchange(
        proxy.port,
        (
            f"GET /h HTTP/1.1\r\nHost: {BALANCED}\r\n"
            "X-Custom: kept\r\nX-Private: listed in Connection\r\n"
            # Two Connection lines: gunicorn reads "close" only as a whole value.
            "Connection: close\r\nConnection: X-Private\r\nKeep-Alive: timeout=5\r\n"
            "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Checksum\r\n"
            "Upgrade: example/1\r\nX-Forwarded-For: 10.9.8.7\r\n\r\n"
        ).encode(),
    )
    headers = echoed(raw)["headers"]
    assert headers["X-Custom"] == "kept"
    assert headers["Host"] == BALANCED
    for name in ("X-Private", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade"):
        assert name not in headers, name
    assert headers.get("Connection") in (None, "keep-alive")  # the proxy's own hop, if any
    assert headers["X-Forwarded-For"] == "10.9.8.7, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == BALANCED


def test_the_proxy_adds_no_user_agent_or_accept_encoding(proxy):
    raw = raw_exchange(
        proxy.port, f"GET /bare HTTP/1.1\r\nHost: {BALANCED}\r\nConnection: close\r\n\r\n".encode()
    )
    headers = echoed(raw)["headers"]
    assert "User-Agent" not in headers
    assert "Accept-Encoding" not in headers


def test_environment_proxy_settings_are_ignored(proxy):
    """The proxy runs with HTTP_PROXY set to a dead port (conftest): it must not use it."""
    assert call(proxy, BALANCED).status_code == 200


def test_body_of_1_mib_goes_both_ways_intact(proxy):
    payload = os.urandom(1024 * 1024)
    answer = call(proxy, BALANCED, "/?echo=raw", method="POST", data=payload)
    assert answer.status_code == 200
    assert answer.content == payload


def test_chunked_request_body_is_streamed_through(proxy):
    parts = [os.urandom(70_000) for _ in range(5)]
    answer = call(proxy, BALANCED, "/?echo=raw", method="PUT", data=iter(parts))
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert answer.content == b"".join(parts)


def test_chunked_response_is_streamed_through(proxy):
    answer = call(proxy, BALANCED, "/?size=300000&chunked=1")
    assert answer.headers.get("Transfer-Encoding") == "chunked"
    assert len(answer.content) == 300000


def test_gzip_response_stays_gzip(proxy):
    answer = call(proxy, BALANCED, "/?gzip=1", stream=True, headers={"Accept-Encoding": "gzip"})
    raw = answer.raw.read(decode_content=False)
    assert answer.headers["Content-Encoding"] == "gzip"
    assert raw[:2] == b"\x1f\x8b"
    assert b'"instance"' in gzip.decompress(raw)


def test_set_cookie_lines_are_kept_separate(proxy):
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    cookies = "set_cookie=a%3D1%3B%20Path%3D%2F&set_cookie=b%3D2%2C%20x&set_cookie=c%3D3"
    connection.request("GET", f"/?{cookies}", headers={"Host": BALANCED})
    answer = connection.getresponse()
    answer.read()
    connection.close()
    assert answer.msg.get_all("Set-Cookie") == ["a=1; Path=/", "b=2, x", "c=3"]


def test_redirect_is_passed_through_not_followed(proxy):
    answer = call(proxy, BALANCED, "/?status=302&location=http%3A%2F%2Felsewhere.test%2Fx")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "http://elsewhere.test/x"


def test_upstream_status_and_headers_are_passed_on(proxy):
    answer = call(proxy, BALANCED, "/?status=418")
    assert answer.status_code == 418
    assert answer.headers["X-Mock-Instance"] in {"a", "b", "c"}
    assert answer.headers["Server"] == "lbproxy"  # one Server line, not two
    assert "," not in answer.headers["Date"].split(" ", 1)[1]  # one Date line, not two


def test_cookies_of_one_client_never_reach_another(proxy):
    alice = requests.Session()
    bob = requests.Session()
    # Alice is given a cookie by the upstream; the proxy's pooled Session must not keep it.
    first = alice.get(
        proxy.url + "/?set_cookie=session%3Dalice", headers={"Host": BALANCED}, timeout=5
    )
    assert first.headers["Set-Cookie"] == "session=alice"

    def as_bob(_):
        return bob.get(proxy.url + "/", headers={"Host": BALANCED}, timeout=5).json()["headers"]

    def as_alice(_):
        return alice.get(
            proxy.url + "/", headers={"Host": BALANCED, "Cookie": "session=alice"}, timeout=5
        ).json()["headers"]

    with ThreadPoolExecutor(8) as pool:
        bobs = list(pool.map(as_bob, range(30)))
        alices = list(pool.map(as_alice, range(30)))
    assert all("Cookie" not in headers for headers in bobs)
    assert all(headers["Cookie"] == "session=alice" for headers in alices)


def test_100_slow_requests_run_concurrently(proxy):
    """gevent at work: 100 requests held 1 s each by the upstream finish together."""

    def slow(_):
        return call(proxy, BALANCED, "/?delay=1").status_code

    started = time.monotonic()
    with ThreadPoolExecutor(100) as pool:
        statuses = list(pool.map(slow, range(100)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 100
    assert elapsed < 5, f"100 x 1 s requests took {elapsed:.1f} s"


# --- failures --------------------------------------------------------------


def test_a_dead_host_is_skipped_with_no_failed_request(proxy):
    statuses = [call(proxy, FAILOVER).status_code for _ in range(20)]
    posts = [call(proxy, FAILOVER, method="POST", data=b"p").status_code for _ in range(5)]
    assert statuses == [200] * 20
    assert posts == [200] * 5  # refused connections carried nothing: safe for POST too


def test_no_host_answering_gets_a_fast_502(proxy):
    started = time.monotonic()
    answer = call(proxy, DEAD)
    assert answer.status_code == 502
    assert time.monotonic() - started < 1
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert b"Traceback" not in answer.content and len(answer.content) < 100


def test_read_timeout_gets_504_within_the_configured_time(proxy):
    started = time.monotonic()
    answer = call(proxy, SLOW, "/?delay=3")
    elapsed = time.monotonic() - started
    assert answer.status_code == 504
    assert 0.4 < elapsed < 1.5  # read timeout is 0.5 s
    assert b"Traceback" not in answer.content and len(answer.content) < 100
    # The worker is fine and the same service still serves.
    assert call(proxy, SLOW, "/").status_code == 200


def test_missing_host_header_is_a_400(proxy):
    raw = raw_exchange(proxy.port, b"GET / HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 400") or raw.startswith(b"HTTP/1.1 400")
    assert call(proxy, BALANCED).status_code == 200


def test_connecting_to_numeric_upstreams_starts_no_thread(proxy):
    """gevent would convert each IP address in a thread of its pool
    (app/process/gevent_worker.NumericFirstResolver)."""
    with ThreadPoolExecutor(8) as pool:  # new client connections: new upstream ones too
        assert all(pool.map(lambda _: call(proxy, BALANCED).ok, range(40)))
    for worker in proxy.children():
        assert os.listdir(f"/proc/{worker}/task") == [str(worker)]
