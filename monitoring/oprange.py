"""Measure the operational range: JMeter load at several levels, and with one upstream down.

    monitoring/stack start
    .venv/bin/python -m monitoring.oprange --levels 25,50,100,200 --down 100 --duration 60

Starts three mocks and the proxy (2 workers, the demo topology of proxy.yaml on
free ports, metrics to the stack's StatsD), then for each level runs
``jmeter/run jmeter/performance.jmx -J users=N`` against it (a closed loop: N
users, no think time, GET over the three services). ``--down N`` adds a run at
N users during which mock-b (a host of my-service and my-service3) is stopped
by PID a third of the way in. After each run it reads, for the run's time
span, the SLIs from Graphite (the same targets as monitoring/slo.yaml) and
from the .jtl, the proxy workers' CPU (from /proc) and the machine's, and
prints one JSON line per run plus a Markdown table; ``--png FILE`` saves a
graphite-web render of the whole session.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from devkit.lbproxy import Proxy, start_mock, write_config
from devkit.processes import CLOCK_TICKS, cpu_ticks_each, machine_ticks
from monitoring import evaluate
from monitoring.slo import load

REPO = Path(__file__).resolve().parent.parent
CPUS = os.cpu_count() or 1


def services(mocks: dict) -> list[dict]:
    def host(name, weight=None):
        entry = {"address": "127.0.0.1", "port": mocks[name].port}
        return {**entry, "weight": weight} if weight else entry

    return [
        {
            "name": "my-service",
            "domain": "my-service.my-company.com",
            "hosts": [host("a"), host("b")],
        },
        {"name": "my-service2", "domain": "my-service2.my-company.com", "hosts": [host("c")]},
        {
            "name": "my-service3",
            "domain": "my-service3.my-company.com",
            "hosts": [host("a", 3), host("b", 2), host("c", 1)],
        },
    ]


def render_sum(base: str, target: str, start: int, until: int) -> tuple[float | None, float | None]:
    """(sum, max) of a target's points in [start, until)."""
    data = evaluate.render(base, [target], start, until)
    values = [v for entry in data for v, _ in entry["datapoints"] if v is not None]
    return (sum(values), max(values)) if values else (None, None)


def graphite_slis(base: str, slo, start: int, until: int) -> dict:
    out = {}
    for name, sli in slo.slis.items():
        if sli.kind == "ratio":
            bad, _ = render_sum(base, sli.targets()["bad"], start, until)
            bad = bad or 0.0  # no series yet: nothing bad was ever counted
            total, _ = render_sum(base, sli.targets()["total"], start, until)
            out[name] = {
                "bad": bad,
                "total": total,
                "good_share": 1 - bad / total if total else None,
            }
        else:
            data = evaluate.render(base, [sli.targets()["value"]], start, until)
            # The intervals under load (the run's edges hold 0 or a few requests in flight).
            values = [v for e in data for v, _ in e["datapoints"] if v]
            out[name] = {
                "peak": max(values) if values else None,
                "mean": sum(values) / len(values) if values else None,
                "over_limit": sum(v >= sli.limit for v in values),
                "points": len(values),
            }
    for limit, bins in (
        (100, "{bin_5,bin_10,bin_25,bin_50,bin_100}"),
        (500, "{bin_5,bin_10,bin_25,bin_50,bin_100,bin_250,bin_500}"),
    ):
        good, _ = render_sum(
            base, f"sumSeries(stats.timers.lbproxy.*.request.histogram.{bins})", start, until
        )
        total = out["latency"]["total"]
        out[f"under_{limit}ms"] = good / total if good is not None and total else None
    _, p99 = render_sum(base, "maxSeries(stats.timers.lbproxy.*.request.upper_99)", start, until)
    out["statsd_p99_max_ms"] = p99
    errors = evaluate.render(
        base, ["groupByNode(stats.counters.lbproxy.*.errors.*.count, 5, 'sumSeries')"], start, until
    )
    out["errors"] = {e["target"]: sum(v for v, _ in e["datapoints"] if v) for e in errors}
    counted = {
        "retries": "sumSeries(stats.counters.lbproxy.*.retries.count)",
        "ejected": "sumSeries(stats.counters.lbproxy.*.hosts.*.ejected.count)",
    }
    for name, target in counted.items():
        out[name], _ = render_sum(base, target, start, until)
    return out


