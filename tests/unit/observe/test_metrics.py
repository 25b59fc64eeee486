"""StatsD metrics: names, types and values, caught on a local UDP socket."""

from __future__ import annotations

import os
import socket

import pytest

from app.config import Statsd, parse_config
from app.observe.metrics import Metrics, safe, statsd_settings
from app.wsgi import Proxy
from tests.processes import free_port
from tests.wsgi_env import environ


@pytest.fixture
def sink():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def proxy_for(mocks, sink) -> Proxy:
    a = mocks["a"].port
    config = parse_config(
        f"""
proxy:
  statsd: {{host: 127.0.0.1, port: {sink.getsockname()[1]}, prefix: lb.test}}
  services:
    - name: web.site
      domain: web.test
      hosts: [{{address: 127.0.0.1, port: {a}}}]
      timeout: {{read: 0.3}}
    - name: gone
      domain: gone.test
      hosts: [{{address: 127.0.0.1, port: {free_port()}}}]
"""
    )
    return Proxy(config)


def request(proxy, host, target="/", body=b"", method="GET"):
    statuses = []
    request_environ = environ(body, REQUEST_METHOD=method, RAW_URI=target, HTTP_HOST=host)
    response = proxy(request_environ, lambda status, headers: statuses.append(status))
    data = b"".join(response)
    if hasattr(response, "close"):
        response.close()
    proxy.metrics.flush()
    return statuses[0], data


def datagram(sink) -> dict[str, tuple[float, str]]:
    """One datagram as {name: (value, type)}."""
    lines = sink.recv(65536).decode().splitlines()
    parsed = {}
    for line in lines:
        name, _, rest = line.partition(":")
        value, _, kind = rest.partition("|")
        parsed[name] = (float(value), kind)
    return parsed


def test_a_success_sends_one_datagram_with_timers_counters_and_bytes(mocks, sink):
    proxy = proxy_for(mocks, sink)
    status, body = request(proxy, "web.test", "/?echo=raw", b"12345", "POST")
    assert status.startswith("200")
    metrics = datagram(sink)
    host = f"lb.test.web_site.hosts.127_0_0_1_{mocks['a'].port}"
    for scope in ("lb.test.web_site", host):
        assert metrics[f"{scope}.request"][1] == "ms"
        assert metrics[f"{scope}.upstream"][1] == "ms"
        assert metrics[f"{scope}.connect"][1] == "ms"  # a new connection: timed
        assert metrics[f"{scope}.status.2xx"] == (1, "c")
        assert metrics[f"{scope}.bytes_in"] == (5, "c")
        assert metrics[f"{scope}.bytes_out"] == (len(body), "c")
    assert metrics["lb.test.web_site.request"][0] >= metrics["lb.test.web_site.upstream"][0]
    assert not any(".errors." in name for name in metrics)
    request(proxy, "web.test")
    again = datagram(sink)
    assert "lb.test.web_site.connect" not in again  # the pooled connection was reused


def test_a_404_counts_an_unrouted_error(mocks, sink):
    status, _ = request(proxy_for(mocks, sink), "nowhere.test")
    assert status.startswith("404")
    assert datagram(sink) == {
        "lb.test.unrouted.status.4xx": (1, "c"),
        "lb.test.unrouted.errors.unknown_domain": (1, "c"),
    }


def test_a_request_the_server_refused_counts_as_an_unrouted_bad_request(mocks, sink):
    proxy = proxy_for(mocks, sink)
    logged = []
    proxy.end.access_log = lambda batch: logged.extend(record for record, _ in batch)
    proxy.refused_by_server({"REMOTE_ADDR": "127.0.0.1"}, 431, 40)
    proxy.metrics.flush()
    assert datagram(sink) == {
        "lb.test.unrouted.status.4xx": (1, "c"),
        "lb.test.unrouted.errors.bad_request": (1, "c"),
    }
    [record] = logged  # what the access log writes
    assert (record.status, record.outcome, record.service) == (431, "bad_request", None)
    assert record.bytes_out == 40


def test_a_502_counts_a_connect_error(mocks, sink):
    status, _ = request(proxy_for(mocks, sink), "gone.test")
    assert status.startswith("502")
    metrics = datagram(sink)
    assert metrics["lb.test.gone.status.5xx"] == (1, "c")
    assert metrics["lb.test.gone.errors.connect_error"] == (1, "c")
    assert metrics["lb.test.gone.request"][1] == "ms"
    assert not any(name.endswith(".upstream") for name in metrics)


def test_a_504_counts_a_timeout(mocks, sink):
    status, _ = request(proxy_for(mocks, sink), "web.test", "/?delay=2")
    assert status.startswith("504")
    metrics = datagram(sink)
    assert metrics["lb.test.web_site.errors.timeout"] == (1, "c")
    assert metrics["lb.test.web_site.status.5xx"] == (1, "c")
    host = f"lb.test.web_site.hosts.127_0_0_1_{mocks['a'].port}"
    assert metrics[f"{host}.status.5xx"] == (1, "c")


