"""Error-budget use and colour of each SLI in monitoring/slo.yaml, from Graphite,
Prometheus or a JMeter .jtl.

    python -m monitoring.evaluate --graphite http://127.0.0.1:8013 [--service NAME] [--until TIME]
    python -m monitoring.evaluate --prometheus http://127.0.0.1:9090 [--service REGEX] [--step 10s]
    python -m monitoring.evaluate --jtl jmeter/results/RUN/results.jtl [--workers 2]

For each SLI it prints the SLI's value over the window, the objective, the
budget use at the newest point, how long budget use has been at or above the
orange and red thresholds, and the colour (slo.yaml ``policy``):

  budget use(t) = (bad / total over the window ending at t) / (1 - objective)
  red     every point of the last 5 minutes >= 100%
  orange  every point of the last 5 minutes >= 80%, not red
  green   the newest point <= 60%
  yellow  otherwise (no alert)

From Graphite, a point is one Graphite datapoint (one StatsD flush); the
newest point is the newest one with data, at most ``stale_after`` before
--until. From Prometheus (lbproxy's /metrics), a point is one --step of a
``query_range`` of each SLI's ``promql``: cumulative counts, whose difference
from one point to the next is the point's events (a drop is a restart: the
count starts again from zero).
From a .jtl, samples are put in --step buckets by the time they ended
(timeStamp + elapsed); the newest point is the run's last bucket. A run
shorter than the hold is judged on its last point alone, whose window is the
whole run (reported as such): a 60 s test that burned 200% of the budget is red.

Exit status: 0 no SLI red; 1 at least one SLI red; 2 could not evaluate
(usage, Graphite unreachable, unreadable file); 3 no SLI red but some had no data.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from jmeter.runner import read_jtl as jtl_rows
from monitoring.slo import SLO_FILE, Policy, Sli, Slo, load, seconds

COLOURS = ("green", "yellow", "orange", "red")
EXIT_RED, EXIT_ERROR, EXIT_NO_DATA = 1, 2, 3


@dataclass
class Points:
    """One SLI's events per point: ``bad[i]``, ``total[i]`` at ``times[i]`` (epoch s)."""

    times: list[int]
    bad: list[float]
    total: list[float]
    step: int
    newest: int | None  # index of the newest point with data, None: no data at all
    current: float | None = None  # the newest raw value (threshold SLIs)


@dataclass
class Result:
    sli: str
    colour: str  # green, yellow, orange, red, or "no data"
    value: float | None  # good share over the window ending at the newest point
    objective: float
    budget_use: float | None  # at the newest point
    above_orange: int  # seconds budget use has been >= orange_min, up to the newest point
    above_red: int
    hold: int  # seconds the orange and red rules need (policy.hold; one step for a short .jtl)
    window: int
    bad: float  # events over the window ending at the newest point
    total: float
    newest: int | None  # epoch of the newest point
    note: str = ""


