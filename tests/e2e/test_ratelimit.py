"""Rate limits end to end: proxies with 2 workers each, a real redis-server, a real StatsD."""

from __future__ import annotations

import http.client
import os
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devkit.processes import wait_until
from tests.processes import Proxy, RedisServer, start_mock, write_config


@pytest.fixture(scope="module")
def mock():
    server = start_mock("limited")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis():
    server = RedisServer()
    yield server
    server.stop()


def services(mock):
    host = [{"address": "127.0.0.1", "port": mock.port}]

    def limited(name, **limit):
        return {"name": name, "domain": f"{name}.test", "hosts": host, "rate_limit": limit}

    return [
        limited("local", rate=2, burst=4),
        limited("header", rate=1, burst=1, key="header:X-User"),
        limited("xff", rate=1, burst=1),
        limited("global", rate=2, burst=5, scope="global"),
        limited("roomy", rate=1000, burst=1000, scope="global"),
        limited("expiring", rate=2, burst=3, scope="global"),
    ]


@pytest.fixture(scope="module")
def configs(directory, mock, redis, statsd):
    settings = {
        "redis": {"url": f"redis://127.0.0.1:{redis.port}/0", "timeout": 0.05},
        "trusted_proxies": ["127.0.0.3/32"],
        "statsd": {"host": "127.0.0.1", "port": statsd.udp_port, "interval": 0.2},
    }
    return [write_config(directory, services(mock), **settings) for _ in range(2)]


@pytest.fixture(scope="module")
def proxies(configs):
    servers = [Proxy(config, workers=2) for config in configs]  # two replicas
    yield servers
    for server in servers:
        server.stop()


def get(proxy, domain, headers=None, source="127.0.0.1"):
    """One request on a new connection from ``source``: (status, headers, seconds)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", proxy.port, timeout=10, source_address=(source, 0)
    )
    started = time.monotonic()
    try:
        conn.request("GET", "/", headers={"Host": domain, **(headers or {})})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders()), time.monotonic() - started
    finally:
        conn.close()


def burst(targets, count=20):
    """``count`` requests at once, spread over ``targets`` ((proxy, domain, headers, source))."""
    with ThreadPoolExecutor(count) as pool:
        jobs = [pool.submit(get, *targets[i % len(targets)]) for i in range(count)]
        return [job.result()[0] for job in jobs]


def test_a_simultaneous_burst_passes_burst_plus_one_then_the_rate(proxies):
    proxy = proxies[0]
    statuses = burst([(proxy, "local.test", None, "127.0.0.1")])
    assert statuses.count(200) == 5 and statuses.count(429) == 15  # burst 4 + 1, 2 workers
    time.sleep(1.0)  # rate 2/s: two more
    statuses = [get(proxy, "local.test")[0] for _ in range(4)]
    assert statuses == [200, 200, 429, 429]


def test_a_limited_request_is_a_429_with_retry_after_and_never_forwarded(proxies, mock):
    proxy = proxies[0]
    served = _served(mock)
    while get(proxy, "local.test", source="127.0.0.9")[0] == 200:
        pass
    status, headers, _ = get(proxy, "local.test", source="127.0.0.9")
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Policy"] == '"lbproxy";q=6;w=3'  # 2/s over 3 s
    assert headers["RateLimit"].startswith('"lbproxy";r=0;t=')
    assert _served(mock) - served == 5 + 1  # the 5 that passed, and this look


def _served(mock) -> int:
    import requests

    return requests.get(f"http://127.0.0.1:{mock.port}/", timeout=5).json()["served"]


def test_keys_are_isolated_by_client_and_by_header_value(proxies):
    proxy = proxies[0]
    for source in ("127.0.0.4", "127.0.0.5"):  # two clients, each its own bucket
        assert [get(proxy, "header.test", source=source)[0] for _ in range(3)] == [200, 200, 429]
    for user in ("alice", "bob"):
        answers = [get(proxy, "header.test", {"X-User": user}, "127.0.0.6")[0] for _ in range(3)]
        assert answers == [200, 200, 429]


def test_x_forwarded_for_keys_only_from_a_trusted_proxy(proxies):
    proxy = proxies[0]
    spoofed = [get(proxy, "xff.test", {"X-Forwarded-For": f"6.6.6.{i}"})[0] for i in range(4)]
    assert spoofed == [200, 200, 429, 429]  # an untrusted peer: its own address counts
    for client in ("1.1.1.1", "2.2.2.2"):  # through the trusted 127.0.0.3: per client
        answers = [
            get(proxy, "xff.test", {"X-Forwarded-For": client}, "127.0.0.3")[0] for _ in range(3)
        ]
        assert answers == [200, 200, 429]


def test_two_replicas_share_a_global_limit(proxies):
    targets = [(proxy, "global.test", None, "127.0.0.7") for proxy in proxies]
    statuses = burst(targets, 24)
    assert statuses.count(200) == 6  # burst 5 + 1 for 2 masters x 2 workers


def test_keys_expire_by_themselves(proxies, redis):
    for _ in range(3):
        get(proxies[0], "expiring.test", source="127.0.0.8")
    assert redis.command("dbsize") != ":0"
    # Every key's TAT passes within burst / rate (1.5 s) of its last request.
    assert wait_until(lambda: redis.command("dbsize") == ":0", redis, 6, "keys to expire")


def test_without_redis_requests_pass_and_with_it_back_limiting_resumes(proxies, redis, statsd):
    proxy = proxies[0]
    before = statistics.median(get(proxy, "roomy.test")[2] for _ in range(30))
    port = redis.port
    for pid in redis.tree():
        os.kill(pid, signal.SIGKILL)
    redis.wait(5)
    answers = [get(proxy, "global.test", source="127.0.0.10") for _ in range(20)]
    assert {status for status, _, _ in answers} == {200}  # fail open
    during = statistics.median(get(proxy, "roomy.test")[2] for _ in range(30))
    assert during < before + 0.01, (before, during)
    counters = {}
    assert wait_until(
        lambda: (
            counters.update(statsd.counters())
            or counters.get("lbproxy.ratelimit.fallback", 0) >= 20
        ),
        statsd,
        5,
        "the fallback counter",
    )
    assert counters.get("lbproxy.ratelimit.redis_errors", 0) >= 1
    back = RedisServer(port)
    try:

        def limiting():
            return 429 in burst([(proxy, "global.test", None, "127.0.0.11")], 10)

        assert wait_until(limiting, back, 10, "limiting to resume")
    finally:
        back.stop()


def test_a_stalled_redis_costs_no_request_more_than_the_timeout(proxies, directory, mock):
    stalled = RedisServer()
    config = write_config(
        directory,
        services(mock),
        redis={"url": f"redis://127.0.0.1:{stalled.port}/0", "timeout": 0.05},
    )
    proxy = Proxy(config, workers=2)
    try:
        assert get(proxy, "roomy.test")[0] == 200  # connections to Redis made
        stalled.signal(signal.SIGSTOP)
        answers = [get(proxy, "roomy.test") for _ in range(30)]
        assert {status for status, _, _ in answers} == {200}
        assert max(seconds for _, _, seconds in answers) < 0.05 + 0.2
    finally:
        stalled.signal(signal.SIGCONT)
        proxy.stop()
        stalled.stop()
