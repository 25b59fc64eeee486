"""Monitoring on the real stack: StatsD → carbon-cache → graphite-web, started by monitoring/stack.

- the evaluator's colours and 5-minute windows, on series written into the
  real carbon (plaintext port) with chosen timestamps and read back through
  graphite-web's render API; the Grafana alert queries agree with it;
- the evaluator on .jtl files made by jmeter/run (a fixture from the
  integration plan, and a live performance run);
- end to end: load through the proxy → StatsD → carbon → graphite-web, then
  every Graphite target of the dashboard and of the alert rules returns data;
- the dashboard's JSON: an export that imports into any Grafana (it asks for a
  Graphite data source) and, provisioned from the file, starts on
  monitoring/grafana-datasource.yaml's data source.

Everything runs on 127.0.0.1 on free ports, in a temporary state directory,
and is stopped by PID (monitoring/stack stop). StatsD flushes every 2 s here
(retentions 2s:6h,...), so the 5-minute hold is 150 points.
"""

from __future__ import annotations

import copy
import json
import random
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests
import yaml

from devkit.processes import is_alive as alive
from monitoring import evaluate, grafana, oprange
from monitoring import stack as monitoring_stack
from monitoring.slo import budget_target, load
from monitoring.stack import HISTOGRAM_BINS
from tests.grafana_dashboards import (
    chosen,
    datasource_refs,
    datasource_variable,
    export_problems,
    imported,
)
from tests.processes import REPO, Proxy, free_port, start_mock, write_config

STACK = REPO / "monitoring" / "stack"
FLUSH = 2
SLO = load()
POLICY = SLO.policy
HOLD_POINTS = POLICY.hold // FLUSH  # 150
WINDOW_POINTS = POLICY.window // FLUSH  # 1800
TESTDATA = REPO / "monitoring" / "testdata"
# The end-to-end proxy's services, as a Graphite glob: the colour cases' series are
# in the same Graphite (and the same trailing hour), under other service names.
E2E = "{my-service,my-service2,my-service3,failover,dead,slow}"

pytestmark = pytest.mark.slow


def free_run(count: int) -> int:
    """A base port with ``count`` consecutive ports free (TCP and UDP) on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20000, 32000)  # below the ephemeral range
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as sock:
                        sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port run")


class Stack:
    def __init__(self, state: Path, info: dict):
        self.state = state
        self.info = info
        ports = info["ports"]
        self.url = f"http://127.0.0.1:{ports['web']}"
        self.statsd_port = ports["statsd"]
        self.carbon_port = ports["carbon_line"]
        self.pids = info["pids"]

    def render(self, targets: list[str], start: int, until: int) -> list:
        return evaluate.render(self.url, targets, start, until)

    def send(self, lines: list[str]) -> None:
        """Plaintext protocol: ``metric value timestamp`` per line."""
        with socket.create_connection(("127.0.0.1", self.carbon_port), timeout=10) as sock:
            sock.sendall(("\n".join(lines) + "\n").encode())

    def wait_for(self, target: str, timestamp: int, timeout: float = 30) -> None:
        """Until graphite-web returns a value for ``target`` at ``timestamp``.

        A render may fail meanwhile: while carbon creates a series' whisper
        file, graphite-web answers 500 ("Unable to read header"), as it did
        on a fresh CI machine.
        """
        deadline = time.monotonic() + timeout
        failure = None
        while time.monotonic() < deadline:
            try:
                entries = self.render([target], timestamp - 10, timestamp + FLUSH)
            except evaluate.EvaluationError as error:
                entries, failure = [], error
            for entry in entries:
                if any(v is not None and t == timestamp for v, t in entry["datapoints"]):
                    return
            time.sleep(0.3)
        raise AssertionError(f"{target} at {timestamp} never readable (last failure: {failure})")


def test_waiting_for_a_series_outlasts_a_failing_render():
    """graphite-web answers 500 while carbon creates the series' file: the wait goes on."""
    answers = [evaluate.EvaluationError("HTTP Error 500"), [{"datapoints": [[1.0, 100]]}]]

    class Scripted(Stack):
        def render(self, targets, start, until):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    ports = {"web": 0, "statsd": 0, "carbon_line": 0}
    Scripted(Path("unused"), {"ports": ports, "pids": {}}).wait_for("t", 100, timeout=5)
    assert answers == []


