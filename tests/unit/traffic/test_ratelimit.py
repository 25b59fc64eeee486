"""Rate limits: GCRA, the pod's buckets, keys, the 429, the config."""

from __future__ import annotations

import ipaddress
import os

import pytest

from app.config import ConfigError, parse_config
from app.errors import RateLimited
from app.traffic.ratelimit import (
    BREAK,
    GlobalBuckets,
    Limiter,
    LocalBuckets,
    client_ip,
    gcra,
    key_hash,
)
from app.traffic.shared import Capacity, SharedArea

MS = 1_000_000  # nanoseconds


class Clock:
    now = 10**15  # nanoseconds: ~11 days of uptime, where float seconds lose ulps

    def __call__(self):
        return self.now


def area(buckets=64):
    return SharedArea(Capacity(services=1, hosts=1, columns=2, buckets=buckets))


def passed(buckets, key, count, interval=100 * MS, tolerance=500 * MS):
    return sum(buckets.admit(key, interval, tolerance) == 0 for _ in range(count))


@pytest.mark.parametrize(("rate", "burst"), [(10, 5), (3, 50), (1000, 0), (0.5, 7)])
def test_gcra_lets_exactly_burst_plus_one_through_then_the_rate(rate, burst):
    interval = round(1e9 / rate)
    tolerance, tat, now, results = burst * interval, 0, 10**15, []
    for _ in range(burst + 5):
        new, _wait = gcra(tat, now, interval, tolerance)
        results.append(new is not None)
        tat = new if new is not None else tat
    assert results == [True] * (burst + 1) + [False] * 4
    assert gcra(tat, now, interval, tolerance)[1] == interval  # one interval to wait
    assert gcra(tat, now + interval, interval, tolerance)[0] is not None  # ... then one more


def test_the_pods_buckets_are_shared_by_its_workers():
    shared, clock = area(), Clock()
    one, two = LocalBuckets(shared, clock), LocalBuckets(shared, clock)  # two workers
    key = key_hash("web", "10.0.0.1")
    assert passed(one, key, 4) + passed(two, key, 4) == 6  # burst 5 + 1, pod-wide
    clock.now += 200 * MS
    assert passed(two, key, 3) == 2  # rate 10/s: 2 more after 0.2 s
    assert passed(one, key_hash("web", "10.0.0.2"), 7) == 6  # another key, its own bucket


def test_the_pods_buckets_are_shared_with_forked_workers():
    shared, key = area(), key_hash("web", "10.0.0.1")
    pid = os.fork()
    if pid == 0:
        try:
            passed(LocalBuckets(shared), key, 6, interval=10 * 10**9)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert passed(LocalBuckets(shared), key, 1, interval=10 * 10**9) == 0


def test_a_full_probe_run_evicts_the_bucket_closest_to_expiry():
    shared, clock = area(buckets=8), Clock()  # 8 slots: every key probes all of them
    buckets = LocalBuckets(shared, clock)
    for i in range(8):
        assert passed(buckets, key_hash("web", f"k{i}"), 1, interval=(10 + i) * 10**9) == 1
    assert passed(buckets, key_hash("web", "new"), 1) == 1  # evicts k0 (TAT soonest)
    assert passed(buckets, key_hash("web", "k0"), 1, interval=10 * 10**9) == 1  # k0 starts afresh
    assert passed(buckets, key_hash("web", "k7"), 1, interval=17 * 10**9, tolerance=0) == 0  # kept


def test_expired_buckets_are_free_again():
    shared, clock = area(buckets=8), Clock()
    buckets = LocalBuckets(shared, clock)
    for i in range(8):
        passed(buckets, key_hash("web", f"k{i}"), 1, interval=10**9)
    clock.now += 1500 * MS  # every TAT passed
    assert passed(buckets, key_hash("web", "k3"), 6) == 6  # a full burst again


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.3/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "key"),
    [
        ("127.0.0.1", "6.6.6.6, 127.0.0.1", "127.0.0.1"),  # untrusted peer: XFF ignored
        ("127.0.0.3", "1.2.3.4, 127.0.0.3", "1.2.3.4"),
        ("127.0.0.3", "6.6.6.6, 1.2.3.4, 10.1.1.1, 127.0.0.3", "1.2.3.4"),  # rightmost untrusted
        ("127.0.0.3", "10.1.1.1, 127.0.0.3", "10.1.1.1"),  # all trusted: the leftmost
        ("127.0.0.3", "127.0.0.3", "127.0.0.3"),  # no XFF from the client
        ("127.0.0.3", "junk, 127.0.0.3", "junk"),
        ("127.0.0.3", "1.2.3.4:5555, 127.0.0.3", "1.2.3.4"),  # with a port
        ("127.0.0.3", "[2001:db8::1]:80, 127.0.0.3", "2001:db8::1"),
        ("::ffff:127.0.0.3", "1.2.3.4", "1.2.3.4"),  # a dual-stack listener's peer
        ("::ffff:127.0.0.1", "6.6.6.6", "127.0.0.1"),
    ],
)
def test_client_ip_believes_x_forwarded_for_only_from_trusted_proxies(peer, forwarded, key):
    assert client_ip(peer, [("X-Forwarded-For", forwarded)], TRUSTED) == key


def limiter(text, clock=None, shared=None):
    config = parse_config(text)
    service = config.services[0]
    local = LocalBuckets(area(), clock or Clock())
    return Limiter(service, service.rate_limit, local, shared, config.trusted_proxies)


SERVICE = (
    "proxy:\n  services:\n    - {{name: web, domain: web.test,"
    " hosts: [{{address: 10.0.0.1, port: 1}}], rate_limit: {limit}}}\n"
)


