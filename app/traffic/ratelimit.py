"""Rate limits: requests per second per key, for one proxy pod or for all replicas.

A service's ``rate_limit: {rate, burst, key, scope}`` is enforced after routing
and before anything is sent upstream, once per request (a retry inside the
proxy is not checked again). A limited request gets ``429`` (RateLimited).

**Algorithm.** GCRA, the generic cell rate algorithm, which is what a token
bucket is, kept as one number per key: its *theoretical arrival time* (TAT).
With ``interval = 1 / rate`` and ``tolerance = burst x interval``, a request at
``now`` passes when ``max(TAT, now) - now <= tolerance``, and moves TAT on by one
interval. After an idle moment exactly ``burst + 1`` requests of a
simultaneous burst pass (nginx's ``burst=N nodelay``), then ``rate`` per
second. A key's state means nothing once TAT is in the past, so it expires by
itself.

**Keys.** ``client_ip`` is the peer's address. When the peer is in
``proxy.trusted_proxies``, it is the rightmost ``X-Forwarded-For`` address
that is not itself trusted. ``header:NAME`` is that header's value, and the
client IP when it is missing, so leaving the header out cannot get round the
limit. ``service`` is one bucket for the whole service.

**local** buckets belong to the pod. They live in the shared area
(app/traffic/shared.py), so 2 workers admit what 1 would. The table is
open-addressed by a stable hash of (service, key), behind an ``flock`` that
the kernel frees if its holder dies. When all 8 slots a key may take are live,
the one closest to expiry is evicted, and its key starts afresh.

**global** buckets live in Redis (``proxy.redis``): one round trip per request,
a Lua script run by ``EVALSHA`` that reads Redis's own clock (``TIME``), so
no proxy's clock matters. Keys are ``rl:{service}:key`` (the hash tag keeps a
service's keys on one Redis Cluster slot) and expire with ``PX`` when their
TAT passes. redis-py's retries are turned off, and its timeouts are
``redis.timeout``. When Redis fails, the request passes (fail open). Then a
breaker skips Redis for ``BREAK`` seconds and limits locally, at the rate and
burst divided by ``$PROXY_REPLICAS`` when that is set, and not at all otherwise.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import os
import time
from collections.abc import Callable

from app.config import ProxyConfig, RateLimit, Service
from app.errors import RateLimited
from app.traffic.shared import SharedArea

log = logging.getLogger("gunicorn.error")

PROBES = 8  # table slots a key may take
BREAK = 2.0  # seconds Redis is skipped after a failure
NS = 1_000_000_000


def gcra(tat: int, now: int, interval: int, tolerance: int) -> tuple[int | None, int]:
    """(the new TAT when the request passes, else None; how long until it would).

    Integers (nanoseconds here, microseconds in Redis): sums of float
    intervals drift, and a burst must pass exactly.
    """
    tat = max(tat, now)
    wait = tat - now - tolerance
    if wait > 0:
        return None, wait
    return tat + interval, 0


def key_hash(service: str, key: str) -> int:
    """A stable, non-zero 63-bit hash (never Python's per-process hash())."""
    digest = hashlib.blake2b(f"{service}\0{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


class LocalBuckets:
    """The pod's buckets in the shared area, shared by every worker (times in ns)."""

    def __init__(self, area: SharedArea, clock: Callable[[], int] = time.monotonic_ns):
        self.area = area
        self.keys = area.bucket_keys
        self.times = area.bucket_times
        self.size = len(area.bucket_keys)
        self.clock = clock
        self._lock: tuple[int, int] | None = None  # (pid, fd)

    @property
    def lock(self) -> int:
        """This process's own description of the lock, opened again after a fork."""
        pid = os.getpid()
        if self._lock is None or self._lock[0] != pid:
            self._lock = (pid, self.area.own_description("bucket_lock_fd"))
        return self._lock[1]

    def admit(self, key: int, interval: int, tolerance: int) -> int:
        """0 when the request passes (and is counted), else the nanoseconds to wait."""
        import fcntl

        lock = self.lock
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for a few µs, never across a yield
        try:
            return self._admit(key, interval, tolerance, self.clock())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _admit(self, key: int, interval: int, tolerance: int, now: int) -> int:
        keys, times, size = self.keys, self.times, self.size
        slot = None
        for probe in range(PROBES):
            index = (key + probe) % size
            if keys[index] == key:
                slot = index
                break
            if slot is None and (keys[index] == 0 or times[index] <= now):
                slot = index  # free, or a key that has expired: taken if the key is new
        if slot is None:  # every slot live: evict the one closest to expiry
            slot = min(((key + p) % size for p in range(PROBES)), key=times.__getitem__)
        tat = times[slot] if keys[slot] == key else 0
        new, wait = gcra(tat, now, interval, tolerance)
        if new is not None:
            keys[slot], times[slot] = key, new
        return wait


# KEYS[1] the bucket; ARGV: interval and tolerance in microseconds. Returns the
# microseconds to wait (0: admitted). Redis's own clock: no proxy's clock matters.
GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME, then writes
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - now - tonumber(ARGV[2])
if wait > 0 then return wait end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000))
return 0
"""


class GlobalBuckets:
    """Every replica's buckets, in Redis; one client (and pool) per worker."""

    def __init__(self, url: str, timeout: float, on_event=lambda event: None):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # redis-py retries with backoff by default: a down Redis would then
            # cost seconds per request. One try, then fail open.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.script = self.client.register_script(GCRA_SCRIPT)
        self.on_event = on_event  # "redis_errors", "fallback": metrics
        self.broken_until = 0.0
        self.errors = (redis.RedisError, OSError, ValueError)

    def admit(self, service: str, key: str, interval: int, tolerance: int) -> int | None:
        """Nanoseconds to wait (0: admitted), or None: Redis is out (the caller falls back).

        After a failure the breaker is open for BREAK seconds; then one request
        tries Redis (the others keep falling back until it answers).
        """
        now = time.monotonic()
        if now < self.broken_until:
            return None
        if self.broken_until:
            self.broken_until = now + BREAK  # half open: this request alone tries
        try:
            wait = self.script(
                keys=[f"rl:{{{service}}}:{key}"],
                args=[round(interval / 1000), round(tolerance / 1000)],  # µs
            )
        except self.errors as error:
            self.broken_until = now + BREAK
            self.on_event("redis_errors")
            log.warning("lbproxy: Redis for rate limits failed (%s): failing open", error)
            return None
        self.broken_until = 0.0
        return int(wait) * 1000