def stack_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(STACK), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("monitoring-state")
    statsd, carbon, web = free_run(2), free_run(3), free_port()
    ports = ["--statsd-port", str(statsd), "--carbon-port", str(carbon), "--web-port", str(web)]
    started = stack_command("start", "--state", str(state), "--flush", str(FLUSH), *ports)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"http://127.0.0.1:{web}/" in started.stdout  # it prints where to look
    info = json.loads((state / "run" / "stack.json").read_text())
    handle = Stack(state, info)
    try:
        yield handle
    finally:
        stopped = stack_command("stop", "--state", str(state))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in handle.pids.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [name for name, pid in handle.pids.items() if alive(pid)]


def test_the_stack_runs_three_processes_and_reports_them(stack):
    status = stack_command("status", "--state", str(stack.state))
    assert status.returncode == 0, status.stdout
    for name in ("carbon", "web", "statsd"):
        assert f"{name:7} pid {stack.pids[name]:<8} running" in status.stdout
    assert set(stack.pids) == {"carbon", "web", "statsd"}
    assert all(alive(pid) for pid in stack.pids.values())
    # Its own configs: carbon on the chosen port with StatsD's flush as first retention.
    carbon_conf = (stack.state / "carbon" / "carbon.conf").read_text()
    assert f"LINE_RECEIVER_PORT = {stack.carbon_port}" in carbon_conf
    schemas = (stack.state / "carbon" / "storage-schemas.conf").read_text()
    assert f"retentions = {FLUSH}s:6h,1m:7d,10m:1y" in schemas
    # A second start on the same state refuses while it runs.
    again = stack_command("start", "--state", str(stack.state))
    assert again.returncode == 1 and "already running" in again.stdout


# -- colours on series written into carbon ------------------------------------
TOTAL = 10_000  # requests a point
# Bad requests a point that use 100% of availability's budget (objective 99.9%: 10).
UNIT = round(TOTAL * SLO.slis["availability"].allowed)
assert abs(TOTAL * SLO.slis["availability"].allowed - UNIT) < 1e-6


def constant(use, points):
    """Bad requests per point for a steady budget use (a multiple of 1/UNIT)."""
    return [round(use * UNIT)] * points


def alternating(low, high, points):
    return [round(low * UNIT) if i % 2 == 0 else round(high * UNIT) for i in range(points)]


def with_burst(base, extra_use, points_before_end):
    """``base`` plus a burst of bad requests at the point ``points_before_end`` before the
    newest, adding ``extra_use`` to the budget use while it stays in the window."""
    series = list(base)
    series[len(series) - 1 - points_before_end] += round(extra_use * UNIT * WINDOW_POINTS)
    return series


POINTS = WINDOW_POINTS + HOLD_POINTS + 30
AVAILABILITY_CASES = {
    # name: (bad requests per point, colour, budget use at the newest point)
    "green": (constant(0.4, POINTS), "green", 0.40),
    "yellow": (alternating(0.6, 0.8, POINTS), "yellow", 0.70),
    "orange": (alternating(0.8, 1.0, POINTS), "orange", 0.90),
    "red": (constant(1.2, POINTS), "red", 1.20),
    # A burst of +50% over a 40% base: >= 80% from the burst point on.
    "orange_4m": (with_burst(constant(0.4, POINTS), 0.5, 120), "yellow", 0.90),
    "orange_4m58s": (with_burst(constant(0.4, POINTS), 0.5, HOLD_POINTS - 2), "yellow", 0.90),
    "orange_5m00s": (with_burst(constant(0.4, POINTS), 0.5, HOLD_POINTS - 1), "orange", 0.90),
    # 90% throughout, then a burst of +20%: >= 100% for the last 4 or 6 minutes.
    "red_4m": (with_burst(alternating(0.8, 1.0, POINTS), 0.2, 120), "orange", 1.10),
    "red_6m": (with_burst(alternating(0.8, 1.0, POINTS), 0.2, 180), "red", 1.10),
}


