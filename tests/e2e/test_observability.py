"""Observability end to end: the real StatsD daemon, the access log, readiness."""

from __future__ import annotations

import json
import socket
import statistics
import time

import pytest
import requests
import yaml

from tests.processes import Proxy, StatsdDaemon, free_port, start_mock, write_config


@pytest.fixture(scope="module")
def mock():
    server = start_mock("observed")
    yield server
    server.stop()


def services(mock, **extra):
    return [
        {
            "name": "web",
            "domain": "web.test",
            "hosts": [{"address": "127.0.0.1", "port": mock.port}],
            "timeout": {"read": 0.5},
            **extra,
        },
        {
            "name": "gone",
            "domain": "gone.test",
            "hosts": [{"address": "127.0.0.1", "port": free_port()}],
        },
    ]


def get(proxy, domain, path="/", **kwargs):
    return requests.get(
        proxy.url + path,
        headers={"Host": domain, **kwargs.pop("headers", {})},
        timeout=10,
        **kwargs,
    )


def test_the_statsd_daemon_counts_exactly_what_was_sent(mock, tmp_path):
    daemon = StatsdDaemon(tmp_path)
    config = write_config(tmp_path, services(mock), statsd={"interval": 0.2})
    env = {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(daemon.udp_port)}
    proxy = Proxy(config, workers=2, env=env)
    try:
        assert {get(proxy, "web.test").status_code for _ in range(37)} == {200}
        assert {get(proxy, "nowhere.test").status_code for _ in range(5)} == {404}
        assert {get(proxy, "gone.test").status_code for _ in range(3)} == {502}
        assert get(proxy, "web.test", "/?delay=2").status_code == 504
        time.sleep(1)  # workers send what they hold every 0.2 s; UDP lands
        counters = daemon.counters()
        timers = daemon.timer_counts()
        gauges = daemon.admin("gauges")
    finally:
        proxy.stop()
        daemon.stop()
    host = f"lbproxy.web.hosts.127_0_0_1_{mock.port}"
    assert counters["lbproxy.web.status.2xx"] == 37
    assert counters[f"{host}.status.2xx"] == 37
    assert counters["lbproxy.web.status.5xx"] == 1
    assert counters["lbproxy.web.errors.timeout"] == 1
    assert counters["lbproxy.unrouted.status.4xx"] == 5
    assert counters["lbproxy.unrouted.errors.unknown_domain"] == 5
    assert counters["lbproxy.gone.errors.connect_error"] == 3
    assert counters["statsd.bad_lines_seen"] == 0
    assert timers["lbproxy.web.request"] == 38
    assert timers["lbproxy.web.upstream"] == 37
    assert timers[f"{host}.request"] == 38
    assert timers["lbproxy.gone.request"] == 3
    assert "lbproxy.web.in_flight." in gauges  # each worker reports its gauges


def timed_get(proxy) -> float:
    started = time.perf_counter()
    assert get(proxy, "web.test").status_code == 200
    return time.perf_counter() - started


def test_a_dead_statsd_changes_neither_behaviour_nor_latency(mock, tmp_path):
    dead = {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(free_port())}
    with_dead = Proxy(write_config(tmp_path, services(mock)), workers=1, env=dead)
    without = Proxy(write_config(tmp_path, services(mock)), workers=1)
    try:
        for proxy in (with_dead, without):  # warm both pools
            timed_get(proxy)
        pairs = [(timed_get(with_dead), timed_get(without)) for _ in range(300)]
        statuses = {
            get(p, d).status_code
            for p in (with_dead, without)
            for d in ("web.test", "gone.test", "nowhere.test")
        }
    finally:
        with_dead.stop()
        without.stop()
    dead_median = statistics.median(a for a, _ in pairs)
    off_median = statistics.median(b for _, b in pairs)
    print(
        f"\nmedian latency: statsd dead {dead_median * 1000:.2f} ms, off {off_median * 1000:.2f} ms"
    )
    assert statuses == {200, 502, 404}
    # No blocking, no timeout: a dead StatsD costs no more than noise.
    assert dead_median < off_median * 1.5 + 0.001


