"""When a failed attempt may be tried again on another host.

A retry must not turn a failing service into a flood: besides the per-request
``retry.attempts``, each service has a budget (per worker) that lets retries
add at most ``retry.budget`` of its requests, plus ``retry.min_per_second`` so
a quiet service can still retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from app.config import Retry

# RFC 9110 §9.2.2: a repeat has the same effect as one request.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


# Requests count toward the budget for this long (Linkerd's retry-budget TTL).
WINDOW = 10.0


class RetryBudget:
    """A token bucket: each request adds ``budget`` tokens, time adds
    ``min_per_second`` per second, and each retry takes one.

    The bucket holds what the last WINDOW of traffic earned, at least
    ``min_per_second`` for WINDOW (and 10): a busy service can absorb a burst of
    retries as large as its traffic earned (every request in flight to a host
    that just died), a quiet one keeps its floor.
    """

    def __init__(self, policy: Retry, clock: Callable[[], float] = time.monotonic):
        self.ratio = policy.budget
        self.rate = policy.min_per_second
        self.clock = clock
        self.floor = max(10.0, self.rate * WINDOW)
        self.tokens = self.floor
        self.updated = self.window_start = clock()
        self.requests = 0  # since window_start
        self.recent = 0.0  # requests per WINDOW, before window_start

    def record_request(self) -> None:
        self.tokens += self.ratio
        self.requests += 1

    def try_spend(self) -> bool:
        now = self.clock()
        self.tokens += (now - self.updated) * self.rate
        self.updated = now
        if now - self.window_start >= WINDOW:
            # Averaged over the whole span: record_request() reads no clock.
            self.recent = self.requests * WINDOW / (now - self.window_start)
            self.requests = 0
            self.window_start = now
        self.tokens = min(self.tokens, self.capacity)
        if self.tokens < 1 - 1e-9:  # 0.2 added five times is 0.9999999999999999
            return False
        self.tokens -= 1
        return True

    @property
    def capacity(self) -> float:
        return max(self.floor, self.ratio * max(self.recent, self.requests))