@pytest.fixture(scope="module")
def written(stack):
    """Every case's series, written with timestamps ending at ``end`` (2 points ago)."""
    end = int(time.time()) // FLUSH * FLUSH - 2 * FLUSH
    times = [end - (POINTS - 1 - i) * FLUSH for i in range(POINTS)]
    lines = []
    for name, (bad, _, _) in AVAILABILITY_CASES.items():
        service = f"lbproxy.colour_{name}"
        for t, b in zip(times, bad, strict=True):
            lines.append(f"stats.counters.{service}.status.5xx.count {b} {t}")
            lines.append(f"stats.timers.{service}.request.count {TOTAL} {t}")
    # A service that never failed has no status.5xx series at all.
    for t in times:
        lines.append(f"stats.timers.lbproxy.colour_clean.request.count 1000 {t}")
    # Latency: 1000 requests a point, 9 of them >= 500 ms (objective 99%: 90% of the budget).
    for t in times:
        lines.append(f"stats.timers.lbproxy.colour_latency.request.count 1000 {t}")
        lines.append(f"stats.timers.lbproxy.colour_latency.request.histogram.bin_500 9 {t}")
        lines.append(f"stats.timers.lbproxy.colour_latency.request.histogram.bin_100 991 {t}")
    # Saturation: two workers; worker 102 holds 90 (>= the limit, 75) in the last 6 minutes.
    for i, t in enumerate(times):
        busy = 90 if i >= POINTS - 180 else 60
        lines.append(f"stats.gauges.lbproxy.colour_sat.in_flight.101 40 {t}")
        lines.append(f"stats.gauges.lbproxy.colour_sat.in_flight.102 {busy} {t}")
    for start in range(0, len(lines), 5000):
        stack.send(lines[start : start + 5000])
    for name in AVAILABILITY_CASES:
        stack.wait_for(f"stats.timers.lbproxy.colour_{name}.request.count", end)
        stack.wait_for(f"stats.counters.lbproxy.colour_{name}.status.5xx.count", end)
    stack.wait_for("stats.timers.lbproxy.colour_clean.request.count", end)
    stack.wait_for("stats.timers.lbproxy.colour_latency.request.histogram.bin_500", end)
    stack.wait_for("stats.gauges.lbproxy.colour_sat.in_flight.102", end)
    return end


def evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m monitoring.evaluate ARGS``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "monitoring.evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_evaluator(*args: str) -> tuple[int, dict]:
    done = evaluate_cli(*args, "--json")
    assert done.returncode in (0, 1, 3), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.parametrize("case", list(AVAILABILITY_CASES))
def test_colour_from_graphite(stack, written, case):
    _, colour, use = AVAILABILITY_CASES[case]
    status, report = run_evaluator(
        "--graphite",
        stack.url,
        "--service",
        f"colour_{case}",
        "--sli",
        "availability",
        "--until",
        str(written + FLUSH),
    )
    (result,) = report["results"]
    assert result["newest"] == written  # the newest point with data is the last one written
    assert result["total"] == TOTAL * WINDOW_POINTS  # exactly the trailing hour
    assert result["budget_use"] == pytest.approx(use, abs=1e-9)
    assert result["colour"] == colour, result
    assert status == (1 if colour == "red" else 0)


def test_a_service_that_never_failed_is_green_not_no_data(stack, written):
    status, report = run_evaluator(
        "--graphite",
        stack.url,
        "--service",
        "colour_clean",
        "--sli",
        "availability",
        "--until",
        str(written + FLUSH),
    )
    (result,) = report["results"]
    assert (result["bad"], result["total"]) == (0, 1000 * WINDOW_POINTS)
    assert (result["colour"], result["value"], status) == ("green", 1.0, 0)
    # The alert query too: budget use 0, not an empty answer (Grafana's NoData).
    target = budget_target(SLO.slis["availability"], POLICY, service="colour_clean")
    (series,) = stack.render([target], written - 300, written + FLUSH)
    assert {v for v, _ in series["datapoints"] if v is not None} == {0.0}


def test_the_hold_is_counted_to_the_flush(stack, written):
    """4m58s at >= 80% is not "for 5 minutes"; 5m00s is: every one of the 150 points."""
    _, short = run_evaluator(
        "--graphite",
        stack.url,
        "--service",
        "colour_orange_4m58s",
        "--sli",
        "availability",
        "--until",
        str(written + FLUSH),
    )
    _, full = run_evaluator(
        "--graphite",
        stack.url,
        "--service",
        "colour_orange_5m00s",
        "--sli",
        "availability",
        "--until",
        str(written + FLUSH),
    )
    assert short["results"][0]["above_orange"] == 298
    assert full["results"][0]["above_orange"] == 300
    assert (short["results"][0]["colour"], full["results"][0]["colour"]) == ("yellow", "orange")