class Limiter:
    """One service's rate limit, as one worker enforces it."""

    def __init__(
        self,
        service: Service,
        settings: RateLimit,
        local: LocalBuckets,
        shared: GlobalBuckets | None,
        trusted: tuple = (),
        on_event=lambda event: None,
    ):
        self.service = service.name
        self.settings = settings
        self.interval = max(1000, round(NS / settings.rate))  # ns; µs at the least (Redis's)
        self.tolerance = settings.burst * self.interval
        self.local = local
        self.shared = shared
        self.trusted = trusted
        self.on_event = on_event
        self.header = settings.key[len("header:") :].lower() if ":" in settings.key else None
        # RateLimit-Policy: the requests a window of whole seconds lets through.
        self.window = max(1, math.ceil((settings.burst + 1) / settings.rate))
        self.quota = max(settings.burst + 1, math.floor(settings.rate * self.window))
        replicas = replicas_setting()
        self.fallback = None  # (interval, tolerance) per replica while Redis is out
        if replicas:
            interval = self.interval * replicas
            self.fallback = (interval, (settings.burst // replicas) * interval)

    def check(self, peer: str, headers: list[tuple[str, str]]) -> None:
        """Count one request; raises RateLimited when its key is over the limit."""
        key = self.key_of(peer, headers)
        if self.settings.scope == "global":
            wait = self.shared.admit(self.service, key, self.interval, self.tolerance)
            if wait is None:
                self.on_event("fallback")
                if self.fallback is None:
                    return  # fail open
                wait = self.local.admit(key_hash(self.service, key), *self.fallback)
        else:
            wait = self.local.admit(key_hash(self.service, key), self.interval, self.tolerance)
        if wait > 0:
            raise RateLimited(wait / NS, self.quota, self.window)

    def key_of(self, peer: str, headers: list[tuple[str, str]]) -> str:
        key = self.settings.key
        if key == "service":
            return ""
        if self.header is not None:
            value = next((v for name, v in headers if name.lower() == self.header), None)
            if value is not None:
                return f"h:{value}"
        return client_ip(peer, headers, self.trusted)


def client_ip(peer: str, headers: list[tuple[str, str]], trusted: tuple) -> str:
    """The peer; when it is a trusted proxy, the rightmost X-Forwarded-For address
    that is not itself trusted (the leftmost when all are). Addresses are read
    with or without a port (``1.2.3.4:80``, ``[::1]:80``), IPv4-mapped IPv6 as IPv4."""
    if not trusted:
        return peer  # nothing to believe: the peer as the server gave it, unparsed
    ip = parse_ip(peer)
    if ip is None or not _trusted(ip, trusted):
        return str(ip) if ip is not None else peer
    chain = []
    for name, value in headers:
        if name.lower() == "x-forwarded-for":
            chain += [part.strip() for part in value.split(",") if part.strip()]
    if chain and parse_ip(chain[-1]) == ip:
        chain.pop()  # the proxy appended the peer itself (app/http/headers.py)
    for text in reversed(chain):
        address = parse_ip(text)
        if address is None or not _trusted(address, trusted):
            return str(address) if address is not None else text
    first = parse_ip(chain[0]) if chain else ip
    return str(first) if first is not None else chain[0]


def parse_ip(text: str):
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]:80``; None if not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


def _trusted(ip, trusted: tuple) -> bool:
    return any(ip in network for network in trusted)


def replicas_setting() -> int | None:
    from app.process.settings import replicas

    try:
        return replicas()
    except SystemExit:  # checked by the master at start; outside gunicorn: ignored
        return None


def make_limiters(config: ProxyConfig, area: SharedArea, on_event=lambda event: None):
    """Each limited service's Limiter, by name; the Redis client only if one is global."""
    limited = [service for service in config.services if service.rate_limit is not None]
    if not limited:
        return {}
    local = LocalBuckets(area)
    shared = None
    if config.redis is not None and any(s.rate_limit.scope == "global" for s in limited):
        shared = GlobalBuckets(config.redis.url, config.redis.timeout, on_event)
    return {
        service.name: Limiter(
            service, service.rate_limit, local, shared, config.trusted_proxies, on_event
        )
        for service in limited
    }