def test_health_events_and_gauges(mocks, sink):
    proxy = proxy_for(mocks, sink)
    route = proxy.router.route("web.test")
    proxy.metrics.health_event("web.site", "10.0.0.1:80", "ejected")
    proxy.metrics.health_event("web.site", "10.0.0.1:80", "ejected")
    proxy.metrics.flush()
    assert datagram(sink) == {"lb.test.web_site.hosts.10_0_0_1_80.ejected": (2, "c")}
    request(proxy, "web.test")
    datagram(sink)
    proxy.metrics.report_gauges(proxy.router.by_name(), proxy.forwarder)
    gauges = datagram(sink)
    pid = os.getpid()
    assert gauges[f"lb.test.web_site.in_flight.{pid}"] == (0, "g")
    assert gauges[f"lb.test.web_site.hosts_in_rotation.{pid}"] == (1, "g")
    host = safe(route.service.hosts[0].name)
    assert gauges[f"lb.test.web_site.hosts.{host}.pool_idle.{pid}"] == (1, "g")


def test_requests_are_batched_and_counters_summed(mocks, sink):
    proxy = proxy_for(mocks, sink)
    for _ in range(3):
        environ_request(proxy)
    assert proxy.metrics.counters["web_site.status.2xx"] == 3  # kept, not sent yet
    proxy.metrics.flush()
    metrics = datagram(sink)
    assert metrics["lb.test.web_site.status.2xx"] == (3, "c")
    proxy.metrics.flush()  # nothing left: nothing sent
    with pytest.raises(TimeoutError):
        sink.settimeout(0.2)
        sink.recv(65536)


def test_a_full_batch_of_timers_is_sent_without_waiting(mocks, sink):
    proxy = proxy_for(mocks, sink)
    requests_made = 0
    while requests_made < 50:
        environ_request(proxy)
        requests_made += 1
        if not proxy.metrics.timers:  # emptied: a batch went out on its own
            break
    # Two timers a scope (request, upstream), two scopes: 7 requests fill 28 samples.
    assert requests_made == 7
    assert datagram(sink)["lb.test.web_site.status.2xx"] == (7, "c")


def environ_request(proxy):
    """A request without the flush ``request()`` does."""
    statuses = []
    response = proxy(environ(HTTP_HOST="web.test"), lambda status, headers: statuses.append(status))
    b"".join(response)
    response.close()


def test_gauges_follow_the_traffic_not_the_number_of_services(mocks, sink):
    proxy = proxy_for(mocks, sink)
    proxy.metrics.report_gauges(proxy.router.by_name(), proxy.forwarder)
    with pytest.raises(TimeoutError):  # no traffic yet: no gauge at all
        sink.settimeout(0.2)
        sink.recv(65536)
    sink.settimeout(2)
    request(proxy, "web.test")
    datagram(sink)
    reports = []
    for _ in range(3):
        proxy.metrics.report_gauges(proxy.router.by_name(), proxy.forwarder)
        sink.settimeout(0.2)
        try:
            reports.append(datagram(sink))
        except TimeoutError:
            reports.append({})
    names = [{name.split(".")[2] for name in report} for report in reports]
    # Reported after its request, once more at rest, then no longer; never "gone".
    assert names == [{"web_site"}, {"web_site"}, set()]


def test_settings_come_from_the_file_and_the_environment():
    assert statsd_settings(Statsd(), {}) is None  # off unless a host is named
    from_file = statsd_settings(Statsd(host="10.0.0.5", port=9125, prefix="a.b"), {})
    assert (from_file.host, from_file.port, from_file.prefix) == ("10.0.0.5", 9125, "a.b")
    env = {"STATSD_HOST": "stats.local", "STATSD_PORT": "8200", "STATSD_PREFIX": "x"}
    from_env = statsd_settings(Statsd(host="10.0.0.5"), env)
    assert (from_env.host, from_env.port, from_env.prefix) == ("stats.local", 8200, "x")


def test_an_unresolvable_host_turns_metrics_off_without_failing():
    metrics = Metrics(Statsd(host="no-such-host.invalid", port=8125))
    assert metrics.enabled is False
    metrics.health_event("s", "h", "ejected")  # a no-op, no exception


def test_names_are_graphite_safe():
    assert safe("my.service:1/x") == "my_service_1_x"


def test_a_tunnel_counts_opened_closed_by_reason_and_bytes(sink):
    from app.observe.record import Record

    metrics = Metrics(Statsd(host="127.0.0.1", port=sink.getsockname()[1], prefix="lb.test"))
    metrics.tunnel_opened("chat")
    record = Record("id")
    record.service, record.status, record.tunnel_close = "chat", 101, "idle"
    record.bytes_in, record.bytes_out = 10, 250
    record.finish()
    metrics.requests_done([record])
    metrics.tunnel_closed(record)
    metrics.flush()
    got = datagram(sink)
    assert got["lb.test.chat.tunnels.opened"] == (1, "c")
    assert got["lb.test.chat.tunnels.closed.idle"] == (1, "c")
    assert got["lb.test.chat.tunnels.bytes_in"] == (10, "c")
    assert got["lb.test.chat.tunnels.bytes_out"] == (250, "c")
    assert got["lb.test.chat.status.1xx"] == (1, "c")