def test_latency_and_saturation_colours_from_graphite(stack, written):
    until = str(written + FLUSH)
    status, latency = run_evaluator(
        "--graphite", stack.url, "--service", "colour_latency", "--sli", "latency", "--until", until
    )
    assert status == 0
    assert latency["results"][0]["budget_use"] == pytest.approx(0.90)
    assert latency["results"][0]["colour"] == "orange"
    status, saturation = run_evaluator(
        "--graphite", stack.url, "--service", "colour_sat", "--sli", "saturation", "--until", until
    )
    (result,) = saturation["results"]
    # 180 of the window's 1800 intervals had the busiest worker at 90: 10% bad, budget 1%.
    assert result["bad"] == 180 and result["total"] == WINDOW_POINTS
    assert result["budget_use"] == pytest.approx(10.0)
    assert result["colour"] == "red" and status == 1
    assert "busiest worker now: 90 in flight" in result["note"]


def test_no_data_and_stale_data_are_not_green(stack, written):
    status, report = run_evaluator("--graphite", stack.url, "--service", "nothing_here")
    assert status == 3
    assert {r["colour"] for r in report["results"]} == {"no data"}
    # The red series, evaluated 10 minutes after its last point: stale, not red.
    status, report = run_evaluator(
        "--graphite",
        stack.url,
        "--service",
        "colour_red",
        "--sli",
        "availability",
        "--until",
        str(written + 600),
    )
    assert (status, report["results"][0]["colour"]) == (3, "no data")


def test_grafana_alert_queries_agree_with_the_evaluator(stack, written):
    """The alert rule's query (budget use in Graphite with movingSum), its minimum over the
    last 5 minutes against 80 and 100, fires exactly where the evaluator says orange / red."""
    rules = yaml.safe_load(grafana.ALERTS.read_text())["groups"][0]["rules"]
    by_uid = {rule["uid"]: rule for rule in rules}
    sli = SLO.slis["availability"]
    assert by_uid["lbproxy-availability-orange"]["data"][0]["model"]["target"] == budget_target(
        sli, POLICY, service="*"
    )
    assert by_uid["lbproxy-availability-red"]["data"][2]["model"]["expression"] == "$B >= 100"
    for case, (_, colour, _) in AVAILABILITY_CASES.items():
        target = budget_target(sli, POLICY, service=f"colour_{case}")
        (series,) = stack.render([target], written - 400, written + 2 * FLUSH)
        # Graphite's movingSum at t + step is the evaluator's budget use at t.
        span = [
            v
            for v, t in series["datapoints"]
            if written - POLICY.hold + 2 * FLUSH <= t <= written + FLUSH
        ]
        assert len(span) == HOLD_POINTS and None not in span
        orange = min(span) >= 100 * POLICY.orange_min
        red = min(span) >= 100 * POLICY.red_min
        assert (orange, red) == (colour in ("orange", "red"), colour == "red"), case


# -- .jtl files from jmeter/run --------------------------------------------------
def test_evaluator_on_the_integration_plans_jtl():
    """monitoring/testdata/integration.jtl: `jmeter/run jmeter/integration.jmx --start`,
    25 samples; the plan asserts a 502 (dead service) and a 504 (slow, delay=3) on purpose."""
    path = TESTDATA / "integration.jtl"
    status, report = run_evaluator("--jtl", str(path))
    results = {r["sli"]: r for r in report["results"]}
    assert results["availability"]["total"] == 25
    assert results["availability"]["bad"] == 2  # the 502 and the 504
    # 2/25 bad against 0.1% allowed: 8000% of the budget over the whole (short) run.
    assert results["availability"]["budget_use"] == pytest.approx(0.08 / 0.001)
    assert results["latency"]["bad"] == 2  # 304 ms and 1005 ms: at or over 250 ms
    assert results["availability"]["colour"] == "red"
    assert "shorter than the 5 min hold: judged on the whole run" in results["availability"]["note"]
    assert status == 1
    text = evaluate_cli("--jtl", str(path))
    assert text.returncode == 1
    assert "availability" in text.stdout and "8000%" in text.stdout
    assert "overall: red (exit 1: red)" in text.stdout


