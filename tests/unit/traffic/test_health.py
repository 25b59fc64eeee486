"""Host health: outlier ejection with backoff and a cap, active checks with thresholds."""

from __future__ import annotations

import urllib.request

import pytest

from app.config import HealthCheck, Host, Outlier, Service
from app.traffic.health import Health, HealthChecker
from app.upstream.pool import Pools
from app.upstream.session import make_session
from tests.processes import free_port, start_mock

A, B, C, D = (Host(f"10.0.0.{i}", 80) for i in range(1, 5))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def health(hosts=(A, B, C, D), clock=None, **outlier):
    service = Service(
        name="s",
        domain="s.test",
        hosts=hosts,
        outlier=Outlier(**outlier),
        health_check=HealthCheck(healthy_threshold=2, unhealthy_threshold=3),
    )
    return Health(service, clock or Clock())


def fail(state, host, times):
    return [state.record_failure(host) for _ in range(times)]


def test_consecutive_failures_eject_and_a_success_resets_the_count():
    state = health(consecutive_failures=3)
    assert fail(state, A, 2) == [False, False]
    state.record_success(A)
    assert fail(state, A, 2) == [False, False]
    assert state.record_failure(A) is True
    assert state.out_of_rotation() == {A}
    assert state.in_rotation() == [B, C, D]


def test_ejection_ends_after_its_time_and_backs_off_on_repeats():
    clock = Clock()
    state = health(clock=clock, consecutive_failures=2, base_ejection=5, max_ejection=12)
    fail(state, A, 2)
    clock.now += 4.9
    assert A in state.out_of_rotation()
    clock.now += 0.2
    assert A not in state.out_of_rotation()  # back, on probation
    assert state.record_failure(A) is True  # one failure is enough now
    clock.now += 9.9
    assert A in state.out_of_rotation()  # 10 s the second time
    clock.now += 0.2
    assert state.out_of_rotation() == frozenset()
    state.record_failure(A)
    clock.now += 12.1  # 20 s would be next, capped at max_ejection = 12
    assert state.out_of_rotation() == frozenset()


def test_a_host_well_for_max_ejection_starts_short_again():
    clock = Clock()
    state = health(clock=clock, consecutive_failures=1, base_ejection=5, max_ejection=60)
    fail(state, A, 1)
    clock.now += 5.1
    state.out_of_rotation()
    clock.now += 61
    state.record_success(A)
    fail(state, A, 1)
    clock.now += 5.1
    assert A not in state.out_of_rotation()  # 5 s again, not 10


def test_never_more_than_the_allowed_share_is_ejected():
    state = health(consecutive_failures=1, max_ejected_percent=50)
    assert [state.record_failure(h) for h in (A, B, C, D)] == [True, True, False, False]
    assert state.out_of_rotation() == {A, B}
    single = health(hosts=(A,), consecutive_failures=1, max_ejected_percent=50)
    assert single.record_failure(A) is False  # ejecting the only host would help no one


def test_ejection_events_are_reported():
    clock = Clock()
    state = health(clock=clock, consecutive_failures=1)
    events = []
    state.on_event = lambda event, host: events.append((event, host))
    fail(state, A, 1)
    clock.now += 6
    state.out_of_rotation()
    assert events == [("ejected", A), ("returned", A)]


def test_active_checks_need_their_thresholds_both_ways():
    state = health()
    for _ in range(2):
        state.record_probe(A, healthy=False)
    state.record_probe(A, healthy=True)  # a success breaks the streak
    for _ in range(2):
        state.record_probe(A, healthy=False)
    assert A not in state.out_of_rotation()
    state.record_probe(A, healthy=False)
    assert A in state.out_of_rotation()
    state.record_probe(A, healthy=True)
    assert A in state.out_of_rotation()
    state.record_probe(A, healthy=True)
    assert A not in state.out_of_rotation()


@pytest.fixture(scope="module")
def mock():
    server = start_mock("probe")
    # Its port opens in gunicorn's master before the worker has booted: the
    # probes' short timeouts start once it answers (a slow host took > 0.5 s).
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=30) as answer:
        assert answer.status == 200
    yield server
    server.stop()


def probe(mock_port: int, path: str, timeout: float = 0.5, port: int | None = None) -> bool:
    """One health probe of ``127.0.0.1:port`` (the mock's, by default) on ``path``."""
    service = Service(
        name="s",
        domain="s.test",
        hosts=(Host("127.0.0.1", mock_port),),
        health_check=HealthCheck(path=path, timeout=timeout),
    )
    checker = HealthChecker(Health(service), Pools.from_session(make_session(1, 1)), spawn=None)
    return checker.probe(Host("127.0.0.1", port or mock_port))


def test_probe_answers_against_real_hosts(mock):
    assert probe(mock.port, "/health?status=200") is True
    assert probe(mock.port, "/health?status=503") is False
    assert probe(mock.port, "/", port=free_port()) is False  # nothing listens
    assert probe(mock.port, "/?delay=2", timeout=0.3) is False  # too slow