def test_unresolvable_statsd_host_still_serves(mock, tmp_path):
    env = {"STATSD_HOST": "statsd.invalid"}
    proxy = Proxy(write_config(tmp_path, services(mock)), workers=1, env=env)
    try:
        assert get(proxy, "web.test").status_code == 200
    finally:
        proxy.stop()
    assert "metrics off" in proxy.output()


FIELDS = {
    "time",
    "request_id",
    "client",
    "method",
    "uri",
    "host",
    "service",
    "upstream",
    "outcome",
    "upstream_status",
    "status",
    "response_bytes",
    "request_bytes",
    "duration_ms",
    "connect_ms",
    "upstream_ms",
    "retries",
    "tunnel_close",
}


def test_access_log_lines_are_json_with_every_field(mock, tmp_path):
    log = tmp_path / "access.log"
    extra = {"max_in_flight": 1}
    config = write_config(tmp_path, services(mock, **extra), limits={"max_body_size": 100})
    proxy = Proxy(config, workers=1, env={"PROXY_ACCESS_LOG": str(log)})
    try:
        get(proxy, "web.test", "/ok?x=1", headers={"X-Request-ID": "req-1"})
        get(proxy, "nowhere.test", "/a")
        get(proxy, "gone.test", "/b")
        get(proxy, "web.test", "/c?delay=2")
        get(proxy, "bad host", "/d")
        requests.post(proxy.url + "/e", data=b"x" * 101, headers={"Host": "web.test"}, timeout=5)
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            client.sendall(b"GET /f?delay=3 HTTP/1.1\r\nHost: web.test\r\n\r\n")
            time.sleep(0.2)
            overloaded = get(proxy, "web.test", "/g")  # the one slot is taken
        with socket.create_connection(("127.0.0.1", proxy.port)) as garbage:
            garbage.sendall(b"GARBAGE\r\n\r\n")  # refused by the HTTP server itself
            assert garbage.recv(1024).startswith(b"HTTP/1.1 400")
        time.sleep(1.5)
    finally:
        proxy.stop()
    assert overloaded.status_code == 503
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    by_uri = {line["uri"]: line for line in lines}
    assert all(set(line) == FIELDS for line in lines)
    assert all(line["tunnel_close"] is None for line in lines)  # no tunnel among them

    ok = by_uri["/ok?x=1"]
    assert ok["request_id"] == "req-1" and ok["client"] == "127.0.0.1"
    assert (ok["method"], ok["host"], ok["service"]) == ("GET", "web.test", "web")
    assert ok["upstream"] == f"127.0.0.1:{mock.port}"
    assert (ok["outcome"], ok["upstream_status"], ok["status"]) == ("success", 200, 200)
    assert ok["response_bytes"] > 100 and ok["request_bytes"] == 0
    assert ok["duration_ms"] >= ok["upstream_ms"] > 0 and ok["connect_ms"] > 0
    assert ok["time"].endswith("Z") and ok["retries"] == 0

    expected = {
        "/a": ("unknown_domain", 404, None),
        "/b": ("connect_error", 502, "gone"),
        "/c?delay=2": ("timeout", 504, "web"),
        "/d": ("bad_request", 400, None),
        "/e": ("body_too_large", 413, None),
        "/g": ("overloaded", 503, "web"),
        "/f?delay=3": ("client_abort", 400, "web"),
    }
    refused = by_uri[None]
    assert (refused["status"], refused["outcome"], refused["client"]) == (
        400,
        "bad_request",
        "127.0.0.1",
    )
    assert refused["method"] is None and refused["service"] is None
    for uri, (outcome, status, service) in expected.items():
        line = by_uri[uri]
        assert (line["outcome"], line["status"], line["service"]) == (outcome, status, service), uri
        assert line["upstream_status"] is None and len(line["request_id"]) == 32
        assert line["duration_ms"] >= 0