def test_evaluator_on_a_long_jtl_keeps_the_5_minute_hold(tmp_path):
    """A 7-minute run in the runner's CSV columns: 1000 samples each 10 s, 9 of them slow
    (300 ms: latency 90% of its budget at every point: orange, held > 5 min); every other
    bucket one sample got no HTTP response at all (bad) and every bucket has 404s (good)."""
    header = (
        "timeStamp,elapsed,label,responseCode,responseMessage,threadName,success,"
        "failureMessage,bytes,grpThreads,allThreads,URL,Latency,Connect\n"
    )
    rows = [header]
    t0 = 1_700_000_000_000
    for bucket in range(42):
        for i in range(1000):
            start = t0 + bucket * 10_000 + i * 9
            code, elapsed, ok, message = "200", 5, "true", ""
            if i < 9:
                elapsed = 300
            elif i == 10 and bucket % 2:
                code, ok = (
                    "Non HTTP response code: org.apache.http.NoHttpResponseException",
                    "false",
                )
                message = '"Non HTTP response message: the target server failed\nto respond"'
            elif i in (11, 12):
                code = "404"
            rows.append(
                f"{start},{elapsed},GET my-service,{code},OK,Users 1-1,{ok},{message},"
                f"100,1,1,http://127.0.0.1/perf,{elapsed},0\n"
            )
    path = tmp_path / "long.jtl"
    path.write_text("".join(rows))
    status, report = run_evaluator("--jtl", str(path))
    results = {r["sli"]: r for r in report["results"]}
    latency, availability = results["latency"], results["availability"]
    assert latency["total"] == 42_000 and latency["bad"] == 9 * 42
    assert latency["budget_use"] == pytest.approx(0.90)
    assert latency["hold"] == 300 and latency["above_orange"] >= 300
    assert latency["colour"] == "orange" and not latency["note"]
    assert availability["bad"] == 21  # the no-response samples; the 404s are good
    assert availability["budget_use"] == pytest.approx(21 / 42_000 / 0.001)
    assert availability["colour"] == "green"
    assert status == 0


def test_evaluator_rejects_what_is_not_a_jtl(tmp_path):
    bogus = tmp_path / "x.jtl"
    bogus.write_text("a,b\n1,2\n")
    done = evaluate_cli("--jtl", str(bogus))
    assert done.returncode == 2 and "not a CSV .jtl" in done.stderr