def test_a_header_key_falls_back_to_the_client_ip():
    limit = limiter(SERVICE.format(limit="{rate: 1, burst: 0, key: 'header:X-User'}"))
    limit.check("10.9.9.9", [("x-user", "alice")])
    limit.check("10.9.9.9", [("X-User", "bob")])
    limit.check("10.9.9.9", [])  # no header: the client IP's bucket
    with pytest.raises(RateLimited):
        limit.check("10.9.9.9", [])  # leaving the header out does not escape
    with pytest.raises(RateLimited):
        limit.check("10.8.8.8", [("X-User", "alice")])


def test_a_limited_request_gets_retry_after_and_ratelimit_headers():
    limit = limiter(SERVICE.format(limit="{rate: 0.5, burst: 2, key: service}"))
    for _ in range(3):
        limit.check("10.0.0.1", [])
    with pytest.raises(RateLimited) as refused:
        limit.check("10.0.0.2", [])
    error = refused.value
    assert error.status == "429 Too Many Requests" and error.kind == "rate_limited"
    assert dict(error.headers()) == {
        "Retry-After": "2",  # 2 s to the next token, rounded up
        "RateLimit-Policy": '"lbproxy";q=3;w=6',
        "RateLimit": '"lbproxy";r=0;t=2',
    }
    fast = limiter(SERVICE.format(limit="{rate: 100, burst: 0, key: service}"))
    fast.check("10.0.0.1", [])
    with pytest.raises(RateLimited) as refused:
        fast.check("10.0.0.1", [])
    assert dict(refused.value.headers())["RateLimit-Policy"] == '"lbproxy";q=100;w=1'
    assert dict(refused.value.headers())["Retry-After"] == "1"  # 10 ms, at least 1 s


class DownRedis:
    def __init__(self):
        self.calls = 0

    def admit(self, *args):
        self.calls += 1
        return None


def test_global_fails_open_without_redis_and_limits_per_replica_when_told(monkeypatch):
    text = SERVICE.format(limit="{rate: 10, burst: 4, scope: global}")
    text += "  redis: {url: 'redis://127.0.0.1:1/0'}\n"
    assert all(limiter(text, shared=DownRedis()).check("1.1.1.1", []) is None for _ in range(50))
    monkeypatch.setenv("PROXY_REPLICAS", "2")
    per_replica = limiter(text, shared=DownRedis())
    admitted = 0
    for _ in range(10):
        try:
            per_replica.check("1.1.1.1", [])
            admitted += 1
        except RateLimited:
            pass
    assert admitted == 3  # burst 4 // 2 replicas = 2, + 1


def test_redis_failures_open_a_breaker_instead_of_waiting_each_time():
    buckets = GlobalBuckets("redis://127.0.0.1:1/0", 0.05)  # nothing listens on port 1
    events = []
    buckets.on_event = events.append
    assert buckets.admit("web", "k", 100 * MS, 500 * MS) is None
    assert buckets.admit("web", "k", 100 * MS, 500 * MS) is None  # skipped: no second connect
    assert events == ["redis_errors"]
    buckets.broken_until -= BREAK  # the break is over: one request tries again
    assert buckets.admit("web", "k", 100 * MS, 500 * MS) is None
    assert events == ["redis_errors"] * 2 and buckets.broken_until > 0


def test_a_bad_replica_count_stops_the_start(monkeypatch):
    from app.process import settings

    monkeypatch.setenv("PROXY_REPLICAS", "two")
    with pytest.raises(SystemExit, match="PROXY_REPLICAS"):
        settings.replicas()


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (
            SERVICE.format(limit="{rate: 10, scope: global}"),
            "proxy.services[0].rate_limit.scope",
            "global needs proxy.redis",
        ),
        (
            SERVICE.format(limit="{rate: 0}"),
            "proxy.services[0].rate_limit.rate",
            "expected a number",
        ),
        (SERVICE.format(limit="{burst: 1}"), "proxy.services[0].rate_limit.rate", "required"),
        (
            SERVICE.format(limit="{rate: 1, key: ip}"),
            "proxy.services[0].rate_limit.key",
            "client_ip",
        ),
        (
            SERVICE.format(limit="{rate: 1, key: 'header:a b'}"),
            "proxy.services[0].rate_limit.key",
            "header name",
        ),
        (
            SERVICE.format(limit="{rate: 1, key: 'header:X_Key'}"),
            "proxy.services[0].rate_limit.key",
            "dropped",
        ),
        (
            SERVICE.format(limit="{rate: 1, key: 'header:X-Request-Id'}"),
            "proxy.services[0].rate_limit.key",
            "proxy's own",
        ),
        (
            SERVICE.format(limit="{rate: 1, key: 'header:X-Forwarded-For'}"),
            "proxy.services[0].rate_limit.key",
            "spoofable",
        ),
        (
            SERVICE.format(limit="{rate: 1}") + "  redis: {url: 'redis://h:port/0'}\n",
            "proxy.redis.url",
            "not a Redis URL",
        ),
        (
            SERVICE.format(limit="{rate: 1}") + "  redis: {}\n",
            "proxy.redis.url",
            "required",
        ),
        (
            SERVICE.format(limit="{rate: 1, scope: pod}"),
            "proxy.services[0].rate_limit.scope",
            "one of local, global",
        ),
        (
            SERVICE.format(limit="{rate: 1}") + "  redis: {url: 'http://x'}\n",
            "proxy.redis.url",
            "redis://",
        ),
        (
            SERVICE.format(limit="{rate: 1}") + "  trusted_proxies: [10.0.0.0/33]\n",
            "proxy.trusted_proxies[0]",
            "CIDR",
        ),
    ],
)
def test_bad_rate_limit_settings_name_the_field(text, where, reason):
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert error.value.where == where
    assert reason in error.value.reason