def test_a_request_id_is_made_forwarded_and_returned(mock, tmp_path):
    proxy = Proxy(write_config(tmp_path, services(mock)), workers=1)
    try:
        made = get(proxy, "web.test")
        kept = get(proxy, "web.test", headers={"X-Request-ID": "abc-42"})
        refused = get(proxy, "nowhere.test", headers={"X-Request-ID": "abc-43"})
    finally:
        proxy.stop()
    assert len(made.headers["X-Request-Id"]) == 32
    assert made.json()["headers"]["X-Request-Id"] == made.headers["X-Request-Id"]
    assert kept.headers["X-Request-Id"] == "abc-42"
    assert kept.json()["headers"]["X-Request-Id"] == "abc-42"
    assert refused.headers["X-Request-Id"] == "abc-43"


def test_readiness_names_a_lone_dead_host_and_by_default_stays_ready(tmp_path):
    """No health check, one host, connection refused: every request is a 502 and
    the host is never ejected (max_ejected_percent); /readyz names the service."""
    dead = [{"name": "dead", "domain": "dead.test", "hosts": [{"address": "127.0.0.1",
             "port": free_port()}], "retry": {"attempts": 0}}]  # fmt: skip
    proxy = Proxy(write_config(tmp_path, dead), workers=1)
    url = f"http://127.0.0.1:{proxy.admin_port}/readyz"
    try:
        assert requests.get(url, timeout=5).text == "ready\n"
        assert {get(proxy, "dead.test").status_code for _ in range(3)} == {502}
        answer = requests.get(url, timeout=5)
        status = requests.get(f"http://127.0.0.1:{proxy.admin_port}/status", timeout=5).json()
    finally:
        proxy.stop()
    assert answer.status_code == 200
    assert answer.text.startswith("no usable host for: dead (ready:")
    host = status["services"][0]["hosts"][0]
    assert (host["in_rotation"], host["failing"], host["health_check"]) == (True, True, "off")


def test_readiness_flips_when_every_host_of_a_service_is_down(tmp_path):
    flaky = start_mock("flaky")
    port = flaky.port
    checked = [
        {
            "name": "checked",
            "domain": "checked.test",
            "hosts": [{"address": "127.0.0.1", "port": port}],
            "health_check": {
                "interval": 0.2,
                "timeout": 0.5,
                "healthy_threshold": 1,
                "unhealthy_threshold": 1,
            },
        }
    ]
    config = write_config(tmp_path, checked)
    document = yaml.safe_load(config.read_text())
    document["proxy"]["admin"]["ready_requires_upstreams"] = True
    config.write_text(yaml.safe_dump(document))
    proxy = Proxy(config, workers=2)

    def ready():
        url = f"http://127.0.0.1:{proxy.admin_port}/readyz"
        return {requests.get(url, timeout=5).status_code for _ in range(6)}

    def wait_for(expected):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if ready() == expected:
                return True
            time.sleep(0.1)
        return False

    try:
        assert wait_for({200})
        flaky.stop()
        assert wait_for({503})
        assert get(proxy, "checked.test").status_code == 503  # no_healthy_host
        flaky = start_mock("flaky", port=port)
        assert wait_for({200})
        assert get(proxy, "checked.test").status_code == 200
    finally:
        proxy.stop()
        flaky.stop()


def test_access_log_lines_reach_the_file_within_a_second_or_two_while_running(mock, tmp_path):
    log = tmp_path / "access.log"
    proxy = Proxy(
        write_config(tmp_path, services(mock)), workers=1, env={"PROXY_ACCESS_LOG": str(log)}
    )
    try:
        get(proxy, "web.test", "/while-running")
        sent = time.monotonic()
        while time.monotonic() - sent < 5 and "/while-running" not in log.read_text():
            time.sleep(0.1)
        waited = time.monotonic() - sent
        assert "/while-running" in log.read_text()  # flushed by the worker, not at exit
        assert proxy.running()
    finally:
        proxy.stop()
    assert waited < 2.5  # flushed once a second