# -- end to end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(stack, tmp_path_factory):
    """JMeter (jmeter/run, performance plan) through the proxy with metrics to the stack,
    plus failures on purpose: a dead service, a timeout, a host down, POST bodies."""
    directory = tmp_path_factory.mktemp("e2e")
    mocks = {name: start_mock(f"mock-{name}") for name in "abc"}
    dead = {"address": "127.0.0.1", "port": free_port()}

    def host(name, weight=1):
        return {"address": "127.0.0.1", "port": mocks[name].port, "weight": weight}

    services = [
        *oprange.services(mocks),  # the demo topology, as the operational range uses it
        {
            "name": "failover",
            "domain": "failover.test",
            "hosts": [dead, host("a")],
            "health_check": {"path": "/", "interval": 0.5, "unhealthy_threshold": 2},
        },
        {"name": "dead", "domain": "dead.test", "hosts": [dead]},
        {
            "name": "slow",
            "domain": "slow.test",
            "hosts": [host("c")],
            "timeout": {"connect": 1, "read": 0.3},
        },
    ]
    config = write_config(directory, services)
    env = {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(stack.statsd_port)}
    proxy = Proxy(config, workers=2, env=env)
    start = int(time.time()) - FLUSH
    sent = {"5xx": 0, "posts": 0}
    try:

        def call(domain, method="GET", path="/", **kwargs):
            answer = requests.request(
                method, proxy.url + path, headers={"Host": domain}, timeout=10, **kwargs
            )
            sent["5xx"] += answer.status_code >= 500
            return answer

        for _ in range(12):
            call("failover.test")  # connect errors on the dead host: retries, ejection
        for _ in range(4):
            call("dead.test")  # 502 connect_error
        for _ in range(2):
            call("slow.test", path="/?delay=1")  # 504 timeout
        for _ in range(5):
            call("my-service.my-company.com", "POST", data=b"x" * 2048)
            sent["posts"] += 1
        call("nowhere.test")  # 404 unrouted
        results = directory / "jmeter"
        jmeter = subprocess.run(
            [
                str(REPO / "jmeter" / "run"),
                str(REPO / "jmeter" / "performance.jmx"),
                "-J",
                f"port={proxy.port}",
                "-J",
                "users=8",
                "-J",
                "duration=10",
                "-J",
                "rampup=1",
                "--proxy-pid",
                str(proxy.pid),
                "--results",
                str(results),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert jmeter.returncode == 0, jmeter.stdout[-3000:] + jmeter.stderr[-2000:]
        time.sleep(3 * FLUSH)  # the gauges of an idle proxy, then the last flush
    finally:
        proxy.stop()
        for mock in mocks.values():
            mock.stop()
    until = int(time.time()) + FLUSH
    summary = json.loads((results / "summary.json").read_text())
    return {
        "start": start,
        "until": until,
        "jtl": results / "results.jtl",
        "samples": summary["samples"],
        **sent,
    }


def series_sum(stack, target, start, until):
    data = stack.render([target], start, until)
    return sum(v for entry in data for v, _ in entry["datapoints"] if v is not None)


def test_graphite_counts_every_request_jmeter_sent(stack, loaded):
    start, until = loaded["start"], loaded["until"]
    deadline = time.monotonic() + 30
    demo = "stats.timers.lbproxy.{my-service,my-service2,my-service3}.request.count"
    while time.monotonic() < deadline:
        counted = series_sum(stack, f"sumSeries({demo})", start, until)
        if counted >= loaded["samples"] + loaded["posts"]:
            break
        time.sleep(1)
    assert counted == loaded["samples"] + loaded["posts"]
    five = series_sum(
        stack, f"sumSeries(stats.counters.lbproxy.{E2E}.status.5xx.count)", start, until
    )
    assert five == loaded["5xx"] >= 6  # the client's 5xx = the proxy's 5xx counter


def test_every_dashboard_and_alert_target_returns_data(stack, loaded):
    document = json.loads(grafana.DASHBOARD.read_text())
    targets = grafana.dashboard_targets(document)
    rules = yaml.safe_load(grafana.ALERTS.read_text())["groups"][0]["rules"]
    targets += [rule["data"][0]["model"]["target"] for rule in rules]
    assert len(targets) >= 25
    empty = []
    for target in targets:
        concrete = target.replace("$service", "*")
        data = stack.render([concrete], loaded["start"] - 60, loaded["until"])
        if not any(v is not None for entry in data for v, _ in entry["datapoints"]):
            empty.append(concrete)
    assert not empty, "targets with no data:\n" + "\n".join(empty)
    # The service variable's query lists the services (its menu; All is "*").
    (service,) = [v for v in document["templating"]["list"] if v["name"] == "service"]
    found = requests.get(
        f"{stack.url}/metrics/find", params={"query": service["query"]}, timeout=30
    ).json()
    assert {"my-service", "failover", "dead"} <= {node["text"] for node in found}


def test_the_render_urls_in_the_docs_return_data(stack, loaded):
    """docs/monitoring.md's key graphs and SLI URLs, on this stack's port and the load's span."""
    text = (REPO / "docs" / "monitoring.md").read_text()
    urls = re.findall(r"http://127\.0\.0\.1:8013/render\?[^`\s]+", text)
    assert len(urls) >= 10
    for url in urls:
        query = urllib.parse.parse_qsl(url.split("?", 1)[1])
        targets = [value for key, value in query if key == "target"]
        assert targets, url
        for target in targets:
            data = stack.render([target], loaded["start"] - 60, loaded["until"])
            points = [v for entry in data for v, _ in entry["datapoints"] if v is not None]
            assert points, f"no data: {target}"


def test_evaluator_on_the_stack_and_on_the_runs_jtl(stack, loaded):
    status, report = run_evaluator(
        "--graphite", stack.url, "--service", E2E, "--until", str(loaded["until"])
    )
    results = {r["sli"]: r for r in report["results"]}
    assert set(results) == {"availability", "latency", "saturation"}
    assert results["availability"]["bad"] == loaded["5xx"]
    # Less than 5 minutes of data: whatever the budget use, nothing is held long enough
    # to be orange or red.
    assert all(r["colour"] in ("green", "yellow") for r in results.values()), results
    assert status == 0
    status, report = run_evaluator("--jtl", str(loaded["jtl"]))
    results = {r["sli"]: r for r in report["results"]}
    assert results["availability"]["total"] == loaded["samples"]
    assert results["availability"]["value"] == 1.0  # JMeter's load had no failure
    assert results["availability"]["colour"] == "green"
    # Latency may be red on a busy machine (a short run is held over its whole length).
    assert status == (1 if any(r["colour"] == "red" for r in results.values()) else 0)


def test_grafana_files_are_generated_from_the_slos():
    done = subprocess.run(
        [sys.executable, "-m", "monitoring.grafana", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    rules = yaml.safe_load(grafana.ALERTS.read_text())["groups"][0]["rules"]
    assert {(r["labels"]["sli"], r["labels"]["severity"]) for r in rules} == {
        (sli, colour) for sli in SLO.slis for colour in ("orange", "red")
    }
    assert {r["data"][0]["relativeTimeRange"]["from"] for r in rules} == {300}
    assert {r["data"][1]["model"]["reducer"] for r in rules} == {"min"}


def test_stack_start_names_the_installer_when_statsd_is_missing(monkeypatch, tmp_path, capsys):
    """A fresh clone has no tools/statsd: start exits 2 and says which command installs it."""
    monkeypatch.setattr(monitoring_stack, "STATSD_JS", tmp_path / "none" / "stats.js")
    state = tmp_path / "state"
    assert monitoring_stack.main(["start", "--state", str(state)]) == 2
    error = capsys.readouterr().err
    assert "not installed: StatsD; install with: scripts/install/monitoring.sh" in error
    assert not (state / "run" / "stack.json").exists()  # nothing started
    installer = REPO / monitoring_stack.INSTALLER
    assert "scripts/install/statsd.sh" in installer.read_text()  # it installs StatsD too
    assert installer.stat().st_mode & 0o111


def test_the_dashboard_is_an_export_that_asks_for_a_graphite():
    """Grafana's "Export for sharing externally" shape: one Graphite input, and every
    panel, query and the service variable on the datasource variable, no fixed uid."""
    text = grafana.DASHBOARD.read_text()
    document = json.loads(text)
    assert export_problems(document, "graphite") == []
    assert [i["name"] for i in document["__inputs"]] == ["DS_GRAPHITE"]
    assert len(datasource_refs(document)) >= 40  # 19 panels, their queries, the variable
    assert grafana.DATASOURCE_UID not in text


def test_the_export_check_catches_a_fixed_uid_a_missing_input_and_a_wrong_plugin():
    """The control: the structure test fails on what made the old file show no data."""
    document = json.loads(grafana.DASHBOARD.read_text())
    fixed = copy.deepcopy(document)
    fixed["panels"][1]["targets"][0]["datasource"] = {"type": "graphite", "uid": "lbproxy-graphite"}
    assert [p for p in export_problems(fixed, "graphite") if "query A" in p]
    no_input = {k: v for k, v in document.items() if k != "__inputs"}
    assert export_problems(no_input, "graphite")
    assert export_problems(document, "prometheus")
    unvalued = copy.deepcopy(document)
    datasource_variable(unvalued)["current"]["value"] = grafana.DATASOURCE_UID
    assert export_problems(unvalued, "graphite")


def test_the_dashboard_starts_on_the_provisioned_graphite_or_on_the_imported_one():
    document = json.loads(grafana.DASHBOARD.read_text())
    sources = yaml.safe_load(grafana.DATASOURCE.read_text())["datasources"]
    (ours,) = [(s["name"], s["uid"]) for s in sources if s["uid"] == grafana.DATASOURCE_UID]
    # Provisioned from the file: nothing substituted; another Graphite listed first.
    variable = datasource_variable(document)
    assert chosen(variable, [("Graphite", "another"), ours]) == grafana.DATASOURCE_UID
    # Imported: the Graphite the user picks, even where ours exists too.
    shared = imported(document, {"DS_GRAPHITE": "their-graphite"})
    assert "${DS_" not in json.dumps(shared)
    picked = chosen(datasource_variable(shared), [ours, ("Their Graphite", "their-graphite")])
    assert picked == "their-graphite"
    assert {ref["uid"] for _, ref in datasource_refs(shared)} == {"${datasource}"}


def test_slo_yaml_thresholds_are_the_originals():
    assert (POLICY.green_max, POLICY.orange_min, POLICY.red_min) == (0.60, 0.80, 1.00)
    assert POLICY.hold == 300
    latency = SLO.slis["latency"]
    # The latency SLI's bad bins are exactly those at or above its threshold.
    above = [b for b in HISTOGRAM_BINS if b == "inf" or b > latency.threshold_ms]
    assert latency.bad.endswith("{" + ",".join(f"bin_{b}" for b in above) + "})")
