"""The Prometheus feed: sums per request, moved into prometheus_client's
multiprocess files by flush, read back as the pod's exposition.

prometheus_client picks its multiprocess value class when it is first
imported, from $PROMETHEUS_MULTIPROC_DIR, as in a gunicorn worker: each case
runs in a fresh interpreter with the variable set."""

from __future__ import annotations

import json
import subprocess
import sys

from app.config import parse_config
from app.observe.admin import AdminApp
from app.observe.prometheus import BUCKETS, prepare_directory
from app.traffic.routing import Router
from tests.processes import REPO

WORKER = r"""
import json, sys
from app.observe.prometheus import PrometheusFeed, exposition
from app.observe.record import Record, group

feed = PrometheusFeed()


def done(record):
    for kind in group([record]):
        feed.kind_done(kind)


for i in range(int(sys.argv[1])):
    record = Record(service="web", upstream="127.0.0.1:9001", status=200, bytes_out=10)
    record.upstream_time = 0.002
    record.finished = record.started + [0.0005, 0.03, 0.3, 20.0][i % 4]
    done(record)
failed = Record(service="web", outcome="connect_error", status=502)
failed.finish()
done(failed)
unrouted = Record(outcome="unknown_domain", status=404)
unrouted.finish()
done(unrouted)
before = exposition("")[0].decode()
feed.flush()
feed.flush()  # nothing new: nothing counted twice
text, kind = exposition(sys.argv[2])
print(json.dumps({"before": before, "after": text.decode(), "type": kind}))
"""


def run_worker(tmp_path, requests: int, accept: str = "") -> dict:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(requests), accept],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return json.loads(out)


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {sample} in:\n{text}")


def test_requests_are_summed_then_flushed_into_the_pods_exposition(tmp_path):
    answer = run_worker(tmp_path, 8)
    before, after = answer["before"], answer["after"]
    assert value(before, 'lbproxy_requests_total{code="2xx",service="unrouted"}') == 0
    assert 'lbproxy_requests_total{code="2xx",service="web"}' not in before  # not flushed
    assert value(after, 'lbproxy_requests_total{code="2xx",service="web"}') == 8
    assert value(after, 'lbproxy_request_errors_total{kind="connect_error",service="web"}') == 1
    assert value(after, 'lbproxy_requests_total{code="4xx",service="unrouted"}') == 1
    assert (
        value(
            after, 'lbproxy_upstream_requests_total{code="2xx",host="127.0.0.1:9001",service="web"}'
        )
        == 8
    )
    assert value(after, 'lbproxy_bytes_sent_total{service="web"}') == 80
    # The histogram: cumulative buckets, 0.25 s (the SLO's edge) among them, and _count.
    duration = 'lbproxy_request_duration_seconds_bucket{le="%s",service="web"}'
    assert value(after, duration % "0.001") == 2 + 1  # 0.0005 twice, the 502 (at once)
    assert value(after, duration % "0.25") == 4 + 1  # and 0.03 twice, the 502
    assert value(after, duration % "10.0") == 7  # 20 s only in +Inf
    assert value(after, duration % "+Inf") == 9
    assert value(after, 'lbproxy_request_duration_seconds_count{service="web"}') == 9
    assert value(after, 'lbproxy_build_info{version="0.1.0"}') == 1
    assert answer["type"].startswith("text/plain; version=0.0.4")


def test_openmetrics_when_the_scraper_asks_for_it(tmp_path):
    answer = run_worker(tmp_path, 1, "application/openmetrics-text; version=1.0.0")
    assert answer["type"].startswith("application/openmetrics-text")
    assert answer["after"].rstrip().endswith("# EOF")


def test_two_workers_files_add_up_and_a_dead_ones_counts_stay(tmp_path):
    run_worker(tmp_path, 3)
    answer = run_worker(tmp_path, 4)  # another process: the first one's file is still there
    assert value(answer["after"], 'lbproxy_requests_total{code="2xx",service="web"}') == 7