def test_lines_are_packed_into_datagrams_under_the_mtu_in_their_order(sink):
    from app.observe.metrics import MAX_DATAGRAM, Datagrams

    lines = [f"svc.n{n:03d}:{n}|c" for n in range(150)] + ["x" * 2000 + ":1|c", "last:1|c"]
    datagrams = Datagrams("127.0.0.1", sink.getsockname()[1], "lb")
    datagrams.send_text("\n".join(datagrams.prefix + line for line in lines))
    received = []
    sink.settimeout(0.5)
    with pytest.raises(TimeoutError):
        while True:
            received.append(sink.recv(65536).decode())
    assert len(received) >= 4  # 150 short lines need several datagrams, the long one its own
    assert all(len(d) < MAX_DATAGRAM for d in received if "xxx" not in d)
    assert "x" * 2000 + ":1|c" in [line.removeprefix("lb.") for line in received]
    assert [line for d in received for line in d.split("\n")] == [f"lb.{line}" for line in lines]


def mixed_records():
    """Ended requests of several kinds, in the order a worker might end them."""
    from app.observe.record import Record

    kinds = [
        dict(service="web", upstream="10.0.0.1:80", status=200, bytes_out=100),
        dict(service="web", upstream="10.0.0.2:80", status=200, bytes_in=5, connect_time=0.003),
        dict(service="web", upstream="10.0.0.1:80", status=502, outcome="connect_error"),
        dict(service="api", upstream="10.0.0.3:80", status=200, retries=2, bytes_out=7),
        dict(service=None, upstream=None, status=404, outcome="unknown_domain"),
        dict(service="web", upstream="10.0.0.1:80", status=None, outcome="client_abort"),
    ]
    records = []
    for n in range(40):
        record = Record(f"r{n}", **kinds[n * 7 % len(kinds)])
        if record.status == 200:
            record.upstream_time = 0.001 * (n + 1)
        record.finished = record.started + 0.002 * (n + 1)
        records.append(record)
    return records


def received(sink) -> tuple[dict[str, int], list[str]]:
    """Every datagram until none comes: counters summed by name, timer lines sorted."""
    counters: dict[str, int] = {}
    timers = []
    sink.settimeout(0.3)
    with pytest.raises(TimeoutError):
        while True:
            for line in sink.recv(65536).decode().split("\n"):
                if line.endswith("|ms"):
                    timers.append(line)
                else:
                    name, _, value = line.removesuffix("|c").partition(":")
                    counters[name] = counters.get(name, 0) + int(value)
    return counters, sorted(timers)


def test_a_batch_counts_what_its_requests_count_one_at_a_time(sink):
    port = sink.getsockname()[1]
    records = mixed_records()
    together = Metrics(Statsd(host="127.0.0.1", port=port, prefix="lb"))
    together.requests_done(records)
    together.flush()
    counters, timers = received(sink)
    alone = Metrics(Statsd(host="127.0.0.1", port=port, prefix="lb"))
    for record in records:
        alone.requests_done([record])
    alone.flush()
    assert (counters, timers) == received(sink)
    # Every sample sent, each under its service and its host.
    web = sum(record.service == "web" for record in records)
    assert sum(line.startswith("lb.web.request:") for line in timers) == web
    assert sum(line.startswith("lb.web.hosts.10_0_0_1_80.request:") for line in timers) == 20
    assert "lb.web.hosts.10_0_0_2_80.connect:3.000000|ms" in timers
    assert counters["lb.unrouted.errors.unknown_domain"] == 6
    assert counters["lb.api.retries"] == 14 and counters["lb.api.bytes_out"] == 49


def test_a_request_that_cannot_be_counted_costs_only_its_own_kind(sink, caplog):
    from app.observe.record import Record

    good = [Record(f"r{n}", service="web", upstream="10.0.0.1:80", status=200) for n in range(3)]
    odd = Record("odd", service="web", upstream="10.0.0.1:80", status="200")  # not an int
    unset = Record("unset", service="web", upstream="10.0.0.1:80", status=200, bytes_out=None)
    for record in (*good, odd, unset):
        record.finish()
    metrics = Metrics(Statsd(host="127.0.0.1", port=sink.getsockname()[1], prefix="lb"))
    with caplog.at_level("ERROR", logger="gunicorn.error"):
        metrics.requests_done([good[0], odd, *good[1:], unset])
    metrics.flush()
    counters, timers = received(sink)
    assert counters["lb.web.status.2xx"] == 4  # the good ones and the one without a byte count
    assert sum(line.startswith("lb.web.request:") for line in timers) == 4
    assert "error counting 1 requests to web" in caplog.text
