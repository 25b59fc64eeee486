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
    assert sum(budget.try_spend() for _ in range(100)) == 10  # 20% of 100, capped at 10
    for _ in range(25):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(100)) == 5


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
