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


class RetryBudget:
    """A token bucket: each request adds ``budget`` tokens, time adds
    ``min_per_second`` per second, and each retry takes one."""

    def __init__(self, policy: Retry, clock: Callable[[], float] = time.monotonic):
        self.ratio = policy.budget
        self.rate = policy.min_per_second
        self.clock = clock
        self.capacity = max(10.0, self.rate * 10)
        self.tokens = self.capacity
        self.updated = clock()

    def record_request(self) -> None:
        self.tokens = min(self.capacity, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