def test_the_histogram_internals_flush_relies_on_are_there():
    """flush adds whole bucket counts through prometheus_client's private
    ``_buckets`` and ``_sum`` (no public batch observe): this fails if they change."""
    from prometheus_client import CollectorRegistry, Histogram

    child = Histogram("h", "h", ["s"], buckets=BUCKETS, registry=CollectorRegistry()).labels("x")
    assert len(child._buckets) == len(BUCKETS) + 1 and child._upper_bounds[:-1] == list(BUCKETS)
    child._buckets[3].inc(2)
    child._sum.inc(0.02)
    child.observe(0.004)
    assert child._buckets[3].get() == 2 and child._buckets[2].get() == 1
    assert abs(child._sum.get() - 0.024) < 1e-9


def test_the_master_empties_a_given_directory_once_and_makes_one_if_none(tmp_path):
    (tmp_path / "counter_1.db").write_bytes(b"x")
    (tmp_path / "keep.txt").write_text("not ours")
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    assert prepare_directory(environ) is None  # given, not made: nothing to remove later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    made: dict = {}
    directory = prepare_directory(made)
    assert made["PROMETHEUS_MULTIPROC_DIR"] == str(directory) and directory.is_dir()
    directory.rmdir()


def test_metrics_off_is_a_404_and_the_key_is_checked():
    config = parse_config(
        "proxy:\n  prometheus: false\n  services:\n"
        "    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}\n"
    )
    assert config.prometheus is False
    seen = {}
    body = AdminApp(Router(config), metrics=config.prometheus)(
        {"PATH_INFO": "/metrics"}, lambda status, headers: seen.update(status=status)
    )
    assert seen["status"] == "404 Not Found" and b"".join(body) == b"not found\n"
    try:
        parse_config(
            "proxy:\n  prometheus: 'yes'\n  services:\n"
            "    - {name: a, domain: a.test, hosts: [{address: 127.0.0.1, port: 1}]}\n"
        )
    except Exception as error:
        assert "proxy.prometheus" in str(error)
    else:
        raise AssertionError("a string for proxy.prometheus was accepted")


def test_openmetrics_only_when_accepted_with_a_q_above_zero():
    from app.observe.prometheus import wants_openmetrics

    assert wants_openmetrics("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert wants_openmetrics("text/plain;q=0.5, application/openmetrics-text;q=0.9")
    assert not wants_openmetrics("application/openmetrics-text;q=0")
    assert not wants_openmetrics("text/plain; version=0.0.4") and not wants_openmetrics("")


def test_a_batch_sums_what_its_requests_sum_one_at_a_time():
    from app.observe.prometheus import PrometheusFeed
    from app.observe.record import group
    from tests.unit.observe.test_metrics import mixed_records

    records = mixed_records()
    together, alone = PrometheusFeed(), PrometheusFeed()
    for kind in group(records):
        together.kind_done(kind)
    for record in records:
        for kind in group([record]):
            alone.kind_done(kind)

    def sums(feed):
        counts = {(counter._name, labels): n for (counter, labels), n in feed.counts.items()}
        samples = {
            (histogram._name, service): buckets
            for histogram, per_service in feed.samples.items()
            for service, buckets in per_service.items()
        }
        return counts, samples

    (counts, samples), (counts_alone, samples_alone) = sums(together), sums(alone)
    assert counts == counts_alone
    assert counts[("lbproxy_requests", ("web", "2xx"))] == 14
    assert counts[("lbproxy_request_errors", ("unrouted", "unknown_domain"))] == 6
    assert samples.keys() == samples_alone.keys()
    for key, buckets in samples.items():
        assert buckets[:-1] == samples_alone[key][:-1]  # bucket counts
        assert abs(buckets[-1] - samples_alone[key][-1]) < 1e-9  # the sum
    web = samples[("lbproxy_request_duration_seconds", "web")]
    assert sum(web[:-1]) == sum(record.service == "web" for record in records) == 27