def run_level(args, slo, proxy, mocks, users: int, down: bool) -> dict:
    name = f"{'down-' if down else ''}{users}u"
    results = args.results / name
    stopper = None
    last_b: dict[int, int] = {}  # mock-b's ticks just before it was stopped
    if down:
        delay = args.rampup + (args.duration - args.rampup) / 3

        def stop_b():
            time.sleep(delay)
            last_b.update(cpu_ticks_each(mocks["b"].tree()))
            mocks["b"].stop()

        stopper = threading.Thread(target=stop_b, daemon=True)
    workers = proxy.children()
    mock_pids = [pid for mock in mocks.values() for pid in mock.tree()]
    cpu0, busy0, wall0 = cpu_ticks_each(workers), machine_ticks(), time.time()
    mocks0, children0 = cpu_ticks_each(mock_pids), resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    command = [
        str(REPO / "jmeter" / "run"),
        str(REPO / "jmeter" / "performance.jmx"),
        "-J",
        "host=127.0.0.1",
        "-J",
        f"port={proxy.port}",
        "-J",
        f"users={users}",
        "-J",
        f"duration={args.duration}",
        "-J",
        f"rampup={args.rampup}",
        "--proxy-pid",
        str(proxy.pid),
        "--results",
        str(results),
        "--quiet",
    ]
    if stopper:
        stopper.start()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall1 = time.time()
    cpu1, busy1, mocks1 = cpu_ticks_each(workers), machine_ticks(), cpu_ticks_each(mock_pids)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if stopper:
        stopper.join()
    summary = json.loads((results / "summary.json").read_text())
    time.sleep(args.flush * 2 + 2)  # the last flush reaches carbon
    # Graphite's from is exclusive: the point holding the first requests is stamped at
    # the start of its flush interval, up to a flush before wall0.
    start, until = int(wall0) - args.flush, int(wall1) + args.flush
    seconds = wall1 - wall0
    machine = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * CPUS
    proxy_cores = (sum(cpu1.values()) - sum(cpu0.values())) / CLOCK_TICKS / seconds
    mocks1.update(last_b)
    mock_cores = sum(mocks1[pid] - mocks0.get(pid, 0) for pid in mocks1) / CLOCK_TICKS / seconds
    # What this process's waited-for children used: jmeter/run and its JVM, plus a
    # stopped mock-b's whole life (its own ticks, taken out again).
    waited = children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime
    load_cores = (waited - sum(last_b.values()) / CLOCK_TICKS) / seconds
    graphite = graphite_slis(args.graphite, slo, start, until)
    jtl = evaluate.evaluate_jtl(results / "results.jtl", slo, step=args.flush, workers=2)
    row = {
        "run": name,
        "users": users,
        "upstream_down": down,
        "runner_exit": done.returncode,
        "samples": summary["samples"],
        "jmeter_errors": summary["errors"],
        "tps": summary["tps"],
        "jmeter_latency_ms": summary["latency_ms"],
        "proxy_cpu_cores": round(proxy_cores, 2),
        "mock_cpu_cores": round(mock_cores, 2),
        "jmeter_cpu_cores": round(load_cores, 2),
        "machine_cpu_cores": round(machine, 2),
        "others_cpu_cores": round(max(0.0, machine - proxy_cores - mock_cores - load_cores), 2),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "graphite": graphite,
        "jtl": {
            r.sli: {"value": r.value, "budget_use": r.budget_use, "colour": r.colour} for r in jtl
        },
        "span": [start, until],
    }
    print(json.dumps(row), flush=True)
    return row


def pct(value, digits=2):
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def use(value, allowed):
    return "-" if value is None else f"{100 * (1 - value) / allowed:.0f}%"


def table(rows: list[dict], slo) -> str:
    """The Markdown table of monitoring/operational-range.md (SLIs over each whole run)."""
    avail, lat, sat = (slo.slis[n] for n in ("availability", "latency", "saturation"))
    lines = [
        "| run | TPS | availability (budget use) | latency < "
        f"{lat.threshold_ms:g} ms (budget use) | saturation: busiest worker in flight, "
        f"peak / mean; intervals >= {sat.limit:g} (budget use) | JTL evaluator colours "
        "(avail, latency, saturation) | JMeter p50 / p90 / p99 ms | proxy p99 per flush, max "
        "ms | < 100 ms | CPU cores: proxy / mocks / JMeter / other work | retries, ejections |",
        "|" + " --- |" * 11,
    ]
    for row in rows:
        g = row["graphite"]
        lat_ms = row["jmeter_latency_ms"]
        saturation = g["saturation"]
        share = (
            1 - saturation["over_limit"] / saturation["points"] if saturation["points"] else None
        )
        available, fast = g["availability"]["good_share"], g["latency"]["good_share"]
        colours = ", ".join(
            row["jtl"][n]["colour"] for n in ("availability", "latency", "saturation")
        )
        lines.append(
            f"| {row['run']} | {row['tps']:.0f} "
            f"| {pct(available, 3)} ({use(available, avail.allowed)}) "
            f"| {pct(fast)} ({use(fast, lat.allowed)}) "
            f"| {saturation['peak'] or 0:.0f} / {saturation['mean'] or 0:.0f}; "
            f"{saturation['over_limit']} of {saturation['points']} ({use(share, sat.allowed)}) "
            f"| {colours} "
            f"| {lat_ms['p50']} / {lat_ms['p90']} / {lat_ms['p99']} "
            f"| {g['statsd_p99_max_ms'] or 0:.0f} | {pct(g['under_100ms'])} "
            f"| {row['proxy_cpu_cores']} / {row['mock_cpu_cores']} / {row['jmeter_cpu_cores']} "
            f"/ {row['others_cpu_cores']} "
            f"| {g['retries'] or 0:g}, {g['ejected'] or 0:g} |"
        )
    return "\n".join(lines)


