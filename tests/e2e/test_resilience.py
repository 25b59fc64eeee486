"""Resilience end to end: retries, ejection, health checks, limits, timeouts.

One proxy worker, so each worker-local decision (balancer order, host health,
budgets) is the one the test sees.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.processes import Proxy, RawServer, free_port, start_mock, write_config


@pytest.fixture(scope="module")
def upstreams():
    servers = {
        "a": start_mock("a"),
        "b": start_mock("b"),
        "sick": start_mock("sick", status=503),
        "flappy": start_mock("flappy"),
        "reset": RawServer("reset"),
        "blackhole": RawServer("blackhole"),
    }
    yield servers
    for server in servers.values():
        server.stop()


def host(server):
    return {"address": "127.0.0.1", "port": server.port}


@pytest.fixture(scope="module")
def proxy(upstreams, tmp_path_factory):
    up = upstreams
    dead = {"address": "127.0.0.1", "port": free_port()}
    services = [
        {
            "name": "reset",
            "domain": "reset.test",
            "hosts": [host(up["reset"]), host(up["a"])],
            "outlier": {"consecutive_failures": 1000},
        },
        {
            "name": "sick",
            "domain": "sick.test",
            "hosts": [host(up["sick"]), host(up["a"])],
            "retry": {"on_status": [503]},
        },
        {"name": "noretry", "domain": "noretry.test", "hosts": [host(up["sick"]), host(up["a"])]},
        {
            "name": "eject",
            "domain": "eject.test",
            "hosts": [dead, host(up["a"]), host(up["b"])],
            "outlier": {"consecutive_failures": 2, "base_ejection": 60},
        },
        {"name": "breaker", "domain": "breaker.test", "hosts": [host(up["a"])], "max_in_flight": 2},
        {
            "name": "total",
            "domain": "total.test",
            "hosts": [host(up["a"])],
            "timeout": {"read": 5, "total": 1},
        },
        {
            "name": "blackhole",
            "domain": "blackhole.test",
            "hosts": [host(up["blackhole"])],
            "timeout": {"read": 1},
        },
        {"name": "slow", "domain": "slow.test", "hosts": [host(up["b"])], "timeout": {"read": 10}},
        {
            "name": "checked",
            "domain": "checked.test",
            "hosts": [host(up["a"]), host(up["flappy"])],
            "health_check": {
                "path": "/hc",
                "interval": 0.2,
                "timeout": 0.5,
                "healthy_threshold": 2,
                "unhealthy_threshold": 2,
            },
        },
        {
            "name": "budget",
            "domain": "budget.test",
            "hosts": [host(up["sick"]), host(up["a"])],
            "retry": {"on_status": [503], "budget": 0, "min_per_second": 0.001},
        },
    ]
    config = write_config(
        tmp_path_factory.mktemp("resilience"), services, limits={"max_body_size": 1000}
    )
    server = Proxy(config, workers=1)
    server.dead_port = dead["port"]
    yield server
    server.stop()


def call(proxy, domain, path="/", method="GET", **kwargs):
    return requests.request(
        method, proxy.url + path, headers={"Host": domain}, timeout=15, **kwargs
    )


def status_of(proxy, service):
    answer = requests.get(f"http://127.0.0.1:{proxy.admin_port}/status", timeout=5).json()
    return next(s for s in answer["services"] if s["name"] == service)


# --- retries ---------------------------------------------------------------


def test_a_reset_before_any_response_is_retried_for_idempotent_requests(proxy):
    answers = [call(proxy, "reset.test") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert {a.json()["instance"] for a in answers} == {"a"}


def test_a_post_is_never_replayed(proxy):
    statuses = [call(proxy, "reset.test", method="POST", data=b"x").status_code for _ in range(6)]
    assert 502 in statuses and 200 in statuses  # the reset host got half of them


def test_5xx_is_retried_only_where_configured(proxy):
    assert {call(proxy, "sick.test").status_code for _ in range(6)} == {200}
    assert {call(proxy, "noretry.test").status_code for _ in range(6)} == {200, 503}
    # A POST is not idempotent: the 503 is passed on when the sick host answers.
    posts = {call(proxy, "sick.test", method="POST", data=b"p").status_code for _ in range(6)}
    assert posts == {200, 503}


def test_the_retry_budget_stops_retries(proxy):
    statuses = [call(proxy, "budget.test").status_code for _ in range(40)]
    # The bucket starts with 10 retries and hardly refills: then 503s pass through.
    assert statuses.count(503) >= 10
    assert statuses[:20].count(503) == 0


# --- health ----------------------------------------------------------------


def test_a_failing_host_is_ejected_and_shown_out_of_rotation(proxy):
    statuses = [call(proxy, "eject.test").status_code for _ in range(12)]
    assert statuses == [200] * 12
    hosts = {h["host"]: h for h in status_of(proxy, "eject")["hosts"]}
    dead = next(
        h
        for h in hosts.values()
        if h["host"].endswith(tuple("0123456789")) and not h["in_rotation"]
    )
    assert dead["ejected_for"] > 50
    assert sum(h["in_rotation"] for h in hosts.values()) == 2


def test_active_health_checks_take_a_host_out_and_back(proxy, upstreams):
    flappy = upstreams["flappy"]
    port = flappy.port

    def flappy_in_rotation():
        hosts = status_of(proxy, "checked")["hosts"]
        return next(h for h in hosts if h["host"].endswith(f":{port}"))["in_rotation"]

    assert wait(flappy_in_rotation, True)
    flappy.stop()
    assert wait(flappy_in_rotation, False)
    assert {call(proxy, "checked.test").json()["instance"] for _ in range(6)} == {"a"}
    upstreams["flappy"] = start_mock("flappy", port=port)
    assert wait(flappy_in_rotation, True)
    assert "flappy" in {call(proxy, "checked.test").json()["instance"] for _ in range(6)}


def wait(probe, expected, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe() == expected:
            return True
        time.sleep(0.1)
    return False


# --- limits and timeouts ---------------------------------------------------


def test_the_circuit_breaker_answers_503_with_retry_after(proxy):
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(call, proxy, "breaker.test", "/?delay=1") for _ in range(2)]
        time.sleep(0.3)
        refused = call(proxy, "breaker.test")
        assert [f.result().status_code for f in slow] == [200, 200]
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert call(proxy, "breaker.test").status_code == 200  # closed again


def test_total_timeout_caps_the_whole_request(proxy):
    started = time.monotonic()
    answer = call(proxy, "total.test", "/?delay=3")
    assert answer.status_code == 504
    assert 0.9 < time.monotonic() - started < 2


def test_an_upstream_that_never_answers_gets_504_while_others_are_served(proxy):
    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(call, proxy, "blackhole.test")
        time.sleep(0.1)
        started = time.monotonic()
        assert call(proxy, "sick.test").status_code == 200
        assert time.monotonic() - started < 0.5  # the worker was free meanwhile
        answer = stuck.result()
    assert answer.status_code == 504
    assert b"Traceback" not in answer.content


def test_a_body_over_the_limit_gets_413(proxy):
    assert call(proxy, "sick.test", method="POST", data=b"x" * 1000).status_code in (200, 503)
    assert call(proxy, "sick.test", method="POST", data=b"x" * 1001).status_code == 413
    chunked = call(proxy, "sick.test", method="POST", data=iter([b"x" * 600, b"y" * 600]))
    assert chunked.status_code == 413


def test_a_client_that_leaves_releases_its_upstream(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(b"GET /?delay=5 HTTP/1.1\r\nHost: slow.test\r\n\r\n")
        assert wait(lambda: status_of(proxy, "slow")["in_flight"], 1, timeout=3)
    started = time.monotonic()
    assert wait(lambda: status_of(proxy, "slow")["in_flight"], 0, timeout=4)
    assert time.monotonic() - started < 2.5  # long before the upstream's 5 s


def test_retries_keep_the_request_intact(proxy):
    payload = os.urandom(500)
    answers = [
        call(proxy, "reset.test", "/?echo=raw", method="PUT", data=payload) for _ in range(4)
    ]
    assert all(a.content == payload for a in answers if a.status_code == 200)
    assert any(a.status_code == 200 for a in answers)
