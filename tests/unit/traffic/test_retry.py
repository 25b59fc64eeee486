"""The retry budget: retries add at most a share of requests, plus a floor rate."""

from __future__ import annotations

import pytest

from app.config import Retry
from app.traffic.retry import IDEMPOTENT, STATUS, RetryBudget, RetryPolicy
from tests.unit.traffic.test_health import Clock


def test_a_full_budget_allows_a_burst_then_runs_dry():
    clock = Clock()
    budget = RetryBudget(Retry(budget=0.2, min_per_second=0), clock)
    assert sum(budget.try_spend() for _ in range(50)) == 10  # the bucket holds 10
    assert budget.try_spend() is False


def test_requests_earn_retries_at_the_budget_ratio():
    clock = Clock()
    budget = RetryBudget(Retry(budget=0.2, min_per_second=0), clock)
    while budget.try_spend():
        pass
    for _ in range(100):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(100)) == 20  # 20% of 100
    for _ in range(25):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(100)) == 5


def test_a_busy_service_can_retry_a_burst_as_large_as_its_traffic_earned():
    clock = Clock()
    budget = RetryBudget(Retry(budget=0.2, min_per_second=3), clock)
    for _ in range(5000):  # 10 s at 500 requests/s
        budget.record_request()
        clock.now += 0.002
    # A host dies with 200 requests in flight: all of them go elsewhere.
    assert sum(budget.try_spend() for _ in range(200)) == 200
    assert sum(budget.try_spend() for _ in range(2000)) == 800  # 20% of 5000, no more


def test_traffic_older_than_the_window_earns_nothing():
    clock = Clock()
    budget = RetryBudget(Retry(budget=0.2, min_per_second=0), clock)
    for _ in range(5000):
        budget.record_request()
    clock.now += 10
    assert budget.try_spend()  # the 5000 requests' window closes: 1000 tokens
    clock.now += 100
    assert sum(budget.try_spend() for _ in range(2000)) == 10  # quiet since: the floor


def test_time_refills_at_min_per_second():
    clock = Clock()
    budget = RetryBudget(Retry(budget=0, min_per_second=2), clock)
    while budget.try_spend():
        pass
    clock.now += 1.5
    assert sum(budget.try_spend() for _ in range(10)) == 3


def test_only_rfc_idempotent_methods_are_replayed():
    assert {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"} <= IDEMPOTENT
    assert "POST" not in IDEMPOTENT and "PATCH" not in IDEMPOTENT


# The retry rules as a table: failure, method, body replayable, tries so far -> retried?
# (attempts=2, three hosts, as a service with two retries would have)
RULES = [
    ("connect_error", "POST", False, 1, True),  # nothing was sent: any method moves on
    ("connect_error", "GET", True, 3, False),  # attempts spent (2 retries after the first)
    ("timeout", "GET", True, 1, False),  # final: the upstream may still be working on it
    ("upstream_error", "GET", True, 1, True),  # a reset: idempotent and replayable
    ("upstream_error", "PUT", True, 2, True),
    ("upstream_error", "POST", True, 1, False),  # not idempotent
    ("upstream_error", "GET", False, 1, False),  # the body was taken from the client
    ("upstream_protocol", "DELETE", True, 1, True),  # broken framing: like a reset
    ("status", "GET", True, 1, True),  # an answer in retry.on_status
    ("status", "PATCH", True, 1, False),
    ("status", "GET", True, 3, False),
]


@pytest.mark.parametrize("failure, method, replayable, tries, expected", RULES)
def test_the_retry_policy(failure, method, replayable, tries, expected):
    policy = RetryPolicy(attempts=2, on_status=frozenset({503}), hosts=3)
    assert policy.allows(failure, method, replayable, tries) is expected


def test_never_more_tries_than_hosts():
    policy = RetryPolicy(attempts=5, on_status=frozenset(), hosts=2)
    assert policy.allows("connect_error", "GET", True, 1)
    assert not policy.allows("connect_error", "GET", True, 2)


def test_the_policy_of_a_service_and_its_statuses():
    from app.config import Host, Service

    service = Service(
        name="s",
        domain="s.test",
        hosts=(Host("127.0.0.1", 1), Host("127.0.0.1", 2)),
        retry=Retry(attempts=1, on_status=(502, 503)),
    )
    policy = RetryPolicy.of(service)
    assert policy == RetryPolicy(1, frozenset({502, 503}), 2)
    assert policy.retries_status(503) and not policy.retries_status(500)
    assert STATUS == "status"
