"""The retry budget: retries add at most a share of requests, plus a floor rate."""

from __future__ import annotations

from app.config import Retry
from app.retry import IDEMPOTENT, RetryBudget
from tests.test_health import Clock


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