def report(directory: Path, base: str, flush: int) -> list[dict]:
    """Recompute the SLIs of a session (DIR/oprange.json) with the current slo.yaml."""
    slo = load()
    rows = json.loads((directory / "oprange.json").read_text())
    for row in rows:
        start, until = row["span"]
        row["graphite"] = graphite_slis(base, slo, start, until)
        jtl = evaluate.evaluate_jtl(directory / row["run"] / "results.jtl", slo, step=flush)
        row["jtl"] = {
            r.sli: {"value": r.value, "budget_use": r.budget_use, "colour": r.colour} for r in jtl
        }
    print(table(rows, slo))
    return rows


def save_png(base: str, start: int, until: int, path: Path) -> None:
    demo = "{my-service,my-service2,my-service3}"
    query = [
        (
            "target",
            f"alias(sumSeries(stats.timers.lbproxy.{demo}.request.count_ps), "
            "'requests/s, all services')",
        ),
        ("target", f"alias(sumSeries(stats.counters.lbproxy.{demo}.retries.rate), 'retries/s')"),
        (
            "target",
            f"alias(fallbackSeries(sumSeries(stats.counters.lbproxy.{demo}.status.5xx.rate), "
            f"scale(sumSeries(stats.timers.lbproxy.{demo}.request.count_ps), 0)), '5xx/s')",
        ),
        (
            "target",
            f"alias(secondYAxis(maxSeries(stats.timers.lbproxy.{demo}.request.upper_99)), "
            "'request p99 ms, worst service (right)')",
        ),
        (
            "target",
            "alias(secondYAxis(maxSeries(groupByNode("
            f"stats.gauges.lbproxy.{demo}.in_flight.*, 5, 'sumSeries'))), "
            "'in flight, busiest worker (right)')",
        ),
        ("colorList", "blue,orange,red,green,purple"),
        ("lineWidth", "2"),
        ("bgcolor", "white"),
        ("fgcolor", "black"),
        ("majorGridLineColor", "gray"),
        ("minorGridLineColor", "dddddd"),
        ("yMinRight", "0"),
        ("from", str(start)),
        ("until", str(until)),
        ("width", "1000"),
        ("height", "480"),
        ("title", "lbproxy operational range: 25, 50, 100, 200 users, then 100 with mock-b down"),
        ("vtitle", "requests/s"),
        ("vtitleRight", "ms / requests"),
        ("format", "png"),
    ]
    url = f"{base.rstrip('/')}/render?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=60) as answer:
        path.write_bytes(answer.read())
    print(f"png: {path} ({url})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.oprange", description=__doc__)
    parser.add_argument("--graphite", default="http://127.0.0.1:8013")
    parser.add_argument("--statsd-port", type=int, default=8125)
    parser.add_argument("--flush", type=int, default=10, help="the stack's flush interval, s")
    parser.add_argument("--levels", default="25,50,100,200")
    parser.add_argument("--down", type=int, help="also a run at this many users, mock-b down")
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--rampup", type=int, default=10)
    parser.add_argument("--pause", type=int, default=20, help="seconds between runs")
    parser.add_argument(
        "--results", type=Path, help="results directory (default: monitoring/state/oprange-TIME)"
    )
    parser.add_argument("--png", type=Path, help="save a render of the session here")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="run nothing: print the table of a past session (DIR/oprange.json) with the "
        "current slo.yaml (the stack must still hold its data); with --png, render it again",
    )
    args = parser.parse_args(argv)
    if args.report:
        rows = report(args.report.resolve(), args.graphite, args.flush)
        if args.png:
            save_png(args.graphite, rows[0]["span"][0] - 30, rows[-1]["span"][1] + 30, args.png)
        return 0
    default = REPO / "monitoring" / "state" / f"oprange-{time.strftime('%Y%m%d-%H%M%S')}"
    args.results = (args.results or default).resolve()
    args.results.mkdir(parents=True, exist_ok=True)
    slo = load()
    mocks = {name: start_mock(f"mock-{name}") for name in "abc"}
    config = write_config(args.results, services(mocks), defaults={"strategy": "round_robin"})
    env = {
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(args.statsd_port),
        "PROXY_ACCESS_LOG": "off",
    }
    proxy = Proxy(config, workers=2, env=env)
    rows = []
    session_start = int(time.time())
    try:
        levels = [(int(n), False) for n in args.levels.split(",") if n]
        if args.down:
            levels.append((args.down, True))
        for users, down in levels:
            rows.append(run_level(args, proxy=proxy, mocks=mocks, slo=slo, users=users, down=down))
            time.sleep(args.pause)
    finally:
        proxy.stop()
        for mock in mocks.values():
            mock.stop()
    print(table(rows, slo))
    (args.results / "oprange.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"results: {args.results}")
    if args.png:
        save_png(args.graphite, session_start - 30, rows[-1]["span"][1] + 30, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
