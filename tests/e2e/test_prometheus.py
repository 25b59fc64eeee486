"""Prometheus /metrics end to end: the proxy with 2 workers, a real Prometheus
scraping its admin port every second, promtool, and the SLO evaluator."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from devkit.processes import wait_until
from tests.processes import (
    REPO,
    PrometheusServer,
    Proxy,
    free_port,
    serving_worker,
    start_mock,
    write_config,
)


@pytest.fixture(scope="module")
def mock():
    server = start_mock("scraped")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def config(directory, mock):
    services = [
        {
            "name": "web",
            "domain": "web.test",
            "hosts": [{"address": "127.0.0.1", "port": mock.port}],
        },
        {
            "name": "dead",
            "domain": "dead.test",
            "hosts": [{"address": "127.0.0.1", "port": free_port()}],
            "retry": {"attempts": 0},
        },
    ]
    return write_config(directory, services, statsd={"interval": 0.2})


@pytest.fixture(scope="module")
def proxy(config):
    server = Proxy(config, workers=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(directory, proxy):
    rules = REPO / "monitoring" / "prometheus" / "rules.yaml"
    server = PrometheusServer(directory, [f"127.0.0.1:{proxy.admin_port}"], rules)
    yield server
    server.stop()


def scrape(proxy) -> str:
    return requests.get(f"http://127.0.0.1:{proxy.admin_port}/metrics", timeout=5).text


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


WEB_2XX = 'lbproxy_requests_total{code="2xx",service="web"}'


def fresh(proxy, domain: str, path: str = "/") -> tuple[int, int | None]:
    """One request on a new connection: (status, the worker that served it)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": domain})
        response = conn.getresponse()
        response.read()
        return response.status, serving_worker(proxy, conn.sock)
    finally:
        conn.close()


def settled(proxy, sample: str, expected: float) -> bool:
    """The workers flush every statsd.interval (0.2 s): wait for the count."""
    return wait_until(lambda: value(scrape(proxy), sample) == expected, proxy, 5, sample)


def test_the_body_passes_promtool_check_metrics(proxy):
    fresh(proxy, "web.test")
    body = scrape(proxy)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'lbproxy_build_info{version="0.1.0"} 1.0' in body


def test_every_scrape_shows_every_request_of_both_workers(proxy):
    time.sleep(0.6)  # earlier requests flushed
    before = value(scrape(proxy), WEB_2XX)
    workers = set()
    for _ in range(40):
        status, worker = fresh(proxy, "web.test")
        assert status == 200
        workers.add(worker)
    assert len(workers) == 2, "both workers served"
    assert settled(proxy, WEB_2XX, before + 40)
    scrapes = [value(scrape(proxy), WEB_2XX) for _ in range(10)]
    assert scrapes == [before + 40] * 10  # whichever worker answers the scrape
    body = scrape(proxy)
    count = value(body, 'lbproxy_request_duration_seconds_count{service="web"}')
    inf = value(body, 'lbproxy_request_duration_seconds_bucket{le="+Inf",service="web"}')
    assert count == inf == before + 40  # the histogram counts every request
    assert value(body, "lbproxy_workers") == 2


def test_a_dead_upstreams_errors_land_under_their_kind(proxy):
    for _ in range(3):
        assert fresh(proxy, "dead.test")[0] == 502
    sample = 'lbproxy_request_errors_total{kind="connect_error",service="dead"}'
    assert settled(proxy, sample, 3)
    assert value(scrape(proxy), 'lbproxy_requests_total{code="5xx",service="dead"}') == 3


def test_the_proxy_port_routes_metrics_like_any_path(proxy):
    answer = requests.get(f"{proxy.url}/metrics", headers={"Host": "web.test"}, timeout=5)
    assert answer.json()["path"] == "/metrics"  # the upstream's answer, not ours
    unrouted = requests.get(f"{proxy.url}/metrics", timeout=5)
    assert unrouted.status_code == 404 and "lbproxy_" not in unrouted.text


def test_counters_survive_a_reload(proxy):
    fresh(proxy, "web.test")
    time.sleep(0.5)
    before = value(scrape(proxy), WEB_2XX)
    old = set(proxy.children())
    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: not old & set(proxy.children()), proxy, 15, "the new workers")
    assert value(scrape(proxy), WEB_2XX) == before  # the old workers' counts are kept
    fresh(proxy, "web.test")
    assert settled(proxy, WEB_2XX, before + 1)


def test_prometheus_scrapes_it_and_answers_queries(prometheus, proxy):
    assert wait_until(
        lambda: [r["value"][1] for r in prometheus.query("up")] == ["1"], prometheus, 20, "up"
    )
    for _ in range(20):
        fresh(proxy, "web.test")
    rate = 'sum(rate(lbproxy_requests_total{service="web"}[10s]))'
    assert wait_until(
        lambda: any(float(r["value"][1]) > 0 for r in prometheus.query(rate)),
        prometheus,
        20,
        "a request rate",
    )


def test_every_dashboard_query_returns_series_from_the_real_prometheus(prometheus, proxy):
    """monitoring/prometheus/grafana-dashboard.json's queries, $service as All (.*):
    each parses and returns a series, the recording rule's too; the service
    variable's label_values lists the services."""
    dashboard = json.loads((REPO / "monitoring/prometheus/grafana-dashboard.json").read_text())
    (service,) = [v for v in dashboard["templating"]["list"] if v["name"] == "service"]
    queries = [
        target["expr"].replace("$service", service["allValue"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    assert len(queries) >= 7
    for _ in range(5):
        fresh(proxy, "web.test")
        fresh(proxy, "dead.test")
    for query in queries:  # the rules are evaluated every 10 s
        assert wait_until(lambda q=query: prometheus.query(q), prometheus, 30, query, 0.5), query
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", service["query"]).groups()
    values = requests.get(
        f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=5
    ).json()["data"]
    assert {"web", "dead"} <= set(values)


def test_the_evaluator_gives_the_colours_from_prometheus(prometheus, proxy):
    for _ in range(10):
        fresh(proxy, "web.test")

    def evaluate(service: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "monitoring.evaluate", "--prometheus", prometheus.url,
             "--service", service, "--sli", "availability", "--window", "2m", "--hold", "4s",
             "--step", "2s", "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return json.loads(result.stdout)["results"][0]

    # green once Prometheus holds enough scrapes of the requests (none a 5xx)
    assert wait_until(lambda: evaluate("web")["colour"] == "green", prometheus, 30, "green")
    for _ in range(10):
        fresh(proxy, "dead.test")  # every request a 502
    reached = wait_until(lambda: evaluate("dead")["colour"] == "red", prometheus, 30, "red")
    assert reached, evaluate("dead")