def budget_uses(points: Points, objective: float, window: int) -> list[float | None]:
    """Budget use at every point: the window's bad share over the allowed share.

    The window ending at point i holds the points i - n + 1 .. i, n = window / step.
    """
    n = max(1, window // points.step)
    allowed = 1.0 - objective
    uses: list[float | None] = []
    in_window: deque[tuple[float, float]] = deque()
    bad_sum = total_sum = 0.0
    for bad, total in zip(points.bad, points.total, strict=True):
        in_window.append((bad, total))
        bad_sum += bad
        total_sum += total
        if len(in_window) > n:
            old_bad, old_total = in_window.popleft()
            bad_sum -= old_bad
            total_sum -= old_total
        uses.append(bad_sum / total_sum / allowed if total_sum > 0 else None)
    return uses


def held_for(uses: list[float | None], threshold: float, step: int) -> int:
    """Seconds budget use has been >= threshold without a break, up to the last point."""
    count = 0
    for use in reversed(uses):
        if use is None or use < threshold - 1e-9:
            break
        count += 1
    return count * step


def judge(sli: Sli, points: Points, policy: Policy, window: int, hold: int) -> Result:
    """The colour of one SLI (see the module doc), over ``window`` and ``hold`` seconds."""
    if points.newest is None:
        return Result(
            sli=sli.name,
            colour="no data",
            value=None,
            objective=sli.objective,
            budget_use=None,
            above_orange=0,
            above_red=0,
            hold=hold,
            window=window,
            bad=0,
            total=0,
            newest=None,
            note="no valid events in range",
        )
    end = points.newest + 1
    uses = budget_uses(points, sli.objective, window)[:end]
    step = points.step
    hold_points = max(1, hold // step)
    # The window sums at the newest point, for the value printed.
    n = max(1, window // step)
    bad = sum(points.bad[max(0, end - n) : end])
    total = sum(points.total[max(0, end - n) : end])
    use = uses[-1]
    above_orange = held_for(uses, policy.orange_min, step)
    above_red = held_for(uses, policy.red_min, step)
    if use is None:
        colour = "no data"
    elif above_red >= hold_points * step:
        colour = "red"
    elif above_orange >= hold_points * step:
        colour = "orange"
    elif use <= policy.green_max + 1e-9:
        colour = "green"
    else:
        colour = "yellow"
    return Result(
        sli=sli.name,
        colour=colour,
        value=1 - bad / total if total else None,
        objective=sli.objective,
        budget_use=use,
        above_orange=above_orange,
        above_red=above_red,
        hold=hold_points * step,
        window=window,
        bad=bad,
        total=total,
        newest=points.times[points.newest],
    )


# -- Graphite ------------------------------------------------------------------
class EvaluationError(Exception):
    pass


def render(base: str, targets: list[str], start: int, until: int, timeout: float = 30) -> list:
    query = [("target", target) for target in targets]
    query += [("from", str(start)), ("until", str(until)), ("format", "json")]
    url = f"{base.rstrip('/')}/render?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.load(answer)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise EvaluationError(f"Graphite render failed: {error} ({url})") from None


def _series(data: list, count: int) -> list[list]:
    """``count`` series from a render answer, in order (a target matching nothing is absent)."""
    if len(data) != count:
        return []
    return [entry["datapoints"] for entry in data]


def graphite_points(
    base: str, sli: Sli, service: str, policy: Policy, window: int, hold: int, until: int
) -> Points:
    targets = sli.targets(service)
    span = window + hold + 60
    data = render(base, list(targets.values()), until - span, until)
    series = _series(data, len(targets))
    if not series or not series[0]:
        return Points([], [], [], 1, None)
    times = [int(t) for _, t in series[0]]
    step = times[1] - times[0] if len(times) > 1 else 1
    newest = None
    current = None
    if sli.kind == "ratio":
        bad = [v or 0.0 for v, _ in series[0]]
        total = [v or 0.0 for v, _ in series[1]]
        present = [v is not None for v, _ in series[1]]
    else:
        values = [v for v, _ in series[0]]
        present = [v is not None for v in values]
        total = [1.0 if v is not None else 0.0 for v in values]
        bad = [1.0 if v is not None and v >= sli.limit else 0.0 for v in values]
    for i in range(len(times) - 1, -1, -1):
        if present[i]:
            newest = i
            break
    if newest is not None and until - times[newest] > policy.stale_after:
        newest = None  # the pipeline stopped: old data is no evidence of now
    if newest is not None and sli.kind == "threshold":
        current = series[0][newest][0]
    return Points(times, bad, total, step, newest, current)


# -- JMeter .jtl -----------------------------------------------------------------
def read_jtl(path: Path) -> list[tuple[int, int, str]]:
    """(start ms, elapsed ms, responseCode) of every sample."""
    samples = []
    for row in jtl_rows(path):
        try:
            samples.append((int(row["timeStamp"]), int(row["elapsed"]), row["responseCode"]))
        except (KeyError, TypeError, ValueError):
            raise EvaluationError(
                f"{path}: not a CSV .jtl with timeStamp, elapsed, responseCode"
            ) from None
    if not samples:
        raise EvaluationError(f"{path}: no samples")
    return samples


def failed_by_server(code: str) -> bool:
    """5xx, or no HTTP status at all (JMeter writes the exception: connection refused...)."""
    return not (len(code) == 3 and code.isdigit()) or code.startswith("5")


def concurrency_peaks(samples: list[tuple[int, int, str]], step_ms: int, first: int, buckets: int):
    """Per bucket, the most samples in flight at once (by start and end time)."""
    events = sorted(
        [(s, 1) for s, _, _ in samples] + [(s + e, -1) for s, e, _ in samples],
        key=lambda event: (event[0], event[1]),
    )
    peaks = [0] * buckets
    level = 0
    for at, change in events:
        level += change
        index = min(buckets - 1, max(0, (at - first) // step_ms))
        peaks[index] = max(peaks[index], level)
    # A bucket in the middle of long requests sees no event but holds them.
    starts = [s for s, _, _ in samples]
    order = sorted(range(len(samples)), key=lambda i: starts[i])
    ends_sorted = sorted(s + e for s, e, _ in samples)
    starts_sorted = [starts[i] for i in order]
    for index in range(buckets):
        at = first + index * step_ms
        open_now = bisect.bisect_right(starts_sorted, at) - bisect.bisect_right(ends_sorted, at)
        peaks[index] = max(peaks[index], open_now)
    return peaks


def jtl_points(samples, sli: Sli, step: int, workers: int) -> Points:
    step_ms = step * 1000
    ends = [start + elapsed for start, elapsed, _ in samples]
    first = min(ends) // step_ms * step_ms
    buckets = (max(ends) - first) // step_ms + 1
    times = [(first + i * step_ms) // 1000 for i in range(buckets)]
    bad = [0.0] * buckets
    total = [0.0] * buckets
    current = None
    if sli.kind == "ratio":
        for (_, elapsed, code), end in zip(samples, ends, strict=True):
            index = (end - first) // step_ms
            total[index] += 1
            if sli.threshold_ms is not None:
                bad[index] += elapsed >= float(sli.threshold_ms)
            else:
                bad[index] += failed_by_server(code)
    else:
        peaks = concurrency_peaks(samples, step_ms, first, buckets)
        for index, peak in enumerate(peaks):
            per_worker = peak / max(1, workers)
            total[index] = 1.0
            bad[index] = 1.0 if per_worker >= sli.limit else 0.0
        current = peaks[-1] / max(1, workers)
    return Points(times, bad, total, step, buckets - 1, current)


# -- the command -------------------------------------------------------------------
# -- Prometheus --------------------------------------------------------------------


def query_range(base: str, query: str, start: int, end: int, step: int, timeout: float = 30):
    """Every series of a Prometheus range query: [{time: value}, ...]."""
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=timeout) as r:
            answer = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise EvaluationError(f"Prometheus at {base}: {error}") from error
    if answer.get("status") != "success":
        raise EvaluationError(f"Prometheus: {answer.get('error', answer)}")
    return [
        {int(float(t)): float(v) for t, v in series["values"]}
        for series in answer["data"]["result"]
    ]


def prometheus_points(base, sli: Sli, service, policy, window, hold, until, step) -> Points:
    if not sli.promql:
        raise EvaluationError(f"{sli.name}: no promql in the SLO file")
    span = window + hold + 60
    start = until - span
    times = list(range(start - start % step, until + 1, step))

    def series(name: str) -> list[dict[int, float]]:
        query = sli.promql[name].replace("$service", service)
        return query_range(base, query, times[0] - step, times[-1], step)

    if sli.kind == "ratio":
        bad, total = _events(series("bad")), _events(series("total"))
        present = [t in total for t in times]
        bad_list = [max(0.0, bad.get(t, 0.0)) for t in times]
        total_list = [total.get(t, 0.0) for t in times]
    else:
        found = series("value")
        values = found[0] if found else {}
        present = [t in values for t in times]
        total_list = [1.0 if t in values else 0.0 for t in times]
        bad_list = [1.0 if values.get(t, -1) >= sli.limit else 0.0 for t in times]
    newest = next((i for i in range(len(times) - 1, -1, -1) if present[i]), None)
    if newest is not None and until - times[newest] > policy.stale_after:
        newest = None
    current = None
    if newest is not None and sli.kind == "threshold":
        current = values[times[newest]]
    return Points(times, bad_list, total_list, step, newest, current)


def _events(cumulative: list[dict[int, float]]) -> dict[int, float]:
    """Each point's events, summed over the series (one per pod and label set).

    Differences are taken series by series, before the sum: a pod that goes
    away must not read as every other pod's counts starting again. A drop
    within a series is a restart (its count starts again from zero)."""
    events: dict[int, float] = {}
    for series in cumulative:
        previous = None
        for t in sorted(series):
            value = series[t]
            if previous is not None:
                delta = value - previous if value >= previous else value
                events[t] = events.get(t, 0.0) + delta
            previous = value
    return events


def evaluate_prometheus(base, slo, service=".*", until=None, window=None, hold=None, step=10):
    until = int(until if until is not None else time.time())
    window = window or slo.policy.window
    hold = hold or slo.policy.hold
    results = []
    for sli in slo.slis.values():
        points = prometheus_points(base, sli, service, slo.policy, window, hold, until, step)
        results.append(judge(sli, points, slo.policy, window, hold))
    return results


def evaluate_graphite(base, slo, service="*", until=None, window=None, hold=None):
    until = int(until if until is not None else time.time())
    window = window or slo.policy.window
    hold = hold or slo.policy.hold
    results = []
    for sli in slo.slis.values():
        points = graphite_points(base, sli, service, slo.policy, window, hold, until)
        result = judge(sli, points, slo.policy, window, hold)
        if points.current is not None:
            result.note = f"busiest worker now: {points.current:g} in flight (limit {sli.limit:g})"
        results.append(result)
    return results


def evaluate_jtl(path, slo, step=10, workers=2, window=None, hold=None):
    samples = read_jtl(path)
    window = window or slo.policy.window
    hold = hold or slo.policy.hold
    results = []
    for sli in slo.slis.values():
        points = jtl_points(samples, sli, step, workers)
        run = len(points.times) * step
        # A run shorter than the hold is one piece of evidence: judged on its last
        # point, whose window holds the whole run (the hold filters blips in
        # continuous monitoring; a finished run has none left to wait for).
        short = run < hold
        result = judge(sli, points, slo.policy, window, step if short else hold)
        notes = []
        if short:
            notes.append(
                f"run of {run} s, shorter than the {hold // 60} min hold: judged on the whole run"
            )
        if sli.kind == "threshold":
            notes.append(f"JMeter concurrency / {workers} workers now: {points.current:g}")
        result.note = "; ".join(notes)
        results.append(result)
    return results


def percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def duration(total: int) -> str:
    minutes, secs = divmod(int(total), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def report(results: list[Result], policy: Policy) -> str:
    lines = [
        f"{'SLI':<13} {'value':>9} {'objective':>9} {'budget use':>10} {'>=orange':>9} "
        f"{'>=red':>8}  colour",
    ]
    for r in results:
        lines.append(
            f"{r.sli:<13} {percent(r.value, 3):>9} {percent(r.objective, 1):>9} "
            f"{percent(r.budget_use, 0):>10} {duration(r.above_orange):>9} "
            f"{duration(r.above_red):>8}  {r.colour}" + (f"  ({r.note})" if r.note else "")
        )
    lines.append(
        f"window {duration(results[0].window) if results else '-'}; green <= "
        f"{policy.green_max:.0%}, orange >= {policy.orange_min:.0%} and red >= "
        f"{policy.red_min:.0%} for {duration(results[0].hold) if results else '-'}"
    )
    return "\n".join(lines)


def exit_status(results: list[Result]) -> int:
    if any(r.colour == "red" for r in results):
        return EXIT_RED
    if any(r.colour == "no data" for r in results):
        return EXIT_NO_DATA
    return 0


def parse_time(text: str) -> int:
    """Epoch seconds, or 'now', or 'now-5m'."""
    text = text.strip()
    if text == "now":
        return int(time.time())
    if text.startswith("now-"):
        return int(time.time()) - seconds(text[4:])
    return int(float(text))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--graphite", metavar="URL", help="graphite-web, e.g. http://127.0.0.1:8013"
    )
    source.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus scraping lbproxy, e.g. http://127.0.0.1:9090",
    )
    source.add_argument("--jtl", type=Path, metavar="FILE", help="a CSV .jtl from jmeter/run")
    parser.add_argument("--slo", type=Path, default=SLO_FILE, help="default monitoring/slo.yaml")
    parser.add_argument("--service", default="*", help="Graphite: the service (glob; default *)")
    parser.add_argument(
        "--sli", action="append", help="only this SLI (repeat; default: every SLI in --slo)"
    )
    parser.add_argument("--until", default="now", help="Graphite: evaluate at (epoch, now-10m)")
    parser.add_argument("--window", help="override the budget window (e.g. 10m)")
    parser.add_argument("--hold", help="override the 5m hold (e.g. 1m)")
    parser.add_argument("--step", default="10s", help="jtl: bucket size (default 10s)")
    parser.add_argument("--workers", type=int, default=2, help="jtl: proxy workers (saturation)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        slo = load(args.slo)
        if args.sli:
            unknown = sorted(set(args.sli) - set(slo.slis))
            if unknown:
                raise ValueError(f"no SLI {', '.join(unknown)} in {args.slo}")
            slo = Slo(slo.policy, {name: slo.slis[name] for name in args.sli})
        window = seconds(args.window) if args.window else None
        hold = seconds(args.hold) if args.hold else None
        if args.graphite:
            results = evaluate_graphite(
                args.graphite, slo, args.service, parse_time(args.until), window, hold
            )
            source = f"{args.graphite} (service {args.service})"
        elif args.prometheus:
            service = ".*" if args.service == "*" else args.service
            results = evaluate_prometheus(
                args.prometheus, slo, service, parse_time(args.until), window, hold,
                seconds(args.step),
            )  # fmt: skip
            source = f"{args.prometheus} (service {service})"
        else:
            step = seconds(args.step)
            results = evaluate_jtl(args.jtl, slo, step, args.workers, window, hold)
            source = str(args.jtl)
    except (EvaluationError, ValueError, OSError) as error:
        print(f"monitoring.evaluate: {error}", file=sys.stderr)
        return EXIT_ERROR
    status = exit_status(results)
    if args.json:
        print(
            json.dumps(
                {"source": source, "exit": status, "results": [asdict(r) for r in results]},
                indent=2,
            )
        )
    else:
        print(f"== SLOs from {source}")
        print(report(results, slo.policy))
        worst = max(
            (r.colour for r in results if r.colour in COLOURS), key=COLOURS.index, default="no data"
        )
        print(f"overall: {worst}{' (exit 1: red)' if status == EXIT_RED else ''}")
    return status


if __name__ == "__main__":
    sys.exit(main())
