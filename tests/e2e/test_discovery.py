"""DNS discovery end to end: a real dnsmasq, mocks on 127.0.0.2-4 on one port,
the proxy with 2 workers re-resolving every second (TTL 1 s)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import requests

from devkit.processes import wait_until
from tests.processes import Dnsmasq, Proxy, free_port, start_mock, write_config

WEB = "web.svc.test"
TWO = ["127.0.0.2", "127.0.0.3"]


@pytest.fixture(scope="module")
def port():
    return free_port("127.0.0.2")


@pytest.fixture(scope="module")
def mocks(port):
    servers = {i: start_mock(f"m{i}", port, address=f"127.0.0.{i}") for i in (2, 3, 4)}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def dns(directory, port, mocks):
    server = Dnsmasq(
        directory,
        {WEB: TWO, "api.svc.test": ["127.0.0.4"]},
        srv=(f"_http._tcp.api.svc.test,api.svc.test,{port}",),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(directory, dns, port, statsd):
    services = [
        {
            "name": "web",
            "domain": "web.test",
            "hosts": [{"address": WEB, "port": port, "resolve": True}],
        },
        {
            "name": "api",
            "domain": "api.test",
            "hosts": [{"srv": "_http._tcp.api.svc.test", "resolve": True}],
        },
        {
            "name": "gone",
            "domain": "gone.test",
            "hosts": [{"address": "nx.svc.test", "port": port, "resolve": True}],
        },
        {
            "name": "fixed",
            "domain": "fixed.test",
            "hosts": [{"address": "127.0.0.3", "port": port}],
        },
    ]
    config = write_config(
        directory,
        services,
        resolver={"nameservers": [f"127.0.0.1:{dns.port}"], "refresh": 1},
        statsd={"host": "127.0.0.1", "port": statsd.udp_port, "interval": 0.2},
    )
    server = Proxy(config, workers=2)
    try:  # stopped even when the first resolution never comes
        assert wait_until(
            lambda: len(instances(server, "web.test", 6)) == 2, server, 10, "web resolved"
        )
        yield server
    finally:
        server.stop()


def get(proxy, domain, path="/"):
    return requests.get(
        proxy.url + path, headers={"Host": domain, "Connection": "close"}, timeout=15
    )


def instances(proxy, domain, count=12) -> set[str]:
    answers = [get(proxy, domain) for _ in range(count)]
    for answer in answers:
        if answer.status_code == 200 and not answer.text.startswith("{"):
            raise AssertionError(f"{answer.status_code} {answer.headers} {answer.text[:300]!r}")
    return {answer.json()["instance"] for answer in answers if answer.status_code == 200}


def status(proxy, service):
    answer = requests.get(f"http://127.0.0.1:{proxy.admin_port}/status", timeout=5).json()
    return next(s for s in answer["services"] if s["name"] == service)


def test_every_address_of_the_name_serves_and_status_says_where_each_came_from(proxy):
    assert instances(proxy, "web.test") == {"m2", "m3"}
    web = status(proxy, "web")
    assert sorted(host["host"].split(":")[0] for host in web["hosts"]) == TWO
    assert {host["resolved_from"] for host in web["hosts"]} == {WEB}
    (name,) = web["names"]
    assert name["name"] == WEB and name["error"] is None and name["ttl"] == 1
    assert name["resolved_at"] is not None and name["hosts"] == 2


def test_an_srv_name_gives_hosts_and_ports(proxy, port):
    assert instances(proxy, "api.test", 4) == {"m4"}
    (host,) = status(proxy, "api")["hosts"]
    assert host["host"] == f"127.0.0.4:{port}"


def test_nxdomain_is_a_fast_503_and_other_services_serve(proxy):
    started = time.monotonic()
    answer = get(proxy, "gone.test")
    assert answer.status_code == 503 and time.monotonic() - started < 0.5
    assert status(proxy, "gone")["names"][0]["error"] == "nxdomain"
    assert instances(proxy, "fixed.test", 3) == {"m3"}


def test_scale_up_then_down_with_a_request_in_flight_to_the_removed_address(proxy, dns):
    dns.set({WEB: [*TWO, "127.0.0.4"], "api.svc.test": ["127.0.0.4"]})
    started = time.monotonic()
    assert wait_until(lambda: "m4" in instances(proxy, "web.test", 6), proxy, 5, "the new address")
    assert time.monotonic() - started < 4  # refresh 1 s + TTL 1 s, and the requests
    # One slow request per host (round robin, pod-wide): one is on 127.0.0.4.
    slow: list[requests.Response] = []
    threads = [
        threading.Thread(target=lambda: slow.append(get(proxy, "web.test", "/?delay=3")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    assert wait_until(lambda: status(proxy, "web")["in_flight"] == 3, proxy, 5, "3 in flight")
    dns.set({WEB: TWO, "api.svc.test": ["127.0.0.4"]})
    assert wait_until(lambda: len(status(proxy, "web")["hosts"]) == 2, proxy, 5, "the removal")
    assert instances(proxy, "web.test", 20) == {"m2", "m3"}  # no new request to .4
    for thread in threads:
        thread.join()
    assert sorted(answer.json()["instance"] for answer in slow) == ["m2", "m3", "m4"]
    assert {answer.status_code for answer in slow} == {200}  # the one in flight to .4 finished


def test_a_stalled_dns_server_adds_nothing_to_requests(proxy, dns, statsd):
    before = status(proxy, "web")["names"][0]["errors"]
    dns.signal(signal.SIGSTOP)
    try:
        latencies = []
        deadline = time.monotonic() + 6  # lookups time out after 2 s: a few of them
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert get(proxy, "web.test").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
        name = status(proxy, "web")["names"][0]
    finally:
        dns.signal(signal.SIGCONT)
    assert name["errors"] >= before + 2 and name["error"] == "timeout"
    assert name["hosts"] == 2  # the last good set is kept
    assert max(latencies) < 0.25, max(latencies)
    counters = {}
    assert wait_until(
        lambda: (
            counters.update(statsd.counters()) or counters.get("lbproxy.web.dns_errors", 0) >= 2
        ),
        statsd,
        5,
        "dns_errors at StatsD",
    )
    assert counters["lbproxy.web.dns_lookups"] > counters["lbproxy.web.dns_errors"]
