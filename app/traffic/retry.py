"""When a failed attempt may be tried again on another host.

``RetryPolicy`` holds the rules on plain values, in the manner of urllib3's
``Retry``: what failed, the method, whether the body can be sent again and
how many tries were made decide; nothing else.

A retry must not turn a failing service into a flood: besides the per-request
``retry.attempts``, each service has a budget (per worker) that lets retries
add at most ``retry.budget`` of its requests, plus ``retry.min_per_second`` so
a quiet service can still retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from app.config import Retry, Service
from app.errors import UpstreamConnectError, UpstreamTimeout, UpstreamTLSError

# RFC 9110 §9.2.2: a repeat has the same effect as one request.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # retries after the first try (retry.attempts)
    on_status: frozenset[int]  # answers retried like a failure (retry.on_status)
    hosts: int  # each try goes to another host: never more tries than hosts

    @classmethod
    def of(cls, service: Service) -> RetryPolicy:
        return cls(service.retry.attempts, frozenset(service.retry.on_status), len(service.hosts))

    def allows(self, failure: str, method: str, replayable: bool, tries: int) -> bool:
        """Whether a request that failed with ``failure`` (an error kind, or
        ``STATUS`` for an answer in ``on_status``) after ``tries`` tries goes to
        another host. The service's budget has the last word (``RetryBudget``).

        - a refused connection or a failed TLS handshake: nothing was sent, so
          any method moves on;
        - a timeout is final: the upstream may still be working on it;
        - anything else (a reset, broken framing, a status): the request may
          have been processed, so only an idempotent one whose body was not
          taken from the client yet.
        """
        if tries > self.attempts or tries >= self.hosts:
            return False
        if failure == UpstreamTimeout.kind:
            return False
        if failure in NOTHING_SENT:
            return True
        return method in IDEMPOTENT and replayable

    def retries_status(self, status: int) -> bool:
        return status in self.on_status


STATUS = "status"
# Failures before any request byte left: safe to move on for any method.
NOTHING_SENT = frozenset(
    {UpstreamConnectError.kind, UpstreamTLSError.kind}
)  # the failure of an answer whose status is in retry.on_status

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
